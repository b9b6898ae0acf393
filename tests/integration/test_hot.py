"""Hot statements answer exactly what SQLAlchemy's own execution would, on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import hot
from kessai.adapters import repository as repo
from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.adapters.hot import Hot

AT = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
_INSERT = Hot(t.integrations.insert())
_BY_ID = Hot(sa.select(t.integrations).where(t.integrations.c.id == sa.bindparam("pk")))
_RENAME = Hot(t.integrations.update().where(t.integrations.c.id == sa.bindparam("b_id")))


def _integration(db: Database, name: str = "Hot POS", os_value: str = "HOT001") -> int:
    row = {"os": os_value, "name": name, "created_at": AT}
    return db.run_sync(lambda conn: _INSERT.run(conn, row).inserted_pk)


def test_a_row_reads_back_as_sqlalchemy_reads_it(db: Database) -> None:
    pk = _integration(db)
    hot = db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk}).one(), write=False)
    core = db.run_sync(
        lambda conn: conn.execute(sa.select(t.integrations).where(t.integrations.c.id == pk)).one(),
        write=False,
    )
    assert tuple(hot) == tuple(core)
    assert hot.created_at == AT and hot.created_at.tzinfo is not None
    # A column left out of the INSERT took its scalar default, as SQLAlchemy would have set it.
    assert isinstance(hot.enabled, bool) and hot.enabled is core.enabled


def test_updates_count_rows_and_missing_rows_are_reported(db: Database) -> None:
    pk = _integration(db)
    changed = db.run_sync(lambda conn: _RENAME.run(conn, {"b_id": pk, "name": "New"}).rowcount)
    assert changed == 1
    missing = db.run_sync(lambda conn: _RENAME.run(conn, {"b_id": pk + 99, "name": "X"}).rowcount)
    assert missing == 0
    assert db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk + 99}).first()) is None
    with pytest.raises(sa.exc.NoResultFound):
        db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk + 99}).one())


def test_driver_errors_surface_as_sqlalchemy_errors(db: Database) -> None:
    pk = _integration(db)
    with pytest.raises(sa.exc.IntegrityError):
        db.run_sync(
            lambda conn: _INSERT.run(
                conn, {"id": pk, "os": "HOT002", "name": "Twin", "created_at": AT}
            )
        )


def test_literals_written_into_a_statement_are_bound(db: Database) -> None:
    pk = _integration(db, name="Literal POS")
    named = Hot(
        sa.select(t.integrations.c.id).where(
            t.integrations.c.name == "Literal POS", t.integrations.c.id == sa.bindparam("pk")
        )
    )
    assert db.run_sync(lambda conn: named.run(conn, {"pk": pk}).scalar_one()) == pk


def test_one_refuses_a_second_row(db: Database) -> None:
    _integration(db, name="Twin POS", os_value="HOT001")
    _integration(db, name="Twin POS", os_value="HOT002")
    by_name = Hot(sa.select(t.integrations.c.id).where(t.integrations.c.name == sa.bindparam("n")))
    with pytest.raises(sa.exc.MultipleResultsFound):
        db.run_sync(lambda conn: by_name.run(conn, {"n": "Twin POS"}).one(), write=False)


@pytest.mark.parametrize(
    "count", [1, 2, repo.AUDIT_ROWS_PER_STATEMENT, 2 * repo.AUDIT_ROWS_PER_STATEMENT + 3]
)
def test_audit_entries_appended_together_keep_their_order(db: Database, count: int) -> None:
    entries = [
        repo.audit_entry(at=AT, actor="test", action=f"test.{i}", detail={"i": i})
        for i in range(count)
    ]
    db.run_sync(lambda conn: repo.append_audit(conn, *entries))
    rows = db.run_sync(
        lambda conn: conn.execute(
            sa.select(t.audit_events.c.action, t.audit_events.c.detail, t.audit_events.c.at)
            .where(t.audit_events.c.actor == "test")
            .order_by(t.audit_events.c.id)
        ).all(),
        write=False,
    )
    assert [row.action for row in rows] == [f"test.{i}" for i in range(count)]
    assert [row.detail for row in rows] == [f'{{"i":{i}}}' for i in range(count)]
    assert {row.at for row in rows} == {AT}


def test_values_given_in_order_run_as_the_same_values_by_name(db: Database) -> None:
    keys = ("os", "name", "created_at")
    pk = db.run_sync(
        lambda conn: _INSERT.run_ordered(conn, keys, ["HOT010", "Ordered", AT]).inserted_pk
    )
    row = db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk}).one(), write=False)
    assert (row.os, row.name, row.created_at) == ("HOT010", "Ordered", AT)
    # A column the INSERT was not given still takes its default (through the mapping path).
    assert row.enabled is True


def test_values_in_another_order_than_the_statements_are_matched_by_name(db: Database) -> None:
    pk = _integration(db)
    # The UPDATE binds "name" (SET) before "b_id" (WHERE); the caller gives them the other way.
    keys = ("b_id", "name")
    changed = db.run_sync(lambda conn: _RENAME.run_ordered(conn, keys, [pk, "Renamed"]).rowcount)
    assert changed == 1
    assert db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk}).one().name) == "Renamed"


def test_values_that_do_not_match_their_names_are_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="2 values for 3 parameters"):
        db.run_sync(
            lambda conn: _INSERT.run_ordered(conn, ("os", "name", "created_at"), ["HOT011", "X"])
        )


def test_a_deferred_insert_runs_at_once_on_sqlite(db: Database) -> None:
    # No round trip to save: the INSERT runs where it is deferred, and its error is raised there.
    _integration(db, os_value="HOT010")

    def unit(conn: Connection) -> tuple[bool, str]:
        _INSERT.defer(conn, {"os": "HOT011", "name": "At once", "created_at": AT})
        seen = conn.execute(
            sa.select(t.integrations.c.id).where(t.integrations.c.os == "HOT011")
        ).first()
        try:
            _INSERT.defer(conn, {"os": "HOT010", "name": "Twice", "created_at": AT})
        except sa.exc.IntegrityError:
            return seen is not None, "raised where deferred"
        return seen is not None, "not raised"

    assert db.run_sync(unit) == (True, "raised where deferred")
    with pytest.raises(TypeError, match="only an INSERT"):
        db.run_sync(lambda conn: _RENAME.defer(conn, {"b_id": 1, "name": "N"}))


def test_inserts_are_combined_into_one_statement_with_their_placeholders_renumbered() -> None:
    first = "INSERT INTO a (x, y) VALUES ($1::VARCHAR, $2::INTEGER) RETURNING a.id"
    second = "INSERT INTO b (z) VALUES ($1::VARCHAR), ($2::VARCHAR), ($3::VARCHAR)"
    third = "INSERT INTO c (w) VALUES ($1::INTEGER)"
    assert hot._together((first, second, third), (2, 3, 1), (None, None, None)) == (
        "WITH kessai_w0 AS (INSERT INTO a (x, y) VALUES ($1::VARCHAR, $2::INTEGER) RETURNING a.id"
        "), kessai_w1 AS (INSERT INTO b (z) VALUES ($3::VARCHAR), ($4::VARCHAR), ($5::VARCHAR)) "
        "INSERT INTO c (w) VALUES ($6::INTEGER)"
    )
    # A statement whose placeholders are not exactly $1…$n for its n values is refused.
    with pytest.raises(ValueError, match="cannot combine"):
        hot._together((first, third), (3, 1), (None, None))
    with pytest.raises(ValueError, match="cannot combine"):
        hot._together(("INSERT INTO d (v) VALUES ('$1')", third), (0, 1), (None, None))


def test_a_deferred_update_checks_its_row_count_at_once_on_sqlite(db: Database) -> None:
    pk = _integration(db, os_value="HOT012")
    db.run_sync(lambda conn: _RENAME.defer(conn, {"b_id": pk, "name": "Kept"}, expect_rows=1))
    with pytest.raises(hot.StaleRows):
        db.run_sync(lambda conn: _RENAME.defer(conn, {"b_id": pk + 9, "name": "X"}, expect_rows=1))
    assert db.run_sync(lambda conn: _BY_ID.run(conn, {"pk": pk}).one().name) == "Kept"


def test_checked_writes_end_in_a_select_that_fails_the_statement_on_a_wrong_count() -> None:
    update = "UPDATE a SET x=$1::VARCHAR WHERE a.id = $2::INTEGER"
    insert = "INSERT INTO b (z) VALUES ($1::VARCHAR) RETURNING b.id"
    assert hot._together((update, insert), (2, 1), (1, None)) == (
        "WITH kessai_w0 AS (UPDATE a SET x=$1::VARCHAR WHERE a.id = $2::INTEGER RETURNING 1), "
        "kessai_w1 AS (INSERT INTO b (z) VALUES ($3::VARCHAR) RETURNING b.id) "
        "SELECT 1 / (SELECT (count(*) = 1)::int FROM kessai_w0)"
    )
