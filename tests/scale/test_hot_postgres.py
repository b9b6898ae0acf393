"""Hot statements on PostgreSQL: asyncpg's prepared statements, inside the unit's transaction.

The same statements as on SQLite (``tests/integration/test_hot.py``) must read back exactly what
SQLAlchemy's own execution reads, write only within the unit's transaction, raise SQLAlchemy's
errors, and leave a connection found dead to be replaced, with the unit run anew.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.engine import Connection
from sqlalchemy.util import await_only

from kessai.adapters import db as db_module
from kessai.adapters import hot
from kessai.adapters import repository as repo
from kessai.adapters import schema as t
from kessai.adapters.db import PG_POOL_SIZE, Database
from kessai.adapters.hot import Hot
from kessai.adapters.migrate import upgrade
from kessai.api.app import build_gateway
from kessai.config import Settings
from kessai.connectors.base import PayRequest, ProviderOutcome, ProviderResult
from kessai.connectors.sandbox import wallets
from kessai.domain.model import Payment
from kessai.service import admin, sessions
from kessai.service.admin import IssuedTerminal
from kessai.service.gateway import Gateway

from .support import create_database

AT = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
_INSERT = Hot(t.integrations.insert())
_BY_ID = Hot(sa.select(t.integrations).where(t.integrations.c.id == sa.bindparam("pk")))
_BY_OS = Hot(sa.select(t.integrations.c.id).where(t.integrations.c.os == sa.bindparam("os")))
_RENAME = Hot(t.integrations.update().where(t.integrations.c.id == sa.bindparam("b_id")))


@pytest.fixture
def pg(postgres_url: str) -> Iterator[tuple[Database, str]]:
    """A migrated PostgreSQL database of its own, and its URL."""
    url = create_database(postgres_url)
    database = Database(url)
    upgrade(database)
    yield database, url
    database.close()


def _on_server(url: str, statement: str) -> list[asyncpg.Record]:
    """Run ``statement`` on a connection of its own, outside the database's pool."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(statement)
        finally:
            await conn.close()

    return asyncio.run(run())


def _integration(db: Database, os_value: str = "HOT001", name: str = "Hot POS") -> int:
    row = {"os": os_value, "name": name, "created_at": AT}
    return db.run_sync(lambda conn: _INSERT.run(conn, row).inserted_pk)


def _exists(db: Database, os_value: str) -> bool:
    return db.run_sync(lambda conn: _BY_OS.run(conn, {"os": os_value}).first() is not None)


def test_a_row_reads_back_as_sqlalchemy_reads_it(pg: tuple[Database, str]) -> None:
    db, _ = pg
    pk = _integration(db)
    hot = db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk}).one())
    core = db.run_sync(
        lambda conn: conn.execute(sa.select(t.integrations).where(t.integrations.c.id == pk)).one()
    )
    assert tuple(hot) == tuple(core)
    assert hot.id == pk  # the INSERT's RETURNING gave the key the row has
    assert hot.created_at == AT and hot.created_at.tzinfo is not None
    assert hot.enabled is True  # a column left out took its scalar default


def test_updates_count_rows_and_missing_rows_are_reported(pg: tuple[Database, str]) -> None:
    db, _ = pg
    pk = _integration(db)
    assert db.run_sync(lambda conn: _RENAME.run(conn, {"b_id": pk, "name": "New"}).rowcount) == 1
    assert db.run_sync(lambda conn: _RENAME.run(conn, {"b_id": pk + 9, "name": "X"}).rowcount) == 0
    assert db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk + 9}).first()) is None
    with pytest.raises(sa.exc.NoResultFound):
        db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk + 9}).one())
    named = Hot(
        sa.select(t.integrations.c.name).where(
            t.integrations.c.name == "New", t.integrations.c.id == sa.bindparam("pk")
        )
    )
    assert db.run_sync(lambda conn: named.run(conn, {"pk": pk}).scalar_one()) == "New"


def test_a_duplicate_key_is_sqlalchemys_integrity_error_and_undoes_the_unit(
    pg: tuple[Database, str],
) -> None:
    db, _ = pg
    _integration(db, "HOT001")

    def twice(conn: Connection) -> None:
        _INSERT.run(conn, {"os": "HOT002", "name": "First", "created_at": AT})
        _INSERT.run(conn, {"os": "HOT001", "name": "Twin", "created_at": AT})

    with pytest.raises(sa.exc.IntegrityError):
        db.run_sync(twice)
    # The first INSERT ran in the unit's transaction, not on its own: it is gone with the unit.
    assert not _exists(db, "HOT002")


def test_a_unit_that_raises_after_a_hot_write_leaves_nothing(pg: tuple[Database, str]) -> None:
    db, _ = pg

    def written_then_refused(conn: Connection) -> None:
        _INSERT.run(conn, {"os": "HOT003", "name": "Gone", "created_at": AT})
        raise ValueError("refused after writing")

    with pytest.raises(ValueError, match="refused"):
        db.run_sync(written_then_refused)
    assert not _exists(db, "HOT003")


