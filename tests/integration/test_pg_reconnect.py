"""PostgreSQL: a pooled connection the server dropped costs one retry, not a failed operation."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest
from sqlalchemy.engine import Connection

from kessai.adapters.db import Database
from scale.support import create_database

URL = os.environ.get("KESSAI_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(URL is None, reason="needs KESSAI_TEST_POSTGRES_URL")


def _admin(sql: str) -> None:
    assert URL is not None

    async def run() -> None:
        conn = await asyncpg.connect(URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def test_a_unit_after_the_server_dropped_its_connections_succeeds() -> None:
    assert URL is not None
    url = create_database(URL)
    name = url.rsplit("/", 1)[1]
    db = Database(url)

    def insert(value: int) -> object:
        def unit(conn: Connection) -> int:
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (v integer)")
            conn.exec_driver_sql(f"INSERT INTO t VALUES ({value})")
            return int(conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one())

        return unit

    async def scenario() -> list[int]:
        counts = [await db.run(insert(1))]  # type: ignore[arg-type]
        # What a server restart or a failover does to every pooled connection.
        await asyncio.to_thread(
            _admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
        )
        counts.append(await db.run(insert(2)))  # type: ignore[arg-type]
        await db.aclose()
        return counts

    try:
        # Exactly one row per unit: the retried unit was not applied twice.
        assert asyncio.run(scenario()) == [1, 2]
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
