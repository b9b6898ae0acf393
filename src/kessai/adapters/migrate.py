"""Bringing a database to the newest schema with the packaged Alembic migrations."""

from __future__ import annotations

from importlib.resources import files
from typing import Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from kessai.adapters import repository
from kessai.adapters.db import Database

# The PostgreSQL advisory lock that migrations take ("kessai" in ASCII, then 1): any bigint
# would do, as long as every Kessai process uses the same one.
MIGRATION_LOCK_KEY: Final = 0x6B6573736169_0001


def alembic_config() -> Config:
    """An Alembic configuration that points at the migrations inside the package."""
    config = Config()
    config.set_main_option("script_location", str(files("kessai") / "migrations"))
    return config


def upgrade(db: Database, revision: str = "heads", *, seal: bool = True) -> None:
    """Run every migration up to ``revision`` on ``db``; concurrent callers take turns.

    Every Kessai command migrates first, so instances starting together (a deploy, or a command
    run during one) migrate at the same moment. On PostgreSQL each would otherwise try to create
    the same tables, and all but one would fail on the catalog's unique keys; so the unit first
    takes a transaction-scoped advisory lock, and whoever gets it second finds the schema current
    and does nothing. On SQLite the process-wide writer lock already serialises the units.
    With a master key configured, the key for customer codes is then sealed with it
    (``repository.seal_code_key``), unless ``seal`` is false (for replacing that key).
    """
    config = alembic_config()

    def unit(conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        if seal:
            # In the same turn, so that instances starting together seal the key once.
            repository.seal_code_key(conn)

    # Migrations run in the database's own thread and transaction, like any unit of work.
    db.run_sync(unit)