def test_a_connection_the_server_dropped_is_replaced_and_the_unit_run_anew(
    pg: tuple[Database, str],
) -> None:
    db, url = pg
    _integration(db, "HOT004")  # the pool now holds one connection

    terminated = _on_server(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    assert len(terminated) >= 1
    attempts = 0

    def read(conn: Connection) -> int:
        nonlocal attempts
        attempts += 1
        return int(_BY_OS.run(conn, {"os": "HOT004"}).scalar_one())

    assert db.run_sync(read) > 0
    assert attempts == 2  # the dead connection failed before COMMIT; a fresh one answered


def test_one_refuses_a_second_row(pg: tuple[Database, str]) -> None:
    db, _ = pg
    _integration(db, "HOT001", name="Twin POS")
    _integration(db, "HOT002", name="Twin POS")
    by_name = Hot(sa.select(t.integrations.c.id).where(t.integrations.c.name == sa.bindparam("n")))
    with pytest.raises(sa.exc.MultipleResultsFound):
        db.run_sync(lambda conn: by_name.run(conn, {"n": "Twin POS"}).one())


def test_audit_entries_appended_together_keep_their_order(pg: tuple[Database, str]) -> None:
    db, _ = pg
    count = repo.AUDIT_ROWS_PER_STATEMENT + 3  # two statements: a full one and a short one
    entries = [repo.audit_entry(at=AT, actor="test", action=f"test.{i}") for i in range(count)]
    db.run_sync(lambda conn: repo.append_audit(conn, *entries))
    actions = db.run_sync(
        lambda conn: (
            conn.execute(
                sa.select(t.audit_events.c.action)
                .where(t.audit_events.c.actor == "test")
                .order_by(t.audit_events.c.id)
            )
            .scalars()
            .all()
        )
    )
    assert actions == [f"test.{i}" for i in range(count)]


def test_a_column_whose_conversion_needs_the_drivers_type_code_is_refused(
    pg: tuple[Database, str],
) -> None:
    db, _ = pg
    pk = _integration(db)
    priced = Hot(
        sa.select(sa.cast(t.integrations.c.id, sa.Numeric(10, 2)).label("price")).where(
            t.integrations.c.id == sa.bindparam("pk")
        )
    )
    with pytest.raises(TypeError, match="price"):
        db.run_sync(lambda conn: priced.run(conn, {"pk": pk}).first())


def test_statements_run_on_asyncpg_prepared_once_per_connection(
    pg: tuple[Database, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _ = pg

    def no_cursor(*_args: object) -> None:
        raise AssertionError("the adapter's cursor was used")

    monkeypatch.setattr(hot, "_run_on_dbapi", no_cursor)
    pk = _integration(db)
    prepared: list[str] = []

    def read(conn: Connection) -> str:
        driver = conn.connection.driver_connection
        known = hot._prepared.get(driver, {})
        prepared.append(str(len(known)))
        return str(_BY_ID.run(conn, {"pk": pk}).one().os)

    assert db.run_sync(read) == "HOT001"
    assert db.run_sync(read) == "HOT001"
    # The second unit found the SELECT already prepared on its connection (the INSERT too).
    assert int(prepared[1]) >= 2 and int(prepared[1]) == int(prepared[0]) + 1


def test_a_statement_stale_after_a_schema_change_is_prepared_anew(pg: tuple[Database, str]) -> None:
    db, url = pg
    pk = _integration(db)
    name = Hot(sa.select(t.integrations.c.name).where(t.integrations.c.id == sa.bindparam("pk")))
    assert db.run_sync(lambda conn: name.run(conn, {"pk": pk}).scalar_one()) == "Hot POS"
    # The prepared SELECT answers the column as VARCHAR; as TEXT its plan no longer fits it.
    _on_server(url, "ALTER TABLE integrations ALTER COLUMN name TYPE text")
    stale = "cached statement plan is invalid|cached plan must not change result type"
    with pytest.raises(sa.exc.DBAPIError, match=stale):
        db.run_sync(lambda conn: name.run(conn, {"pk": pk}).scalar_one())
    # The failed unit forgot its connection's statements: the next one prepares them again.
    assert db.run_sync(lambda conn: name.run(conn, {"pk": pk}).scalar_one()) == "Hot POS"


def test_a_duplicate_key_keeps_the_connections_prepared_statements(
    pg: tuple[Database, str],
) -> None:
    db, _ = pg
    _integration(db, "HOT001")
    with pytest.raises(sa.exc.IntegrityError):
        _integration(db, "HOT001")

    def known(conn: Connection) -> int:
        return len(hot._prepared.get(conn.connection.driver_connection, {}))

    assert db.run_sync(known) >= 1


def test_a_unit_cancelled_midway_commits_nothing_and_frees_its_connection(
    pg: tuple[Database, str],
) -> None:
    _, url = pg
    sleep = Hot(sa.select(sa.func.pg_sleep(sa.bindparam("s", type_=sa.Float)).label("slept")))

    async def scenario() -> tuple[bool, bool, int]:
        database = Database(url)
        try:

            def written_then_slow(conn: Connection) -> None:
                _INSERT.run(conn, {"os": "HOT009", "name": "Cancelled", "created_at": AT})
                conn.exec_driver_sql("SELECT pg_sleep(5)")

            task = asyncio.ensure_future(database.run(written_then_slow))
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            kept = await database.run(
                lambda conn: _BY_OS.run(conn, {"os": "HOT009"}).first() is not None
            )
            # Every pooled connection is usable again: as many units at once as the pool holds.
            answers = await asyncio.gather(
                *(database.run(lambda conn: sleep.run(conn, {"s": 0.05}).first()) for _ in range(4))
            )
            checked_out = database._pg.pool.checkedout()  # type: ignore[union-attr]
            return kept, all(a is not None for a in answers), checked_out
        finally:
            await database.aclose()

    kept, answered, checked_out = asyncio.run(scenario())
    assert not kept
    assert answered
    assert checked_out == 0


def test_an_adapter_without_the_fast_paths_needs_runs_through_its_cursor(
    pg: tuple[Database, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _ = pg
    through_cursor: list[str] = []
    cursor_run = hot._run_on_dbapi

    def recorded(conn: Connection, sql: str, values: list[object]) -> object:
        through_cursor.append(sql)
        return cursor_run(conn, sql, values)

    monkeypatch.setattr(hot, "_fast_path", lambda _adapted: False)
    monkeypatch.setattr(hot, "_run_on_dbapi", recorded)
    pk = _integration(db)
    assert db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk}).one().os) == "HOT001"
    assert db.run_sync(lambda conn: _RENAME.run(conn, {"b_id": pk, "name": "N"}).rowcount) == 1
    with pytest.raises(sa.exc.IntegrityError):
        _integration(db)
    assert len(through_cursor) == 4


def test_units_share_the_pools_connections_and_open_no_more(pg: tuple[Database, str]) -> None:
    # Bursts of more units at once than the pool holds: the units beyond it wait for a connection
    # to come back, rather than each burst opening connections closed again on return (a new
    # server process every time, which cost PostgreSQL more than the units themselves).
    database, _ = pg
    wanted = PG_POOL_SIZE * 3

    def backend(conn: Connection) -> int:
        # Long enough that the whole burst is in flight together.
        return int(conn.exec_driver_sql("SELECT pg_backend_pid() FROM pg_sleep(0.02)").scalar_one())

    async def bursts() -> set[int]:
        seen: set[int] = set()
        for _ in range(4):
            pids = await asyncio.gather(*(database.run(backend) for _ in range(wanted)))
            seen.update(pids)
        return seen

    seen = asyncio.run(bursts())
    assert 1 < len(seen) <= PG_POOL_SIZE


# -- deferred INSERTs ---------------------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of every statement the hot path sends to PostgreSQL, in order, and each BEGIN."""
    statements: list[str] = []
    send = hot._run_on_postgresql
    start = AsyncAdapt_asyncpg_connection._start_transaction

    def recorded(conn: Connection, sql: str, values: list[object], **options: bool) -> object:
        try:
            return send(conn, sql, values, **options)
        finally:
            # After the BEGIN the statement may send first, whether it then succeeds or not.
            statements.append(sql)

    async def begun(adapted: AsyncAdapt_asyncpg_connection) -> None:
        statements.append("BEGIN")
        await start(adapted)

    monkeypatch.setattr(hot, "_run_on_postgresql", recorded)
    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "_start_transaction", begun)
    return statements


def _entry(action: str) -> dict[str, object]:
    return repo.audit_entry(at=AT, actor="test", action=action)


def _actions(db: Database) -> list[str]:
    query = sa.select(t.audit_events.c.action).order_by(t.audit_events.c.id)
    return db.run_sync(lambda conn: list(conn.execute(query).scalars()))


def test_deferred_inserts_travel_together_in_one_statement_before_the_commit(
    pg: tuple[Database, str], sent: list[str]
) -> None:
    db, _ = pg

    def unit(conn: Connection) -> None:
        _INSERT.defer(conn, {"os": "HOT020", "name": "Deferred", "created_at": AT})
        repo.append_audit(conn, _entry("test.deferred"))
        # Nothing has gone yet: both wait for the unit's end.
        assert sent == []

    db.run_sync(unit)
    # The unit's only write, alone: it commits by itself, with no BEGIN and COMMIT around it.
    assert len(sent) == 1
    assert sent[0].startswith("WITH kessai_w0 AS (INSERT INTO integrations ")
    assert "INSERT INTO audit_events " in sent[0]
    assert _exists(db, "HOT020")
    assert _actions(db) == ["test.deferred"]


def test_the_units_next_statement_sees_what_it_deferred(
    pg: tuple[Database, str], sent: list[str]
) -> None:
    db, _ = pg

    def unit(conn: Connection) -> tuple[bool, bool]:
        _INSERT.defer(conn, {"os": "HOT021", "name": "Seen", "created_at": AT})
        by_hot = _BY_OS.run(conn, {"os": "HOT021"}).first() is not None
        _INSERT.defer(conn, {"os": "HOT022", "name": "Seen too", "created_at": AT})
        by_core = conn.execute(
            sa.select(t.integrations.c.id).where(t.integrations.c.os == "HOT022")
        ).first()
        return by_hot, by_core is not None

    assert db.run_sync(unit) == (True, True)
    # Each deferred INSERT went alone, just before the statement that followed it (SQLAlchemy's
    # own SELECT is not on this list).
    assert [sql.split()[0] for sql in sent] == ["BEGIN", "INSERT", "SELECT", "INSERT"]


def test_a_deferred_insert_that_fails_fails_its_unit_and_leaves_nothing(
    pg: tuple[Database, str],
) -> None:
    db, _ = pg
    _integration(db, "HOT023")

    def unit(conn: Connection) -> None:
        repo.append_audit(conn, _entry("test.lost"))
        _INSERT.defer(conn, {"os": "HOT023", "name": "Twice", "created_at": AT})

    with pytest.raises(sa.exc.IntegrityError):
        db.run_sync(unit)
    assert _actions(db) == []


def test_a_unit_that_raises_after_deferring_sends_nothing_and_leaves_nothing_behind(
    pg: tuple[Database, str], sent: list[str]
) -> None:
    db, _ = pg

    def unit(conn: Connection) -> None:
        _INSERT.defer(conn, {"os": "HOT024", "name": "Never", "created_at": AT})
        raise ValueError("changed its mind")

    with pytest.raises(ValueError, match="changed its mind"):
        db.run_sync(unit)
    assert sent == []
    # The next unit, on the same pooled connection, sends only its own statement.
    assert not _exists(db, "HOT024")
    assert [sql.split()[0] for sql in sent] == ["SELECT"]
    assert len(hot._deferred) == 0


def test_many_deferred_inserts_go_in_bounded_statements_in_their_order(
    pg: tuple[Database, str], sent: list[str]
) -> None:
    db, _ = pg
    count = hot.DEFERRED_MAX * 2 + 3

    def unit(conn: Connection) -> None:
        for i in range(count):
            _INSERT.defer(conn, {"os": f"HOT1{i:02}", "name": "Many", "created_at": AT})
            repo.append_audit(conn, _entry(f"test.{i}"))

    db.run_sync(unit)
    # An INSERT into a table already waiting sends what waits first: one integration and one
    # audit entry per statement, so that the ids keep the order the unit wrote them in.
    assert sent.count("BEGIN") == 1 and len(sent) == count + 1
    assert _actions(db) == [f"test.{i}" for i in range(count)]


def test_only_an_insert_can_be_deferred(pg: tuple[Database, str]) -> None:
    db, _ = pg
    pk = _integration(db, "HOT025")
    with pytest.raises(TypeError, match="only an INSERT, or an UPDATE with expect_rows"):
        db.run_sync(lambda conn: _RENAME.defer(conn, {"b_id": pk, "name": "N"}))


def _shop_with_codes(
    db: Database, name: str, now: datetime
) -> tuple[IssuedTerminal, str, list[str]]:
    """A merchant's terminal, its integration's os value, and two fresh sandbox codes."""

    def seed(conn: Connection) -> tuple[IssuedTerminal, str, list[str]]:
        merchant = admin.create_merchant(conn, f"{name} Shop", now)
        os_value = admin.create_integration(conn, f"{name} POS", now)
        codes = wallets.issue_codes(conn, "01", "success", 2, now)
        return admin.create_terminal(conn, merchant, now), os_value, codes

    return db.run_sync(seed)


async def _logged_in(gateway: Gateway, terminal: IssuedTerminal, os_value: str) -> str:
    """The terminal's session token, from a LOGIN through ``gateway``."""
    session = await gateway.login(
        mid=terminal.mid,
        key="AA:BB:CC:DD:EE:01",
        password=terminal.password,
        os_value=os_value,
        request_id="req-login",
    )
    return session.session_token


async def _pay(gateway: Gateway, token: str, trans_key: str, code: str, amount: int) -> Payment:
    """A REQUEST with ``code``, its service told by the code: the payment answered."""
    view = await gateway.request(
        token,
        trans_key=trans_key,
        amount=amount,
        code=code,
        service_id=None,
        request_id=f"req-{trans_key}",
    )
    return view.payment


def test_a_request_writes_its_charge_payment_and_audit_entries_with_one_statement(
    pg: tuple[Database, str], sent: list[str]
) -> None:
    db, url = pg
    terminal, os_value, codes = _shop_with_codes(db, "Deferred", datetime.now(UTC))

    async def scenario() -> tuple[Payment, list[str], list[str]]:
        gateway = build_gateway(url, Settings(sandbox_enabled=True))
        try:
            token = await _logged_in(gateway, terminal, os_value)
            for number, code in enumerate(codes):
                # The first payment also reads the database's code key, once for the process.
                sent.clear()
                payment = await _pay(gateway, token, f"DEFER{number}", code, 1200)
            paid = list(sent)
            sent.clear()
            checked = await gateway.paycheck(token, payment.trans_id, "req-check")
            assert checked.payment == payment
            return payment, paid, list(sent)
        finally:
            await gateway.aclose()

    payment, statements, check = asyncio.run(scenario())
    # PAYCHECK: the session, the payment and its refunds, and no transaction (the session
    # needed no touch).
    assert [sql.split()[0] for sql in check] == ["SELECT", "SELECT", "SELECT"]
    assert payment.status.value == "COMPLETED"
    # The session (with the payment's new key and the code's row), then every write at once,
    # with no transaction around them: the code's spending, checked, the charge, the payment and
    # its audit entries.
    assert [sql.split()[0] for sql in statements] == ["SELECT", "WITH"]
    assert "sandbox_codes" in statements[0]
    written = statements[1]
    assert "UPDATE sandbox_codes " in written and " SELECT 1 / (SELECT (count(*) = 1)" in written
    for table in ("sandbox_charges", "payments", "audit_events"):
        assert f"INSERT INTO {table} " in written
    stored = db.run_sync(
        lambda conn: repo.find_payment(conn, payment.merchant_id, trans_id=payment.trans_id)
    )
    assert stored is not None and stored.payment.status == payment.status
    trail = [row["action"] for row in db.run_sync(lambda c: repo.audit_trail(c, stored.pk))]
    assert trail == ["payment.created", "payment.completed"]


def test_plain_reads_begin_no_transaction_and_a_write_or_a_locking_read_does(
    pg: tuple[Database, str], sent: list[str]
) -> None:
    db, _ = pg
    pk = _integration(db, "HOT030")
    sent.clear()
    locked = Hot(
        sa.select(t.integrations.c.name)
        .where(t.integrations.c.id == sa.bindparam("pk"))
        .with_for_update()
    )

    def reads(conn: Connection) -> tuple[str, bool]:
        row = _BY_ID.run(conn, {"pk": pk}).one()
        again = _BY_OS.run(conn, {"os": "HOT030"}).one()
        return row.name, again.id == pk and not hot.began(conn)

    assert db.run_sync(reads) == ("Hot POS", True)
    assert [sql.split()[0] for sql in sent] == ["SELECT", "SELECT"]
    sent.clear()

    def locks(conn: Connection) -> bool:
        locked.run(conn, {"pk": pk}).one()
        return hot.began(conn)

    assert db.run_sync(locks)
    assert [sql.split()[0] for sql in sent] == ["BEGIN", "SELECT"]
    sent.clear()

    def renames(conn: Connection) -> int:
        _BY_ID.run(conn, {"pk": pk}).one()
        return _RENAME.run(conn, {"b_id": pk, "name": "Renamed"}).rowcount

    assert db.run_sync(renames) == 1
    assert [sql.split()[0] for sql in sent] == ["SELECT", "BEGIN", "UPDATE"]
    assert db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk}).one().name) == "Renamed"


