"""Hot statements answer exactly what SQLAlchemy's own execution would, on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

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
        lambda conn: conn.execute(
            sa.select(t.integrations).where(t.integrations.c.id == pk)
        ).one(),
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
