"""The database handle: every unit of work runs as one hop to a database thread.

A unit of work is a plain synchronous function of a SQLAlchemy ``Connection``. ``Database.run``
executes it inside one transaction on a dedicated thread and commits when it returns; any
exception rolls the whole unit back. Running the entire transaction in one hop — instead of
awaiting each statement — keeps a request's database time short and its latency tail flat.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

T = TypeVar("T")

# How long a SQLite writer waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
# A read transaction that must upgrade to write can fail at once with SQLITE_BUSY when another
# process committed meanwhile; the unit is retried from the start this many times.
MAX_BUSY_RETRIES: Final = 5

DEFAULT_DATABASE_URL: Final = "sqlite:///kessai.db"


def normalise_url(url: str) -> str:
    """Accept a SQLAlchemy URL or a bare file path (taken as SQLite)."""
    if "://" not in url:
        return f"sqlite:///{Path(url).resolve()}"
    if url.startswith("postgresql://"):
        raise ValueError(
            "PostgreSQL support is not built into this version yet; use a sqlite:/// URL"
        )
    return url


class Database:
    """A SQLite database (WAL, synchronous=FULL) with a one-thread executor for its units."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.engine: Engine = sa.create_engine(
            self.url,
            connect_args={"check_same_thread": False, "isolation_level": None},
            poolclass=sa.pool.StaticPool,
        )
        event.listen(self.engine, "connect", _configure_sqlite)
        event.listen(self.engine, "begin", _begin_sqlite)
        # SQLite has one writer at a time; one thread per process avoids lock ping-pong inside
        # the process while still letting the event loop serve other requests.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kessai-db")

    def _unit(self, fn: Callable[[Connection], T], write: bool) -> T:
        for attempt in range(MAX_BUSY_RETRIES + 1):
            try:
                with self.engine.connect() as raw:
                    conn = raw.execution_options(kessai_write=write or attempt > 0)
                    with conn.begin():
                        return fn(conn)
            except sa.exc.OperationalError as exc:
                if not _is_busy(exc) or attempt == MAX_BUSY_RETRIES:
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    async def run(self, fn: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run ``fn`` in one transaction on the database thread; commit unless it raises."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._unit, fn, write)

    def run_sync(self, fn: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run ``fn`` in one transaction from synchronous code (the CLI, tests)."""
        return self._executor.submit(self._unit, fn, write).result()

    def close(self) -> None:
        """Release the thread and the connection."""
        self._executor.shutdown(wait=True)
        self.engine.dispose()


def _configure_sqlite(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed during a write; FULL makes every commit durable before we answer.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_sqlite(conn: Connection) -> None:
    # A writing unit takes the write lock up front (BEGIN IMMEDIATE), so it waits on busy_timeout
    # instead of failing later when it would upgrade a read lock.
    write = conn.get_execution_options().get("kessai_write", True)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _is_busy(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text