def test_deferred_inserts_sent_without_a_transaction_still_fail_as_a_whole(
    pg: tuple[Database, str], sent: list[str]
) -> None:
    db, _ = pg
    _integration(db, "HOT031")
    sent.clear()

    def unit(conn: Connection) -> None:
        _BY_OS.run(conn, {"os": "HOT031"}).one()
        repo.append_audit(conn, _entry("test.not.kept"))
        _INSERT.defer(conn, {"os": "HOT031", "name": "Twice", "created_at": AT})

    with pytest.raises(sa.exc.IntegrityError):
        db.run_sync(unit)
    assert [sql.split()[0] for sql in sent] == ["SELECT", "WITH"]
    # The audit entry's clause ran before the duplicate failed the statement: undone with it.
    assert _actions(db) == []


def test_a_deferred_update_must_change_the_rows_expected_or_nothing_is_written(
    pg: tuple[Database, str], sent: list[str]
) -> None:
    db, _ = pg
    pk = _integration(db, "HOT040")
    sent.clear()

    def unit(target: int) -> Callable[[Connection], None]:
        def run(conn: Connection) -> None:
            repo.append_audit(conn, _entry(f"test.rename.{target}"))
            _RENAME.defer(conn, {"b_id": target, "name": "Renamed"}, expect_rows=1)

        return run

    db.run_sync(unit(pk))
    # One statement, no transaction: the check is part of it.
    assert [sql.split()[0] for sql in sent] == ["WITH"]
    assert db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk}).one().name) == "Renamed"
    with pytest.raises(hot.StaleRows):
        db.run_sync(unit(pk + 99))
    # The audit entry that travelled with the UPDATE that missed is not there.
    assert _actions(db) == [f"test.rename.{pk}"]

    def in_a_transaction(conn: Connection) -> None:
        _RENAME.run(conn, {"b_id": pk, "name": "Again"})
        unit(pk + 99)(conn)

    with pytest.raises(hot.StaleRows):
        db.run_sync(in_a_transaction)
    assert db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk}).one().name) == "Renamed"


