"""Bringing a database to the newest schema with the packaged Alembic migrations."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config

from kessai.adapters.db import Database


def alembic_config() -> Config:
    """An Alembic configuration that points at the migrations inside the package."""
    config = Config()
    config.set_main_option("script_location", str(files("kessai") / "migrations"))
    return config


def upgrade(db: Database, revision: str = "heads") -> None:
    """Run every migration up to ``revision`` on ``db``."""
    config = alembic_config()

    def unit(conn: object) -> None:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)

    # Migrations run in the database's own thread and transaction, like any unit of work.
    db.run_sync(unit)
