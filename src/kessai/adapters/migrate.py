"""Bringing a database to the newest schema with the packaged Alembic migrations."""

from __future__ import annotations

from importlib.resources import files
from typing import Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from kessai import keys
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


def upgrade(db: Database, revision: str = "heads", *, check_key: bool = True) -> None:
    """Run every migration up to ``revision`` on ``db``; concurrent callers take turns.

    Every Kessai command migrates first, so instances starting together (a deploy, or a command
    run during one) migrate at the same moment. On PostgreSQL each would otherwise try to create
    the same tables, and all but one would fail on the catalog's unique keys; so the unit first
    takes a transaction-scoped advisory lock, and whoever gets it second finds the schema current
    and does nothing. On SQLite the process-wide writer lock already serialises the units.
    A database created here with a master key configured has its key for customer codes
    sealed with it at once (``repository.seal_code_key``). Then, unless ``check_key`` is false
    (for replacing that key), a sealed key that no configured master key opens raises
    SecretKeyInvalid, so that a command stops at its start rather than at every payment.
    """
    config = alembic_config()

    def unit(conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        created = not sa.inspect(conn).has_table("kessai_meta")
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        if created and keys.configured():
            # Sealed from the start where a master key is configured; an existing database
            # is sealed only on request (`kessai admin key seal-codes`): done as a side effect
            # of any command, it would shut out instances not yet given the key.
            repository.seal_code_key(conn)
        if check_key:
            repository.check_code_key(conn)

    # Migrations run in the database's own thread and transaction, like any unit of work.
    db.run_sync(unit)