def test_a_code_spent_by_a_racing_payment_fails_the_unit_that_read_it_unused(
    pg: tuple[Database, str],
) -> None:
    db, url = pg
    now = datetime.now(UTC)
    code = db.run_sync(lambda conn: wallets.issue_codes(conn, "01", "success", 1, now)[0])
    sandbox = wallets.SandboxWallets(db, public_url="http://127.0.0.1")
    request = PayRequest(
        ref="RACE000001", service_id="01", amount=500, code=code, merchant_name="M"
    )

    def spend_elsewhere() -> None:
        # Another payment's unit, on a connection of its own, spends the code first.
        racer = threading.Thread(
            target=_on_server, args=(url, "UPDATE sandbox_codes SET used_at = now()")
        )
        racer.start()
        racer.join()

    def unit(conn: Connection) -> ProviderResult:
        result = sandbox.pay_within(conn, request, now)
        spend_elsewhere()
        return result

    with pytest.raises(hot.StaleRows):
        db.run_sync(unit)
    charges = _on_server(url, "SELECT count(*) AS n FROM sandbox_charges")
    assert charges[0]["n"] == 0
    # Run again, the unit finds the code used.
    again = db.run_sync(lambda conn: sandbox.pay_within(conn, request, now))
    assert again.outcome is ProviderOutcome.FAILED and again.failure_code == "CODE_ALREADY_USED"


