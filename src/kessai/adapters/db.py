"""The database handle: every unit of work runs atomically, in one hop.

A unit of work is a plain synchronous function of a SQLAlchemy ``Connection``. ``Database.run``
executes it atomically and answers only once it is durable; any exception undoes the whole unit.
The same unit runs on both engines:

- SQLite: on one writer thread per process, all its statements in one hop — instead of awaiting
  each statement. Units that queue up meanwhile are committed together (group commit) in one
  transaction; a failing unit is undone alone (should it have changed anything, the group runs
  again with each unit in a SAVEPOINT), and every unit of the group is answered after the single
  COMMIT. Processes sharing the file take turns through an ``flock`` on a lock file beside it,
  which wakes the next writer at once instead of SQLite's sleeping busy handler. The writer
  fsyncs the WAL itself once it has let go of that lock, and answers only then (``_WalFlush``):
  the next writer commits while this one waits for the disk. The WAL is checkpointed by a thread
  of its own, outside the write lock, so that no commit waits for pages to be copied back into
  the database file.
- PostgreSQL (asyncpg): each unit in a greenlet of its own (``greenlet_spawn``, as under
  ``AsyncConnection.run_sync``), one transaction per unit, so service code stays synchronous and
  identical. A unit that began no transaction ends with one statement carrying all its writes;
  the units on the event loop whose statements are ready at the same moment send them together,
  pipelined, in one transaction (``_PgBatches``), and one that fails there is sent again alone.
  Likewise the same plain read made by several units at once goes in one round trip
  (``hot.SharedReads``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util.concurrency import greenlet_spawn

from kessai.adapters import hot
from kessai.adapters.hot import sqlstate

T = TypeVar("T")

log = logging.getLogger(__name__)

# How long a SQLite writer waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
# A unit that lost a race it cannot wait out (SQLite: a read lock that could not be upgraded;
# PostgreSQL: a deadlock or serialization failure) is retried from the start this many times.
MAX_RETRIES: Final = 5
# At most this many queued units share one SQLite commit: enough to amortise the fsync, few enough
# that the first unit of a group is not kept waiting long for the last.
GROUP_COMMIT_MAX_UNITS: Final = 64
# How long the checkpointer lets commits accumulate after a write before it checkpoints the WAL.
CHECKPOINT_PAUSE_SECONDS: Final = 0.05
# Should the checkpointer fall far behind, the committing connection checkpoints at this many WAL
# pages (about 40 MB), as SQLite does by default at 1,000.
WAL_BACKSTOP_PAGES: Final = 10_000
# Connections each gateway process keeps to PostgreSQL, and the most it opens: a unit beyond
# that many at once waits for one to come back. No overflow connections: under steady load they
# were closed on return and opened again a moment later, a new server process each time.
PG_POOL_SIZE: Final = 10
# Pooled PostgreSQL connections are replaced after this long, before firewalls forget them.
PG_POOL_RECYCLE_SECONDS: Final = 300

DEFAULT_DATABASE_URL: Final = "sqlite:///kessai.db"
# SQLSTATEs after which a PostgreSQL transaction can simply be run again.
_PG_RETRYABLE: Final = frozenset({"40001", "40P01"})


# The names the gateway's database threads carry in the operating system (``top -H``, ``ps -L``,
# /proc/PID/task/TID/comm), at most 15 bytes each: what Linux keeps of a thread's name.
OS_THREAD_NAMES: Final = {"writer": "kessai-db", "checkpointer": "kessai-ckpt"}


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the operating system too, where it can (Linux).

    Python names its threads for itself alone; tools that look from outside (``top -H``,
    ``bench/run.py``'s CPU per thread) see only what the kernel keeps. Best effort: a system
    without /proc, or one that refuses the write, leaves the name as it was.
    """
    comm = f"/proc/self/task/{threading.get_native_id()}/comm"
    with contextlib.suppress(OSError), open(comm, "w", encoding="ascii") as kernel_name:
        kernel_name.write(name[:15])


