"""The database handle: one unit of work is one transaction; migrations; SQLite settings."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from kessai.adapters import repository as repo
from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.adapters.migrate import alembic_config, upgrade

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
APP_TABLES = set(t.metadata.tables)


class Boom(Exception):
    pass


def count(db: Database, table: sa.Table) -> int:
    return db.run_sync(
        lambda conn: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one(),
        write=False,
    )


def add_merchant_and_audit(conn: Connection, name: str) -> int:
    result = conn.execute(t.merchants.insert().values(name=name, created_at=NOW))
    merchant_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    repo.audit(conn, at=NOW, actor="test", action="merchant.created", merchant_id=merchant_id)
    return merchant_id


def schema_objects(db: Database) -> dict[str, str | None]:
    rows = db.run_sync(
        lambda conn: conn.exec_driver_sql(
            "SELECT type || ':' || name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).all(),
        write=False,
    )
    return {name: sql for name, sql in rows}


def downgrade(db: Database, revision: str = "base") -> None:
    config = alembic_config()

    def unit(conn: Connection) -> None:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)

    db.run_sync(unit)


# --- Units of work ----------------------------------------------------------------------------


def test_a_unit_that_returns_commits(db: Database, db_url: str) -> None:
    merchant_id = db.run_sync(lambda conn: add_merchant_and_audit(conn, "Committed"))
    # Another handle on the same file (another process, in effect) sees it.
    other = Database(db_url)
    try:
        names = other.run_sync(
            lambda conn: conn.execute(
                sa.select(t.merchants.c.name).where(t.merchants.c.id == merchant_id)
            ).scalar_one(),
            write=False,
        )
    finally:
        other.close()
    assert names == "Committed"
    assert count(db, t.audit_events) == 1


def test_an_exception_rolls_back_everything_the_unit_wrote(db: Database) -> None:
    db.run_sync(lambda conn: add_merchant_and_audit(conn, "Before"))

    def unit(conn: Connection) -> None:
        add_merchant_and_audit(conn, "Doomed 1")
        add_merchant_and_audit(conn, "Doomed 2")
        conn.execute(t.meta.insert().values(key="doomed", value="x"))
        raise Boom("the unit fails after writing")

    with pytest.raises(Boom):
        db.run_sync(unit)
    assert count(db, t.merchants) == 1
    assert count(db, t.audit_events) == 1
    keys = db.run_sync(lambda conn: conn.execute(sa.select(t.meta.c.key)).scalars().all())
    assert "doomed" not in keys


def test_a_database_error_midway_rolls_back_the_earlier_statements(db: Database) -> None:
    def unit(conn: Connection) -> None:
        add_merchant_and_audit(conn, "Doomed")
        # Violates kessai_meta's primary key: the created code_hmac_key row.
        conn.execute(t.meta.insert().values(key=repo.CODE_KEY_NAME, value="again"))

    with pytest.raises(sa.exc.IntegrityError):
        db.run_sync(unit)
    assert count(db, t.merchants) == 0
    assert count(db, t.audit_events) == 0


def test_async_run_has_the_same_semantics(db: Database) -> None:
    async def scenario() -> None:
        await db.run(lambda conn: add_merchant_and_audit(conn, "Async kept"))

        def failing(conn: Connection) -> None:
            add_merchant_and_audit(conn, "Async doomed")
            raise Boom

        with pytest.raises(Boom):
            await db.run(failing)

    asyncio.run(scenario())
    names = db.run_sync(lambda conn: conn.execute(sa.select(t.merchants.c.name)).scalars().all())
    assert names == ["Async kept"]


def test_units_after_a_failed_one_still_work(db: Database) -> None:
    def failing(conn: Connection) -> None:
        add_merchant_and_audit(conn, "Doomed")
        raise Boom

    with pytest.raises(Boom):
        db.run_sync(failing)
    db.run_sync(lambda conn: add_merchant_and_audit(conn, "Kept"))
    names = db.run_sync(lambda conn: conn.execute(sa.select(t.merchants.c.name)).scalars().all())
    assert names == ["Kept"]


def test_a_folder_that_cannot_hold_the_database_fails_each_unit_and_heals(tmp_path: Path) -> None:
    # The writer thread opens its lock file beside the database; a missing folder used to end
    # that thread, and every unit then waited for an answer forever.
    folder = tmp_path / "not-yet"
    database = Database(f"sqlite:///{folder}/k.db")
    try:
        for _ in range(2):  # the thread is still there to refuse the second unit too
            with pytest.raises(FileNotFoundError, match="not-yet"):
                database.run_sync(lambda conn: conn.exec_driver_sql("SELECT 1").scalar_one())

        async def from_a_coroutine() -> None:
            with pytest.raises(FileNotFoundError):
                await asyncio.wait_for(database.run(lambda conn: 1), timeout=30)

        asyncio.run(from_a_coroutine())
        folder.mkdir()
        upgrade(database)  # mended: the next units open the lock file and run
        assert count(database, t.merchants) == 0
    finally:
        database.close()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_new_database_and_its_wal_are_readable_by_their_owner_alone(tmp_path: Path) -> None:
    # They hold the books, the audit trail and password hashes. SQLite used to create them with
    # the process's umask: with the usual 022, every local user could copy them.
    previous = os.umask(0o022)
    database = Database(f"sqlite:///{tmp_path}/k.db")
    try:
        upgrade(database)
        database.run_sync(lambda conn: add_merchant_and_audit(conn, "Owner Only"))
        files = {p.name: _mode(p) for p in tmp_path.iterdir()}
        # Open and written: the WAL and the shared-memory index exist beside the database.
        assert set(files) >= {"k.db", "k.db-wal", "k.db-shm", "k.db-writer.lock"}
        assert files == dict.fromkeys(files, 0o600)
    finally:
        database.close()
        os.umask(previous)


def test_an_existing_database_keeps_the_mode_its_operator_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    first = Database(f"sqlite:///{path}")
    upgrade(first)
    first.close()
    path.chmod(0o640)  # say, readable by a backup user's group
    again = Database(f"sqlite:///{path}")
    try:
        assert count(again, t.merchants) == 0
        assert _mode(path) == 0o640
    finally:
        again.close()


# --- SQLite settings -----------------------------------------------------------------------------


def pragmas(db: Database) -> dict[str, object]:
    names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
    return db.run_sync(
        lambda conn: {n: conn.exec_driver_sql(f"PRAGMA {n}").scalar() for n in names},
        write=False,
    )


def test_pragmas_are_in_force(db: Database) -> None:
    values = pragmas(db)
    assert str(values["journal_mode"]).lower() == "wal"
    assert values["synchronous"] == 1  # NORMAL: the writer fsyncs the WAL before answering
    assert values["foreign_keys"] == 1
    assert int(values["busy_timeout"]) >= 1000  # type: ignore[call-overload]


def test_pragmas_hold_for_a_bare_path_too(tmp_path: Path) -> None:
    database = Database(str(tmp_path / "bare.db"))
    try:
        upgrade(database)
        values = pragmas(database)
    finally:
        database.close()
    assert (str(values["journal_mode"]).lower(), values["synchronous"], values["foreign_keys"]) == (
        "wal",
        1,  # NORMAL: the writer fsyncs the WAL itself before answering
        1,
    )


def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        db.run_sync(
            lambda conn: conn.execute(
                t.sessions.insert().values(
                    token_hash="0" * 64,
                    terminal_id=999,
                    device_key="k",
                    os="123456",
                    created_at=NOW,
                    last_seen_at=NOW,
                    idle_expires_at=NOW,
                )
            )
        )


# --- Migrations ---------------------------------------------------------------------------------


def test_migrated_schema_matches_the_code(db: Database) -> None:
    diffs = db.run_sync(
        lambda conn: compare_metadata(MigrationContext.configure(conn), t.metadata), write=False
    )
    assert diffs == []


def test_first_migration_creates_the_code_key(db: Database) -> None:
    key = db.run_sync(repo.code_key, write=False)
    assert len(key) == 64
    int(key, 16)


def test_upgrade_twice_changes_nothing(db: Database) -> None:
    before = schema_objects(db)
    upgrade(db)
    assert schema_objects(db) == before
    assert count(db, t.meta) == 1


def test_migrations_run_down_and_up_cleanly(db: Database) -> None:
    before = schema_objects(db)
    assert {name.split(":", 1)[1] for name in before if name.startswith("table:")} >= APP_TABLES
    assert "trigger:audit_events_no_update" in before
    assert "trigger:audit_events_no_delete" in before

    downgrade(db, "base")
    after_down = schema_objects(db)
    assert set(after_down) <= {"table:alembic_version"}
    version = db.run_sync(
        lambda conn: conn.exec_driver_sql("SELECT version_num FROM alembic_version").all(),
        write=False,
    )
    assert version == []

    upgrade(db)
    assert schema_objects(db) == before
    diffs = db.run_sync(
        lambda conn: compare_metadata(MigrationContext.configure(conn), t.metadata), write=False
    )
    assert diffs == []
    # The triggers came back with the schema: the audit trail is append-only again.
    db.run_sync(
        lambda conn: repo.audit(conn, at=NOW, actor="test", action="after.upgrade"),
    )
    with pytest.raises(sa.exc.IntegrityError):
        db.run_sync(lambda conn: conn.execute(t.audit_events.delete()))


def test_downgrade_works_with_data_in_the_tables(db: Database) -> None:
    db.run_sync(lambda conn: add_merchant_and_audit(conn, "Data"))
    downgrade(db, "base")
    assert set(schema_objects(db)) <= {"table:alembic_version"}
    upgrade(db)
    assert count(db, t.merchants) == 0