def test_a_deferred_write_that_fails_before_sqlalchemys_statement_raises_its_own_error(
    pg: tuple[Database, str],
) -> None:
    db, _ = pg
    pk = _integration(db, "HOT050")
    query = sa.select(t.integrations.c.id)

    def duplicate(conn: Connection) -> None:
        _INSERT.defer(conn, {"os": "HOT050", "name": "Twice", "created_at": AT})
        conn.execute(query).all()

    def missed(conn: Connection) -> None:
        _RENAME.defer(conn, {"b_id": pk + 99, "name": "X"}, expect_rows=1)
        conn.execute(query).all()

    # Sent by the engine's listener, just before SQLAlchemy's SELECT: their errors come out as
    # they would at the unit's end, for the gateway to handle the same way.
    with pytest.raises(sa.exc.IntegrityError):
        db.run_sync(duplicate)
    with pytest.raises(hot.StaleRows):
        db.run_sync(missed)
    assert db.run_sync(lambda conn: len(conn.execute(query).all())) == 1


def test_deferred_writes_past_the_limits_go_in_several_statements(
    pg: tuple[Database, str], sent: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _ = pg
    code = Hot(t.sandbox_codes.insert())

    def three_tables(number: int) -> Callable[[Connection], None]:
        def unit(conn: Connection) -> None:
            _INSERT.defer(conn, {"os": f"HOT06{number}", "name": "Limits", "created_at": AT})
            repo.append_audit(conn, _entry(f"test.limits.{number}"))
            row = {"code_hash": f"{number}" * 64, "service_id": "01", "outcome": "x"}
            code.defer(conn, {**row, "issued_at": AT})

        return unit

    # At most two writes a statement: the third starts the next one.
    monkeypatch.setattr(hot, "DEFERRED_MAX", 2)
    db.run_sync(three_tables(1))
    assert [sql.split()[0] for sql in sent] == ["BEGIN", "WITH", "INSERT"]
    assert "INSERT INTO sandbox_codes " in sent[2]
    sent.clear()
    # Fewer bound parameters than two of these INSERTs need: each goes alone.
    monkeypatch.setattr(hot, "DEFERRED_MAX", 8)
    monkeypatch.setattr(hot, "DEFERRED_MAX_PARAMETERS", 5)
    db.run_sync(three_tables(2))
    assert [sql.split()[0] for sql in sent] == ["BEGIN", "INSERT", "INSERT", "INSERT"]
    assert _actions(db) == ["test.limits.1", "test.limits.2"]


def test_a_unit_whose_only_write_is_lost_with_its_connection_is_not_run_again(
    pg: tuple[Database, str],
) -> None:
    db, url = pg
    _integration(db, "HOT070")  # the pool now holds one connection
    _on_server(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    attempts = 0

    def only_deferred(conn: Connection) -> None:
        nonlocal attempts
        attempts += 1
        _INSERT.defer(conn, {"os": "HOT071", "name": "Lost", "created_at": AT})

    # Sent alone, the statement is the commit: once it is on its way, the unit is not run again,
    # for it may have been applied (here it was not: the connection was already gone).
    with pytest.raises(sa.exc.DBAPIError) as raised:
        db.run_sync(only_deferred)
    assert raised.value.connection_invalidated
    assert attempts == 1
    assert not _exists(db, "HOT071")


# -- the last statements of units on the event loop, sent together ------------------------------


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch ``hot.send_many`` was given, whether it then succeeded or not."""
    sizes: list[int] = []
    send_many = hot.send_many

    def recorded(conn: Connection, sql: str, values: list[list[object]]) -> None:
        sizes.append(len(values))
        send_many(conn, sql, values)

    monkeypatch.setattr(hot, "send_many", recorded)
    return sizes


def _reading(os_value: str) -> Callable[[Connection], object]:
    def unit(conn: Connection) -> object:
        row = _BY_OS.run(conn, {"os": os_value}).first()
        return None if row is None else row.id

    return unit


# What a test does while the units of ``_at_once`` run: given the database and their tasks.
_Meanwhile = Callable[[Database, list["asyncio.Task[object]"]], Coroutine[Any, Any, None]]


async def _cancel_first(database: Database, tasks: list[asyncio.Task[object]]) -> None:
    """The first unit's caller leaves two turns of the event loop after the units start."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    tasks[0].cancel()


def _at_once(
    url: str, units: list[Callable[[Connection], object]], meanwhile: _Meanwhile | None = None
) -> tuple[list[object], db_module.Batched]:
    """Run ``units`` at once through ``Database.run``: each one's result or exception, and the
    counts of statements sent together meanwhile (``meanwhile`` runs once they started)."""

    async def scenario() -> tuple[list[object], db_module.Batched]:
        database = Database(url)
        try:
            # The pool opens its connections first, so that no unit waits for one below and
            # all of them end in the same turn of the event loop.
            await asyncio.gather(*(database.run(_reading("-")) for _ in units))
            before = database.batched()
            tasks = [asyncio.ensure_future(database.run(unit)) for unit in units]
            if meanwhile is not None:
                await meanwhile(database, tasks)
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            after = database.batched()
            counts = db_module.Batched(*(a - b for a, b in zip(after, before, strict=True)))
            return outcomes, counts
        finally:
            await database.aclose()

    return asyncio.run(scenario())


def _outcomes(url: str, units: list[Callable[[Connection], object]]) -> list[object]:
    """``_at_once``'s outcomes alone."""
    return _at_once(url, units)[0]


def _inserting(
    os_value: str, attempts: dict[str, int] | None = None
) -> Callable[[Connection], None]:
    """A unit deferring an integration and an audit entry; ``attempts`` counts its runs."""

    def unit(conn: Connection) -> None:
        if attempts is not None:
            attempts[os_value] = attempts.get(os_value, 0) + 1
        repo.append_audit(conn, _entry(f"test.{os_value}"))
        _INSERT.defer(conn, {"os": os_value, "name": "Together", "created_at": AT})

    return unit


def test_units_ending_together_send_their_writes_in_one_batch(
    pg: tuple[Database, str], batches: list[int], sent: list[str]
) -> None:
    db, url = pg
    names = [f"HOT08{i}" for i in range(6)]
    assert _outcomes(url, [_inserting(name) for name in names]) == [None] * 6
    # One round trip and one transaction for all six: none of them went alone.
    assert batches == [6]
    assert not any(sql.startswith("WITH") for sql in sent)
    assert all(_exists(db, name) for name in names)
    assert sorted(_actions(db)) == sorted(f"test.{name}" for name in names)


def test_a_batch_takes_a_bounded_number_of_statements(
    pg: tuple[Database, str], batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, url = pg
    monkeypatch.setattr(hot, "BATCH_MAX", 2)
    names = [f"HOT13{i}" for i in range(5)]
    assert _outcomes(url, [_inserting(name) for name in names]) == [None] * 5
    # The fifth statement has a batch to itself, and goes alone.
    assert batches == [2, 2]
    assert all(_exists(db, name) for name in names)


def test_a_statement_that_fails_in_a_batch_fails_its_own_unit_only(
    pg: tuple[Database, str], batches: list[int]
) -> None:
    db, url = pg
    _integration(db, "HOT091")
    outcomes = _outcomes(url, [_inserting(name) for name in ("HOT090", "HOT091", "HOT092")])
    # The duplicate failed the batch, which applied nothing; each statement then went alone.
    assert batches == [3]
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], sa.exc.IntegrityError)
    assert _exists(db, "HOT090") and _exists(db, "HOT092")
    assert sorted(_actions(db)) == ["test.HOT090", "test.HOT092"]


def test_an_update_that_misses_in_a_batch_is_stale_for_its_own_unit_only(
    pg: tuple[Database, str], batches: list[int]
) -> None:
    db, url = pg
    first, second = _integration(db, "HOT100"), _integration(db, "HOT101")

    def renaming(pk: int) -> Callable[[Connection], None]:
        def unit(conn: Connection) -> None:
            _RENAME.defer(conn, {"b_id": pk, "name": f"Renamed {pk}"}, expect_rows=1)

        return unit

    outcomes = _outcomes(url, [renaming(first), renaming(second + 99), renaming(second)])
    assert batches == [3]
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], hot.StaleRows)
    names = db.run_sync(
        lambda conn: [_BY_ID.run(conn, {"pk": pk}).one().name for pk in (first, second)]
    )
    assert names == [f"Renamed {first}", f"Renamed {second}"]


