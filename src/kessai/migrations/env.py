"""Alembic environment: runs the migrations on the connection Kessai hands over."""

from __future__ import annotations

from alembic import context

from kessai.adapters.schema import metadata

config = context.config
connection = config.attributes.get("connection")


def run_with(conn: object) -> None:
    context.configure(
        connection=conn,  # type: ignore[arg-type]
        target_metadata=metadata,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run_with(connection)
else:
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
    with engine.connect() as conn:
        run_with(conn)