def leave_batch_policy() -> None:
    """Give the calling thread the normal scheduling policy if it inherited SCHED_BATCH.

    A pinned serving worker runs its threads under SCHED_BATCH (``kessai.cli.supervise``) so
    that the ones woken while the writer thread holds the write lock do not take its CPU; the
    writer, which starts from such a thread, must not keep that policy itself. Any other policy
    (one an operator chose with ``chrt``, say) is left alone, and so is a refusal.
    """
    if not hasattr(os, "sched_setscheduler"):
        return
    with contextlib.suppress(OSError):
        if os.sched_getscheduler(0) == os.SCHED_BATCH:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


class Batched(NamedTuple):
    """Counts of statements sent together (PostgreSQL), for the bench."""

    write_batches: int
    writes: int
    read_batches: int
    reads: int


class NotDurable(RuntimeError):
    """The disk did not confirm the WAL: what was committed may not survive a crash.

    Once raised, the process's SQLite writer refuses every further unit with it: after a failed
    fsync the kernel may have dropped the pages it could not write, so no later answer could be
    vouched for either. The process must be restarted, once the disk is looked at.
    """


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
        self._pg_batches: _PgBatches | None = None
        self._pg_reads: hot.SharedReads | None = None
        self._bridge: _LoopThread | None = None
        if self.dialect == "sqlite":
            self._sqlite = sa.create_engine(
                self.url,
                connect_args={"check_same_thread": False, "isolation_level": None},
                poolclass=sa.pool.StaticPool,
            )
            # A file database gets its checkpoints from a thread of its own (``_Checkpointer``);
            # a committing connection checkpoints only as a backstop, should that thread fall
            # far behind. A database in memory has no WAL to checkpoint.
            backstop = WAL_BACKSTOP_PAGES if _lock_path(self.url) else None

            def configure(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
                _configure_sqlite(dbapi_connection, backstop)

            event.listen(self._sqlite, "connect", configure)
            event.listen(self._sqlite, "begin", _begin_sqlite)
            # SQLite has one writer at a time; one thread per process avoids lock ping-pong
            # inside the process while the event loop keeps serving other requests.
            self._writer = _SqliteWriter(self._sqlite, _lock_path(self.url))
        else:
            self._pg = self._pg_engine()
            self._pg_batches = _PgBatches(self._pg)
            self._pg_reads = hot.SharedReads()

    def _pg_engine(self) -> AsyncEngine:
        engine = create_async_engine(
            self.url,
            pool_size=PG_POOL_SIZE,
            max_overflow=0,
            # No ping on every checkout (two extra round trips per unit of work): a connection
            # the server dropped fails its unit, which is then run again on a fresh connection.
            pool_recycle=PG_POOL_RECYCLE_SECONDS,
            isolation_level="READ COMMITTED",
        )
        # A unit's deferred writes (``Hot.defer``) are sent before SQLAlchemy runs any other
        # statement of the unit, as ``Hot`` does before its own, and ``_pg_unit`` before the
        # COMMIT. A unit that raises leaves them unsent: they are kept by the unit's connection
        # object (``_pg_unit`` opens one per unit), and forgotten with it.
        event.listen(engine.sync_engine, "before_cursor_execute", _send_deferred)
        return engine

    # -- PostgreSQL -----------------------------------------------------------------------------

    @staticmethod
    async def _pg_unit(
        engine: AsyncEngine,
        fn: Callable[[Connection], T],
        batches: _PgBatches | None = None,
        reads: hot.SharedReads | None = None,
    ) -> T:
        sync_engine = engine.sync_engine
        for attempt in range(MAX_RETRIES + 1):
            committing = False

            def whole() -> tuple[T, hot.Writes | None]:
                # Checkout, BEGIN, the unit, COMMIT and checkin in one greenlet, as SQLAlchemy's
                # own AsyncSession does: the AsyncConnection API spawns one per step (five per
                # unit), which cost about 100 µs of CPU per unit here.
                nonlocal committing
                with sync_engine.connect() as conn:
                    if reads is not None:
                        hot.share_reads(conn, reads)
                    with conn.begin():
                        result = fn(conn)
                        # The unit's deferred writes go before its COMMIT, inside it. In a unit
                        # that has begun no transaction they are its only write: sent alone, with
                        # no BEGIN or COMMIT, they commit by themselves, so sending them is
                        # committing. On the event loop they go with other units' (``batches``),
                        # once this connection is back in the pool.
                        began = hot.began(conn)
                        if not began and batches is not None:
                            return result, hot.take(conn)
                        committing = not began
                        hot.flush(conn, begin=began)
                        committing = True
                    return result, None

            try:
                result, final = await greenlet_spawn(whole)
                if final is not None and batches is not None:
                    committing = True
                    await batches.send(final)
                return result
            except _Unsent:
                # Its writes never left: nothing of the unit was applied.
                if attempt == MAX_RETRIES:
                    raise
            except sa.exc.DBAPIError as exc:
                # A dropped connection is retried only when it failed before the COMMIT was
                # sent: nothing was applied then. A COMMIT that got no answer may have been
                # applied, so running the unit again could apply it twice.
                dropped = exc.connection_invalidated and not committing
                if not (dropped or sqlstate(exc.orig) in _PG_RETRYABLE) or attempt == MAX_RETRIES:
                    raise
            await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def batched(self) -> Batched:
        """How many of the units' statements went to PostgreSQL with others' so far."""
        writes, reads = self._pg_batches, self._pg_reads
        if writes is None or reads is None:
            return Batched(0, 0, 0, 0)
        return Batched(writes.batches, writes.statements, reads.batches, reads.reads)

    # -- both -----------------------------------------------------------------------------------

    async def run(self, fn: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run ``fn`` in one transaction; commit unless it raises."""
        if self._pg is not None:
            return await self._pg_unit(self._pg, fn, self._pg_batches, self._pg_reads)
        return await self._writer.run(fn, write)

    def run_sync(self, fn: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run ``fn`` in one transaction from synchronous code (the CLI, tests, migrations)."""
        if self._sqlite is not None:
            return self._writer.submit(fn, write).result()
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
            self._writer.stop()
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


@dataclass(slots=True)
class _Unit:
    """A queued unit and whoever waits for it: a thread (``future``) or a coroutine."""

    fn: Callable[[Connection], Any]
    write: bool
    future: Future[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    waiter: asyncio.Future[Any] | None = None

    def wanted(self) -> bool:
        """False when the caller gave up before the unit started: it is then not run."""
        if self.future is not None:
            return self.future.set_running_or_notify_cancel()
        # Read from another thread; at worst a unit whose caller just left runs anyway, as it
        # would had it started a moment earlier.
        return self.waiter is not None and not self.waiter.cancelled()


def _settle_waiters(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    # Runs on the event loop: one wake-up settles every coroutine of a group.
    for waiter, ok, value in outcomes:
        if waiter.done():
            continue
        if ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)


class _SqliteWriter:
    """The process's one SQLite thread: runs queued units in groups that share a commit."""

    def __init__(self, engine: Engine, lock_path: str | None) -> None:
        self._engine = engine
        self._lock_path = lock_path
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="kessai-db", daemon=True)
        self._started = False
        self._start_lock = threading.Lock()
        self._stopped = False
        # The thread's one connection, opened on first use and kept (StaticPool: one per file).
        self._conn: Connection | None = None
        # The schema's version on that connection as last read (None: to be read again). It only
        # ever grows, so a stale value can only make a failed unit look like it changed the
        # schema: the group is then run again guarded, never less safely (see ``_run_units``).
        self._schema: int | None = None
        self._lock_fd: int | None = None
        # A file database gets its checkpoints from a thread of its own (``_Checkpointer``).
        path = engine.url.database
        self._checkpointer = _Checkpointer(path) if lock_path and path else None
        self._wal = _WalFlush(path) if lock_path and path else None
        # Set once the WAL could not be made durable: every later unit is refused with it.
        self._not_durable: NotDurable | None = None

    def _put(self, unit: _Unit) -> None:
        if self._stopped:
            raise RuntimeError("the database is closed")
        if not self._started:
            with self._start_lock:
                if not self._started:
                    self._thread.start()
                    if self._checkpointer is not None:
                        self._checkpointer.start()
                    self._started = True
        self._queue.put(unit)

    def submit(self, fn: Callable[[Connection], T], write: bool) -> Future[T]:
        """Queue one unit; its future settles after the commit that makes it durable."""
        future: Future[T] = Future()
        self._put(_Unit(fn, write, future=future))
        return future

    async def run(self, fn: Callable[[Connection], T], write: bool) -> T:
        """Queue one unit and wait for it on the running event loop."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        self._put(_Unit(fn, write, loop=loop, waiter=waiter))
        return await waiter

    def stop(self) -> None:
        """Finish the queued units, then end the thread."""
        self._stopped = True
        if self._started:
            self._queue.put(None)
            self._thread.join()
            if self._checkpointer is not None:
                self._checkpointer.stop()

    def _writer_lock(self) -> int | None:
        """The writer lock file's descriptor, opened on first use (None for a database in memory).

        Opened here rather than once at the thread's start: a folder that cannot hold it (missing,
        read-only) then fails each unit with that error, instead of ending the thread and leaving
        every caller waiting; and the units after the folder was mended succeed.
        """
        if self._lock_fd is None and self._lock_path:
            # Before this thread's connection first touches it, which would create the database
            # with the process's umask (usually readable by every local user). SQLite gives the
            # WAL and shared-memory files the database file's mode, so they follow.
            _create_owner_only(self._lock_path.removesuffix(_LOCK_SUFFIX))
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._lock_fd

    def _loop(self) -> None:
        name_os_thread(OS_THREAD_NAMES["writer"])
        leave_batch_policy()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                # Only units whose callers still wait are run (_take_waiting skips the others).
                group = [first] if first.wanted() else []
                self._take_waiting(group)
                if not group:
                    continue
                if self._not_durable is not None:
                    self._settle(group, [(False, self._not_durable)] * len(group))
                    continue
                try:
                    outcomes = self._run_group(group, self._writer_lock())
                except BaseException as exc:
                    # The writer's own failure, outside any unit (its lock file cannot be opened,
                    # say): the group's answer, and the thread serves on.
                    outcomes = [(False, exc)] * len(group)
                wrote = any(u.write for u in group)
                # The writer lock is free again: the disk is waited for while another process
                # commits, and nobody is answered before it confirmed what they may have seen.
                outcomes = self._made_durable(outcomes, wrote=wrote)
                self._settle(group, outcomes)
                if self._checkpointer is not None and wrote:
                    self._checkpointer.poke()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            if self._wal is not None:
                self._wal.close()
            if self._conn is not None:
                self._conn.close()

    def _made_durable(
        self, outcomes: list[tuple[bool, Any]], *, wrote: bool
    ) -> list[tuple[bool, Any]]:
        """Flush the WAL if the group may have seen or made a change not yet on disk.

        On failure every unit of the group gets ``NotDurable`` instead of its outcome, and the
        writer stops taking units: see ``NotDurable``.
        """
        if self._wal is None:
            return outcomes
        conn = self._live_conn()
        driver = conn.connection.driver_connection if conn is not None else None
        try:
            self._wal.flush_if_needed(driver, wrote=wrote)
        except OSError as exc:
            self._not_durable = NotDurable(
                f"the disk did not confirm the database's write-ahead log ({exc.strerror}): "
                "this process answers no more units; restart it once the disk is checked"
            )
            self._not_durable.__cause__ = exc
            log.critical("%s", self._not_durable)
            return [(False, self._not_durable)] * len(outcomes)
        return outcomes

    def _run_group(self, group: list[_Unit], lock_fd: int | None) -> list[tuple[bool, Any]]:
        """Run a group in one transaction; on a failure that spoils it, run each unit alone.

        Units queued while the group waited for the writer lock join it: ``group`` grows.
        """
        try:
            return self._attempt(group, lock_fd, take_waiting=True)
        except Exception as exc:
            if len(group) == 1:
                return [(False, exc)]
            # Nothing of the group was committed: each unit gets a transaction of its own.
            return [self._alone(unit, lock_fd) for unit in group]

    def _take_waiting(self, group: list[_Unit]) -> None:
        """Add the units queued meanwhile to ``group``, up to the most a group takes.

        Called as a group is made up, and again once the writer lock is taken: units that came
        while another process held it commit with this group instead of waiting for a whole
        further turn of the lock, and each BEGIN and COMMIT (an fsync) serves more payments.
        """
        while len(group) < GROUP_COMMIT_MAX_UNITS:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                return
            if more is None:
                self._queue.put(None)  # stop after this group
                return
            if more.wanted():
                group.append(more)

    @staticmethod
    def _settle(group: list[_Unit], outcomes: list[tuple[bool, Any]]) -> None:
        """Give each unit's caller its outcome: threads directly, each event loop in one call."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for unit, (ok, value) in zip(group, outcomes, strict=True):
            if unit.future is not None:
                if ok:
                    unit.future.set_result(value)
                else:
                    unit.future.set_exception(value)
            elif unit.loop is not None and unit.waiter is not None:
                by_loop.setdefault(unit.loop, []).append((unit.waiter, ok, value))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed while its unit ran
                loop.call_soon_threadsafe(_settle_waiters, settled)

    def _alone(self, unit: _Unit, lock_fd: int | None) -> tuple[bool, Any]:
        try:
            return self._attempt([unit], lock_fd)[0]
        except Exception as exc:
            return False, exc

    def _attempt(
        self, group: list[_Unit], lock_fd: int | None, *, take_waiting: bool = False
    ) -> list[tuple[bool, Any]]:
        """One transaction for the group, retried from the start when another writer held on."""
        write = any(unit.write for unit in group)
        for attempt in range(MAX_RETRIES + 1):
            try:
                with _flocked(lock_fd if write or attempt > 0 else None):
                    if take_waiting and write and attempt == 0:
                        self._take_waiting(group)
                    return self._transaction(group, write or attempt > 0)
            except sa.exc.OperationalError as exc:
                if not _is_sqlite_busy(exc) or attempt == MAX_RETRIES:
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def _live_conn(self) -> Connection | None:
        """The thread's connection, unless it was never opened or can no longer be used."""
        conn = self._conn
        return None if conn is None or conn.invalidated or conn.closed else conn

    def _transaction(self, group: list[_Unit], write: bool) -> list[tuple[bool, Any]]:
        """Run the group's units in order, then commit them together.

        A unit's own exception is its answer, and whatever it changed is undone; a database
        error that spoils the transaction, or a failed COMMIT, propagates so the caller runs the
        group again.

        A group runs first without savepoints: each is two more statements per unit, and every
        statement lets the event loop take the GIL while the writer holds the lock that the
        other processes wait for (at saturation that cost a sixth of each unit's time under
        it). A unit that fails before changing anything (a bad token, a duplicate key refused)
        needs nothing undone. Only when one fails after changing something is the transaction
        rolled back and the group run again, each unit in a savepoint of its own.
        """
        try:
            return self._run_units(group, write, guarded=False)
        except _UndoNeeded:
            # Read again at the next group: units run here may change the schema and commit.
            self._schema = None
            return self._run_units(group, write, guarded=True)

    def _run_units(
        self, group: list[_Unit], write: bool, *, guarded: bool
    ) -> list[tuple[bool, Any]]:
        """One transaction for the group; ``guarded`` puts each unit in a savepoint."""
        outcomes: list[tuple[bool, Any]] = []
        lone = len(group) == 1
        live = self._live_conn()
        if live is None:
            live = self._conn = self._engine.connect()
            self._schema = None
        # A read that had to upgrade to a write is run again as a writer (BEGIN IMMEDIATE).
        conn = live.execution_options(kessai_write=write)
        # Savepoints and the schema's version go straight to the driver: bookkeeping, not the
        # unit's SQL.
        driver: Any = conn.connection.driver_connection
        # Unguarded, a failed unit must be shown to have changed nothing: no row (SQLite's count
        # of changed rows, triggers included) and no schema (its version number, read once per
        # connection rather than once per group: one statement less under the lock).
        checked = not (lone or guarded)
        with conn.begin():
            if checked and self._schema is None:
                self._schema = _schema_version(driver)
            for unit in group:
                if guarded and not lone:
                    driver.execute("SAVEPOINT kessai_unit")
                changes = driver.total_changes if checked else 0
                try:
                    value = unit.fn(conn)
                except sa.exc.OperationalError:
                    raise
                except BaseException as exc:
                    # Whatever its kind, a unit's exception is its caller's answer: one that
                    # escaped here would end this thread, and every caller would wait forever.
                    if lone:
                        conn.rollback()
                        return [(False, exc)]
                    if guarded:
                        driver.execute("ROLLBACK TO kessai_unit")
                        driver.execute("RELEASE kessai_unit")
                    elif driver.total_changes != changes or _schema_version(driver) != self._schema:
                        raise _UndoNeeded from exc
                    outcomes.append((False, exc))
                else:
                    if guarded and not lone:
                        driver.execute("RELEASE kessai_unit")
                    outcomes.append((True, value))
        return outcomes


class _UndoNeeded(Exception):
    """A unit of an unguarded group failed after changing something: run the group guarded."""


def _schema_version(driver: sqlite3.Connection) -> int:
    return int(driver.execute("PRAGMA schema_version").fetchone()[0])


class _WalFlush:
    """Makes the WAL durable after a group commits, once the writer lock is released.

    The connection commits with ``synchronous=NORMAL``: the WAL frames are written, not yet
    fsynced, inside the lock. This fsync, outside it, makes them durable before anybody learns
    of them; since an fsync covers every frame written before it, it also covers what other
    processes committed earlier. What it must cover:

    - a group that wrote (or whose connection counts changed rows: a reading unit that touched
      a session), so its callers are answered about a durable change;
    - a group that could see another process's commit not yet flushed by that process
      (``PRAGMA data_version`` moved), so nobody is told about a change that could be lost.

    The WAL's descriptor is opened once per connection and kept: the kernel reports a failed
    write-back to the descriptors open when it happened, and a fresh one would miss it. While
    the connection is open the WAL is never deleted (SQLite removes it with the last one).
    """

    def __init__(self, database_path: str) -> None:
        self._path = database_path + "-wal"
        self._folder = os.path.dirname(database_path) or "."
        self._fd: int | None = None
        # The connection this process flushed for, whether it has SQLite flush for itself, and
        # its data_version and changed-row count as they were at the last flush.
        self._driver: sqlite3.Connection | None = None
        self._sqlite_flushes = False
        self._seen: tuple[int, int] | None = None

    def flush_if_needed(self, driver: sqlite3.Connection | None, *, wrote: bool) -> None:
        """Flush unless nothing could have changed since the last flush (raises OSError)."""
        if driver is not self._driver:
            # A new connection: (re)open the WAL it writes, which may be a new file.
            self.close()
            if driver is None:
                return
            self._driver = driver
            # synchronous=FULL (a database whose WAL could not be set up): SQLite fsyncs in
            # every COMMIT itself. Unknown (the statement failed): flush here too, at worst twice.
            try:
                self._sqlite_flushes = driver.execute("PRAGMA synchronous").fetchone()[0] > 1
            except sqlite3.Error:
                self._sqlite_flushes = False
        if driver is None or self._sqlite_flushes:
            return
        try:
            seen: tuple[int, int] | None = (
                driver.execute("PRAGMA data_version").fetchone()[0],
                driver.total_changes,
            )
        except sqlite3.Error:
            seen = None  # unknown: flush, and again next time
        if not wrote and seen is not None and seen == self._seen:
            return
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            # The file's name must be durable too: SQLite fsyncs the folder of a WAL it creates
            # only at its first own fsync, which with synchronous=NORMAL may come much later.
            folder = os.open(self._folder, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        os.fsync(self._fd)
        self._seen = seen

    def close(self) -> None:
        """Close the WAL's descriptor (the connection went away, or the thread ends)."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._driver = None
        self._seen = None


class _Checkpointer:
    """Copies the WAL back into the database file on a thread of its own, outside the write lock.

    SQLite checkpoints inside the COMMIT that fills the WAL past its threshold (1,000 pages by
    default): at 1,000 payments/s that was about ten times a second, each keeping the write lock
    3-4 ms longer while the other processes' writers waited for it. A PASSIVE checkpoint needs no
    write lock and waits for nobody, so here it runs shortly after writes, on its own connection,
    while writers go on committing; the committing connection checkpoints only past
    ``WAL_BACKSTOP_PAGES``, should this thread fall far behind. Committed data is durable in the
    WAL either way: a checkpoint only moves it.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._wanted = threading.Event()
        # Writes said so far (only the writer thread counts them).
        self._writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kessai-checkpoint", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def poke(self) -> None:
        """Say that a write committed."""
        self._writes += 1
        self._wanted.set()

    def stop(self) -> None:
        """End the thread, once it has checkpointed the writes said since its last checkpoint.

        That last checkpoint is this process's to make: left to the next process that writes, it
        would land in the middle of that process's work (after a `kessai sandbox code` run of
        thousands of codes, a checkpoint of 40-90 ms of disk writes while the gateway serves).
        """
        self._stop.set()
        self._wanted.set()
        self._thread.join()

    def _loop(self) -> None:
        name_os_thread(OS_THREAD_NAMES["checkpointer"])
        checkpointed = 0
        while True:
            self._wanted.wait()
            # Let commits accumulate: one checkpoint then moves many of them (a stop cuts it short).
            self._stop.wait(CHECKPOINT_PAUSE_SECONDS)
            self._wanted.clear()
            # ``stop`` and ``poke`` set their own state before ``_wanted``: whatever came before
            # the clear is seen here, and whatever came after wakes the next wait.
            stopping = self._stop.is_set()
            writes = self._writes
            if writes != checkpointed:
                checkpointed = writes
                # An error: another process's checkpointer is at work (busy), or the file is
                # going away at shutdown. The next write asks again.
                with contextlib.suppress(sqlite3.Error):
                    self._checkpoint()
            if stopping:
                return

    def _checkpoint(self) -> None:
        # A connection of its own each time (a few a second at most): one kept open from before
        # the file was switched to WAL would go on answering "not in WAL mode".
        # mode=rw: a database file removed meanwhile is not created again, empty.
        uri = f"{Path(self._path).absolute().as_uri()}?mode=rw"
        with contextlib.closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as conn:
            # FULL: the checkpoint fsyncs the WAL before copying and the database file after.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _send_deferred(conn: Connection, *_: Any) -> None:
    """Send a unit's deferred writes before SQLAlchemy runs another of its statements."""
    hot.flush(conn)


@contextlib.contextmanager
def _flocked(fd: int | None) -> Iterator[None]:
    """Hold the cross-process writer lock (a no-op for readers and in-memory databases)."""
    if fd is None:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


_LOCK_SUFFIX: Final = "-writer.lock"


def _lock_path(url: str) -> str | None:
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database + _LOCK_SUFFIX


def _create_owner_only(path: str) -> None:
    """Create an empty database file readable by its owner alone; an existing one is left as is.

    An empty file is a valid new SQLite database. An existing file keeps the mode its operator
    gave it (a backup user in its group, say); docs/deploy.md says what to give it.
    """
    with contextlib.suppress(FileExistsError):  # not opened at all: it may be read-only
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class _PgBatches:
    """Commits the last statements of many PostgreSQL units together: one round trip for many.

    A unit that began no transaction ends with one statement carrying all its writes
    (``hot.take``). The units whose statements are ready in the same turn of the event loop hand
    them here, and those with the same text go to PostgreSQL as one pipelined batch, in a
    transaction of its own (``hot.send_many``): one round trip, one server wake-up and one
    COMMIT instead of one each. Should the batch fail, none of it was applied, and each
    statement is sent again alone, so that each unit gets its own answer: one statement's error
    (a racing writer's change, a duplicate key) fails its unit only. A connection lost while a
    batch was sent fails each unit whose statement went: its COMMIT may have been applied.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._waiting: dict[str, list[_Waiting]] = {}
        self._scheduled = False
        # Batches sent, so that the bench can tell their size.
        self.batches = 0
        self.statements = 0
        # The batches being sent: the event loop keeps only weak references to its tasks.
        self._sending: set[asyncio.Task[None]] = set()

    def send(self, writes: hot.Writes) -> asyncio.Future[None]:
        """Queue ``writes``; the future settles once they are committed, or with their error."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.setdefault(writes.sql, []).append(_Waiting(writes, done))
        if not self._scheduled:
            # Two turns of the event loop later: the units whose statements become ready
            # meanwhile join the batch (twice as many as after one turn, under load, and more
            # payments a second; after three, fewer).
            self._scheduled = True
            loop.call_soon(loop.call_soon, self._drain)
        return done

    def _drain(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, {}
        for sql, queued in waiting.items():
            for start in range(0, len(queued), hot.BATCH_MAX):
                chunk = queued[start : start + hot.BATCH_MAX]
                task = asyncio.ensure_future(self._send(sql, chunk))
                self._sending.add(task)
                task.add_done_callback(functools.partial(self._sent, chunk))

    def _sent(self, chunk: list[_Waiting], task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if task.cancelled():
            # The loop is closing, perhaps before the batch even started: whether it committed
            # is unknown, and its units' callers are not left waiting.
            for entry in chunk:
                entry.done.cancel()

    async def _send(self, sql: str, queued: list[_Waiting]) -> None:
        # A unit whose caller left before its writes were sent is not applied, as a SQLite unit
        # whose caller left before it ran is not run.
        batch = [entry for entry in queued if not entry.done.done()]
        if not batch:
            return
        self.batches += 1
        self.statements += len(batch)
        sync_engine = self._engine.sync_engine

        def send() -> list[BaseException | None]:
            try:
                conn = sync_engine.connect()
            except sa.exc.DBAPIError as exc:
                raise _Unsent("no connection to send this unit's writes on") from exc
            with conn:
                # Only units on asyncpg's fast path take their writes off (``hot.began``).
                if len(batch) > 1:
                    try:
                        hot.send_many(conn, sql, [entry.writes.values for entry in batch])
                        return [None] * len(batch)
                    except sa.exc.DBAPIError as exc:
                        if exc.connection_invalidated:
                            raise
                        # Nothing of the batch was applied: each statement goes alone.
                return _each_alone(conn, batch)

        try:
            outcomes: list[BaseException | None] = await greenlet_spawn(send)
        except Exception as exc:
            outcomes = [exc] * len(batch)
        for entry, outcome in zip(batch, outcomes, strict=True):
            if entry.done.done():  # its caller left
                continue
            if outcome is None:
                entry.done.set_result(None)
            else:
                entry.done.set_exception(outcome)


@dataclass(slots=True)
class _Waiting:
    writes: hot.Writes
    done: asyncio.Future[None]


class _Unsent(Exception):
    """A unit's last statement was never sent (its batch's connection was lost before it)."""


def _each_alone(conn: Connection, batch: list[_Waiting]) -> list[BaseException | None]:
    """Send each statement of ``batch`` alone: each unit's outcome, None for a success."""
    outcomes: list[BaseException | None] = []
    for entry in batch:
        try:
            hot.send_one(conn, entry.writes)
        except sa.exc.DBAPIError as exc:
            outcomes.append(entry.writes.failed(exc))
            if exc.connection_invalidated:
                # The statements after it were not sent: their units may be run again.
                unsent = _Unsent("the connection was lost before this unit's writes were sent")
                unsent.__cause__ = exc
                outcomes.extend([unsent] * (len(batch) - len(outcomes)))
                break
        else:
            outcomes.append(None)
    return outcomes


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


def _configure_sqlite(dbapi_connection: sqlite3.Connection, backstop_pages: int | None) -> None:
    cursor = dbapi_connection.cursor()
    if backstop_pages is not None:
        cursor.execute(f"PRAGMA wal_autocheckpoint={backstop_pages}")
    # WAL lets readers proceed during a write.
    mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    # A file database in WAL mode commits without an fsync (NORMAL): its writer fsyncs the WAL
    # once it has released the write lock, before answering (``_WalFlush``). Otherwise every
    # COMMIT fsyncs (FULL). Either way a commit is on disk before anybody is told of it.
    early = backstop_pages is not None and str(mode).lower() == "wal"
    cursor.execute(f"PRAGMA synchronous={'NORMAL' if early else 'FULL'}")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_sqlite(conn: Connection) -> None:
    # A writing unit takes the write lock up front (BEGIN IMMEDIATE), so it waits on busy_timeout
    # instead of failing later when it would upgrade a read lock.
    write = conn.get_execution_options().get("kessai_write", True)
    statement = "BEGIN IMMEDIATE" if write else "BEGIN"
    # Straight to the driver: it runs for every unit, and SQLAlchemy's statement machinery
    # cost more than SQLite's own work here. Its errors still surface as SQLAlchemy's.
    try:
        conn.connection.driver_connection.execute(statement)  # type: ignore[union-attr]
    except sqlite3.Error as exc:
        raise sa.exc.DBAPIError.instance(
            statement, (), exc, sqlite3.Error, dialect=conn.dialect
        ) from exc


def _is_sqlite_busy(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text