def test_the_statements_after_a_lost_connection_are_not_sent_and_their_units_run_again(
    pg: tuple[Database, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, url = pg
    attempts: dict[str, int] = {}

    def refused(conn: Connection, sql: str, values: list[list[object]]) -> None:
        raise sa.exc.DBAPIError("batch", None, Exception("refused"))

    lost: list[str] = []
    send_one = hot.send_one

    def lost_once(conn: Connection, writes: hot.Writes) -> None:
        if not lost:
            lost.append(writes.sql)
            conn.invalidate()
            raise sa.exc.DBAPIError(
                writes.sql, None, Exception("connection lost"), connection_invalidated=True
            )
        send_one(conn, writes)

    # The batch fails without applying anything, so each statement goes alone; the connection
    # is lost on the first of them.
    monkeypatch.setattr(hot, "send_many", refused)
    monkeypatch.setattr(hot, "send_one", lost_once)
    outcomes = _outcomes(url, [_inserting(f"HOT11{i}", attempts) for i in range(3)])
    # The first unit's statement may have been applied: its unit fails and is not run again.
    assert isinstance(outcomes[0], sa.exc.DBAPIError) and outcomes[0].connection_invalidated
    assert attempts["HOT110"] == 1
    # The other two were never sent: their units ran again, and committed.
    assert outcomes[1:] == [None, None]
    assert attempts["HOT111"] == attempts["HOT112"] == 2
    assert _exists(db, "HOT111") and _exists(db, "HOT112")


def test_units_whose_batch_gets_no_connection_run_again(
    pg: tuple[Database, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, url = pg
    attempts: dict[str, int] = {}
    connect = sa.engine.Engine.connect
    refused: list[str] = []

    def first_batch_refused(engine: sa.engine.Engine) -> Connection:
        # The batch asks for its connection from a function named ``send`` (``_PgBatches``).
        if not refused and sys._getframe(1).f_code.co_name == "send":
            refused.append("batch")
            raise sa.exc.OperationalError("connect", None, Exception("no connection"))
        return connect(engine)

    monkeypatch.setattr(sa.engine.Engine, "connect", first_batch_refused)
    assert _outcomes(url, [_inserting("HOT200", attempts), _inserting("HOT201", attempts)]) == [
        None,
        None,
    ]
    # Nothing was sent: both units ran again, and committed once.
    assert refused == ["batch"]
    assert attempts == {"HOT200": 2, "HOT201": 2}
    assert _exists(db, "HOT200") and _exists(db, "HOT201")
    assert sorted(_actions(db)) == ["test.HOT200", "test.HOT201"]


def test_a_batch_whose_connection_is_lost_as_it_goes_fails_its_units_without_running_them_again(
    pg: tuple[Database, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, url = pg
    attempts: dict[str, int] = {}
    send_many = hot.send_many

    def applied_then_lost(conn: Connection, sql: str, values: list[list[object]]) -> None:
        # The batch reached the server and committed; its answer never came back.
        send_many(conn, sql, values)
        conn.invalidate()
        raise sa.exc.DBAPIError(
            sql, None, Exception("connection lost"), connection_invalidated=True
        )

    monkeypatch.setattr(hot, "send_many", applied_then_lost)
    names = ["HOT210", "HOT211", "HOT212"]
    outcomes = _outcomes(url, [_inserting(name, attempts) for name in names])
    # Whether the batch committed is unknown to the gateway, so every unit fails with the lost
    # connection and none runs again: running them again would have applied them twice.
    assert all(
        isinstance(outcome, sa.exc.DBAPIError) and outcome.connection_invalidated
        for outcome in outcomes
    )
    assert attempts == dict.fromkeys(names, 1)
    assert all(_exists(db, name) for name in names)
    assert sorted(_actions(db)) == sorted(f"test.{name}" for name in names)


@pytest.mark.parametrize("applied", [True, False])
def test_a_batch_that_fails_with_a_non_driver_error_fails_its_units_once_each(
    pg: tuple[Database, str], monkeypatch: pytest.MonkeyPatch, applied: bool
) -> None:
    db, url = pg
    attempts: dict[str, int] = {}
    send_many = hot.send_many

    def broken(conn: Connection, sql: str, values: list[list[object]]) -> None:
        # A fault that is no database error (a bug, a driver's own exception): whether the batch
        # reached the server is unknown to whoever catches it.
        if applied:
            send_many(conn, sql, values)
        raise RuntimeError("not a driver error")

    monkeypatch.setattr(hot, "send_many", broken)
    names = [f"HOT{24 if applied else 25}{i}" for i in range(3)]
    outcomes = _outcomes(url, [_inserting(name, attempts) for name in names])
    # Every caller gets the error (none is left waiting), and no unit runs again: had the batch
    # been applied, a second run would have applied it twice.
    assert all(
        isinstance(outcome, RuntimeError) and str(outcome) == "not a driver error"
        for outcome in outcomes
    )
    assert attempts == dict.fromkeys(names, 1)
    assert all(_exists(db, name) == applied for name in names)


@pytest.mark.parametrize("when", ["before it starts", "while it waits on the server"])
def test_a_batch_cancelled_cancels_its_units_without_running_them_again(
    pg: tuple[Database, str], monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    db, url = pg
    attempts: dict[str, int] = {}
    names = [f"HOT22{i}" for i in range(2)]
    waiting = asyncio.Event()

    def slow(conn: Connection, sql: str, values: list[list[object]]) -> None:
        waiting.set()
        await_only(asyncio.sleep(30))  # a server that does not answer

    if when != "before it starts":
        monkeypatch.setattr(hot, "send_many", slow)

    async def cancel_the_batch(database: Database, tasks: list[asyncio.Task[object]]) -> None:
        sending = database._pg_batches._sending  # type: ignore[union-attr]
        while not sending:
            await asyncio.sleep(0)
        if when != "before it starts":
            await waiting.wait()
        # As when the event loop closes with a batch on its way.
        for task in list(sending):
            task.cancel()

    outcomes, _ = _at_once(url, [_inserting(n, attempts) for n in names], cancel_the_batch)
    # Whether a cancelled batch committed is unknown: its units' callers are told they were
    # cancelled rather than left waiting, and the units are not run again.
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
    assert attempts == dict.fromkeys(names, 1)
    assert not any(_exists(db, name) for name in names)


def test_a_unit_whose_caller_leaves_before_its_batch_goes_writes_nothing(
    pg: tuple[Database, str], batches: list[int]
) -> None:
    db, url = pg

    async def scenario() -> None:
        database = Database(url)
        try:
            task = asyncio.ensure_future(database.run(_inserting("HOT140")))
            waiting = database._pg_batches._waiting  # type: ignore[union-attr]
            while not any(waiting.values()):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Long enough for the batch to have gone, had it held the statement.
            await asyncio.sleep(0.1)
        finally:
            await database.aclose()

    asyncio.run(scenario())
    assert batches == []
    assert not _exists(db, "HOT140")
    assert _actions(db) == []


def test_units_run_from_synchronous_code_send_their_writes_alone(
    pg: tuple[Database, str], batches: list[int], sent: list[str]
) -> None:
    db, _ = pg
    _inserting_unit = _inserting("HOT120")
    db.run_sync(_inserting_unit)
    assert batches == []
    assert [sql.split()[0] for sql in sent] == ["WITH"]


# -- plain reads of units on the event loop, sent together --------------------------------------


def test_the_same_plain_read_of_units_at_once_goes_in_one_round_trip(
    pg: tuple[Database, str],
) -> None:
    db, url = pg
    known = {name: _integration(db, name) for name in ("HOT150", "HOT151", "HOT152")}
    asked = ["HOT150", "HOT159", "HOT151", "HOT152", "HOT158", "HOT150"]
    outcomes, counts = _at_once(url, [_reading(name) for name in asked])
    # Each unit got its own rows back, none where there is no row.
    assert outcomes == [known.get(name) for name in asked]
    assert (counts.read_batches, counts.reads) == (1, 6)


def test_reads_past_a_batchs_bound_go_in_the_next_batch(
    pg: tuple[Database, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, url = pg
    pk = _integration(db, "HOT190")
    monkeypatch.setattr(hot, "BATCH_MAX", 2)
    asked = ["HOT190", "HOT199", "HOT190", "HOT198", "HOT190"]
    outcomes, counts = _at_once(url, [_reading(name) for name in asked])
    assert outcomes == [pk, None, pk, None, pk]
    # Two full batches; the fifth read found nobody to go with and went alone.
    assert (counts.read_batches, counts.reads) == (2, 4)


def test_a_read_after_the_unit_began_its_transaction_is_its_own(
    pg: tuple[Database, str],
) -> None:
    _, url = pg

    def written_then_read(number: int) -> Callable[[Connection], object]:
        def unit(conn: Connection) -> object:
            os_value = f"HOT16{number}"
            _INSERT.run(conn, {"os": os_value, "name": "Own", "created_at": AT})
            # In the unit's transaction: it sees its own row, which no other connection could.
            return _BY_OS.run(conn, {"os": os_value}).first() is not None

        return unit

    outcomes, counts = _at_once(url, [written_then_read(i) for i in range(4)])
    assert outcomes == [True] * 4
    assert counts.reads == 0


def test_when_a_shared_read_fails_each_unit_reads_alone(
    pg: tuple[Database, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, url = pg
    pk = _integration(db, "HOT170")
    # A batch PostgreSQL refuses (a statement that does not parse): nothing was read.
    monkeypatch.setattr(hot, "_numbered", lambda sql, count: "SELECT nonsense FROM nowhere")
    outcomes, counts = _at_once(url, [_reading(n) for n in ("HOT170", "HOT179", "HOT170")])
    assert outcomes == [pk, None, pk]
    assert counts.read_batches == 1


def test_when_the_unit_sending_a_shared_read_leaves_the_others_read_alone(
    pg: tuple[Database, str],
) -> None:
    db, url = pg
    pk = _integration(db, "HOT180")
    outcomes, counts = _at_once(
        url, [_reading(n) for n in ("HOT180", "HOT180", "HOT189")], _cancel_first
    )
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert outcomes[1:] == [pk, None]
    assert counts.read_batches == 0


def _spend_every_code_elsewhere(url: str) -> None:
    """Another payment's unit, on a connection of its own, spends every code still unused."""
    racer = threading.Thread(
        target=_on_server,
        args=(url, "UPDATE sandbox_codes SET used_at = now() WHERE used_at IS NULL"),
    )
    racer.start()
    racer.join()


def test_a_request_whose_code_is_spent_after_its_read_runs_again_and_finds_it_used(
    pg: tuple[Database, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The code read with the session, then spent by a racing payment before this unit's writes:
    # the checked spending fails them all (StaleRows), and the gateway runs the unit again.
    db, url = pg
    terminal, os_value, codes = _shop_with_codes(db, "Racing", datetime.now(UTC))
    lookups: list[object] = []
    original = sessions.authenticate_for_payment

    def racing(*args: Any, **kwargs: Any) -> Any:
        answer = original(*args, **kwargs)
        lookups.append(kwargs.get("along"))
        if len(lookups) == 2:  # the second payment's first run
            _spend_every_code_elsewhere(url)
        return answer

    monkeypatch.setattr(sessions, "authenticate_for_payment", racing)

    async def scenario() -> list[Payment]:
        gateway = build_gateway(url, Settings(sandbox_enabled=True))
        try:
            token = await _logged_in(gateway, terminal, os_value)
            # The first payment teaches the code key.
            return [
                await _pay(gateway, token, f"RACE{number}", code, 900)
                for number, code in enumerate(codes)
            ]
        finally:
            await gateway.aclose()

    first, second = asyncio.run(scenario())
    assert first.status.value == "COMPLETED"
    assert (second.status.value, second.failure_code) == ("FAILED", "CODE_ALREADY_USED")
    # Read with the session both times, and run twice.
    assert len(lookups) == 3 and lookups[1] is lookups[2] is wallets.CODE_ALONG
    charges = _on_server(url, "SELECT outcome FROM sandbox_charges ORDER BY id")
    assert [row["outcome"] for row in charges] == ["success", "code-reused"]


def test_requests_racing_in_one_batch_make_one_payment_per_transkey_and_one_charge_per_code(
    pg: tuple[Database, str], batches: list[int]
) -> None:
    db, url = pg
    now = datetime.now(UTC)
    terminal, os_value, codes = _shop_with_codes(db, "Batched", now)
    codes += db.run_sync(lambda conn: wallets.issue_codes(conn, "01", "success", 3, now))

    async def scenario() -> tuple[list[Payment], list[Payment]]:
        gateway = build_gateway(url, Settings(sandbox_enabled=True))
        try:
            token = await _logged_in(gateway, terminal, os_value)

            def pay(trans_key: str, code: str) -> Coroutine[Any, Any, Payment]:
                return _pay(gateway, token, trans_key, code, 700)

            # The first payments teach the process the code key (its codes are then read along)
            # and open a second pooled connection, so that neither racer below waits for one.
            await pay("BATCH0", codes[0])
            await asyncio.gather(pay("BATCH8", codes[3]), pay("BATCH9", codes[4]))
            batches.clear()
            # A terminal that sent its REQUEST twice at once, then two terminals with one code.
            twice = await asyncio.gather(pay("BATCH1", codes[1]), pay("BATCH1", codes[1]))
            one_code = await asyncio.gather(pay("BATCH2", codes[2]), pay("BATCH3", codes[2]))
            return list(twice), list(one_code)
        finally:
            await gateway.aclose()

    twice, one_code = asyncio.run(scenario())
    # Each race's two statements went in one batch, which failed; each then went alone.
    assert batches == [2, 2]
    assert twice[0] == twice[1] and twice[0].status.value == "COMPLETED"
    outcomes = sorted((p.status.value, p.failure_code) for p in one_code)
    assert outcomes == [("COMPLETED", None), ("FAILED", "CODE_ALREADY_USED")]
    payments = _on_server(url, "SELECT trans_key, status FROM payments ORDER BY trans_key")
    assert [(row["trans_key"], row["status"]) for row in payments] == [
        ("BATCH0", "COMPLETED"),
        ("BATCH1", "COMPLETED"),
        ("BATCH2", one_code[0].status.value),
        ("BATCH3", one_code[1].status.value),
        ("BATCH8", "COMPLETED"),
        ("BATCH9", "COMPLETED"),
    ]
    charges = _on_server(url, "SELECT outcome FROM sandbox_charges ORDER BY id")
    assert sorted(row["outcome"] for row in charges) == ["code-reused"] + ["success"] * 5


def test_the_sandboxs_own_pay_runs_again_when_its_code_is_spent_meanwhile(
    pg: tuple[Database, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The three-hop path (a payment routed through the sandbox as a remote wallet would be).
    db, url = pg
    now = datetime.now(UTC)
    code = db.run_sync(lambda conn: wallets.issue_codes(conn, "01", "success", 1, now)[0])
    sandbox = wallets.SandboxWallets(db, public_url="http://127.0.0.1")
    reads: list[object] = []
    original = wallets._CODE.run

    def racing(conn: Connection, params: Any = None) -> Any:
        result = original(conn, params)
        reads.append(params)
        if len(reads) == 1:
            _spend_every_code_elsewhere(url)
        return result

    monkeypatch.setattr(wallets._CODE, "run", racing)
    request = PayRequest(
        ref="RACE000002", service_id="01", amount=700, code=code, merchant_name="M"
    )
    result = asyncio.run(sandbox.pay(request))
    assert (result.outcome, result.failure_code) == (ProviderOutcome.FAILED, "CODE_ALREADY_USED")
    assert len(reads) == 2
    charges = _on_server(url, "SELECT ref, outcome FROM sandbox_charges")
    assert [(row["ref"], row["outcome"]) for row in charges] == [("RACE000002", "code-reused")]
