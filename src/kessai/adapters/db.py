"""The database handle: every unit of work runs as one transaction in one hop.

A unit of work is a plain synchronous function of a SQLAlchemy ``Connection``. ``Database.run``
executes it inside one transaction and commits when it returns; any exception rolls the whole unit
back. The same unit runs on both engines:

- SQLite: on a dedicated thread, all its statements in one hop — instead of awaiting each
  statement — which keeps a request's database time short and its latency tail flat.
- PostgreSQL (asyncpg): through ``AsyncConnection.run_sync``, so service code stays synchronous
  and identical.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

T = TypeVar("T")

# How long a SQLite writer waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
# A unit that lost a race it cannot wait out (SQLite: a read lock that could not be upgraded;
# PostgreSQL: a deadlock or serialization failure) is retried from the start this many times.
MAX_RETRIES: Final = 5
# Connections each gateway process keeps to PostgreSQL.
PG_POOL_SIZE: Final = 10
PG_POOL_OVERFLOW: Final = 10

DEFAULT_DATABASE_URL: Final = "sqlite:///kessai.db"
# SQLSTATEs after which a PostgreSQL transaction can simply be run again.
_PG_RETRYABLE: Final = frozenset({"40001", "40P01"})


def normalise_url(url: str) -> str:
    """Accept a SQLAlchemy URL, a libpq-style ``postgresql://`` URL, or a bare SQLite path."""
    if "://" not in url:
        return f"sqlite:///{Path(url).resolve()}"
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


class Database:
    """A SQLite or PostgreSQL database that runs units of work."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.dialect = sa.engine.make_url(self.url).get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {self.dialect}: use sqlite or postgresql")
        self._sqlite: Engine | None = None
        self._pg: AsyncEngine | None = None
        self._bridge: _LoopThread | None = None
        if self.dialect == "sqlite":
            self._sqlite = sa.create_engine(
                self.url,
                connect_args={"check_same_thread": False, "isolation_level": None},
                poolclass=sa.pool.StaticPool,
            )
            event.listen(self._sqlite, "connect", _configure_sqlite)
            event.listen(self._sqlite, "begin", _begin_sqlite)
            # SQLite has one writer at a time; one thread per process avoids lock ping-pong
            # inside the process while the event loop keeps serving other requests.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kessai-db")
        else:
            self._pg = self._pg_engine()

    def _pg_engine(self) -> AsyncEngine:
        return create_async_engine(
            self.url,
            pool_size=PG_POOL_SIZE,
            max_overflow=PG_POOL_OVERFLOW,
            pool_pre_ping=True,
            isolation_level="READ COMMITTED",
        )

    # -- SQLite ---------------------------------------------------------------------------------

    def _sqlite_unit(self, fn: Callable[[Connection], T], write: bool) -> T:
        assert self._sqlite is not None
        for attempt in range(MAX_RETRIES + 1):
            try:
                with self._sqlite.connect() as raw:
                    # After a failed upgrade from read to write, start as a writer.
                    conn = raw.execution_options(kessai_write=write or attempt > 0)
                    with conn.begin():
                        return fn(conn)
            except sa.exc.OperationalError as exc:
                if not _is_sqlite_busy(exc) or attempt == MAX_RETRIES:
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- PostgreSQL -----------------------------------------------------------------------------

    @staticmethod
    async def _pg_unit(engine: AsyncEngine, fn: Callable[[Connection], T]) -> T:
        for attempt in range(MAX_RETRIES + 1):
            try:
                async with engine.connect() as conn, conn.begin():
                    return await conn.run_sync(fn)
            except sa.exc.DBAPIError as exc:
                if _pg_sqlstate(exc) not in _PG_RETRYABLE or attempt == MAX_RETRIES:
                    raise
                await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- both -----------------------------------------------------------------------------------

    async def run(self, fn: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run ``fn`` in one transaction; commit unless it raises."""
        if self._pg is not None:
            return await self._pg_unit(self._pg, fn)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._sqlite_unit, fn, write)

    def run_sync(self, fn: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run ``fn`` in one transaction from synchronous code (the CLI, tests, migrations)."""
        if self._sqlite is not None:
            return self._executor.submit(self._sqlite_unit, fn, write).result()
        # An async engine is bound to the loop it was used on, so synchronous callers get their
        # own loop thread and their own engine.
        if self._bridge is None:
            self._bridge = _LoopThread()
            self._bridge_engine = self._bridge.call(self._make_engine_async())
        return self._bridge.call(self._pg_unit(self._bridge_engine, fn))

    async def _make_engine_async(self) -> AsyncEngine:
        return self._pg_engine()

    def close(self) -> None:
        """Release threads and connections."""
        if self._sqlite is not None:
            self._executor.shutdown(wait=True)
            self._sqlite.dispose()
        if self._bridge is not None:
            self._bridge.call(self._bridge_engine.dispose())
            self._bridge.stop()
            self._bridge = None

    async def aclose(self) -> None:
        """Release connections from async code (application shutdown)."""
        if self._pg is not None:
            await self._pg.dispose()
        self.close()


class _LoopThread:
    """An event loop on a thread of its own, for synchronous callers of an async engine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


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


def _is_sqlite_busy(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


def _pg_sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    cause = getattr(orig, "__cause__", None)
    if code is None and cause is not None:
        code = getattr(cause, "sqlstate", None)
    return code if isinstance(code, str) else None
