"""Hot-path statements: written once with SQLAlchemy, run straight through the database driver.

A ``Hot`` statement is an ordinary SQLAlchemy Core statement with bind parameters. SQLAlchemy
compiles it once per database (and per set of parameter names), and the compiled SQL then runs on
the DBAPI connection of the unit's own transaction, with the same type conversions SQLAlchemy would
apply (UTC timestamps, booleans, scalar column defaults). That skips SQLAlchemy's per-call
execution machinery, which cost several times more than SQLite itself on a REQUEST, and about as
much again as asyncpg on PostgreSQL, while every statement keeps a single definition for both
databases.

- SQLite: the ``sqlite3`` connection; timestamps are written and read as SQLAlchemy's SQLite
  dialect stores them (UTC text), by one C call each way.
- PostgreSQL: asyncpg's own prepared statements, on the asyncpg connection under the unit's
  SQLAlchemy connection. The transaction is the one SQLAlchemy's asyncpg adapter starts, commits
  and rolls back (started here as the adapter's cursor would, but only on the unit's first write
  or locking read: plain reads before it need none, see ``began``), and asyncpg's errors are
  translated by that adapter. Going around the adapter's cursor saves its
  per-statement work (a lock, the column description, a regular expression for the row count):
  about 30 µs of a statement's 90 µs of CPU here. A SQLAlchemy release whose adapter lacks what
  this uses gets the adapter's cursor instead. An INSERT returns its new primary key
  (``RETURNING``), as SQLAlchemy compiles it.

An INSERT whose answer the unit does not read may be deferred (``Hot.defer``). On SQLite it runs
at once: a statement there costs no round trip. On PostgreSQL it waits, and the unit's deferred
INSERTs travel together as one statement, each but the last as a data-modifying ``WITH`` clause,
just before the unit's next other statement or its COMMIT. Every statement the unit runs after
them, by ``Hot`` or by SQLAlchemy, thus still sees their rows, and one failing fails the unit as
before, only later. The clauses of one statement run in no defined order, so a second INSERT into
a table already waiting sends the waiting ones first: ids keep the order of the unit's writes. An
UPDATE may be deferred too, when it says how many rows it must change: the statement then fails
as a whole if it changes another number (``StaleRows``). A sandbox REQUEST on PostgreSQL spends
its code and writes its charge, its payment, its audit entries and its webhook event with one
round trip instead of five.

Driver errors are raised as SQLAlchemy's (``IntegrityError`` for a duplicate key, and so on), and a
PostgreSQL connection found dead is invalidated as SQLAlchemy would do it, so callers and
``Database`` handle one kind of error.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import weakref
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util.concurrency import await_only

from kessai.adapters.schema import UTCDateTime

T = TypeVar("T")

_Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    # Values of columns an INSERT or UPDATE was not given but that have a scalar default.
    defaults: Mapping[str, Any]
    # (position, conversion) of each parameter that needs one.
    converts: tuple[tuple[int, Callable[[Any], Any]], ...]
    # The row type of what the statement reads, with the ``_make`` of a named tuple.
    row: Any
    # (position, conversion) of each column read that needs one: the others are kept as read.
    results: tuple[tuple[int, Callable[[Any], Any]], ...]
    # PostgreSQL: the INSERT returns its new primary key (SQLite has ``lastrowid``).
    returns_pk: bool = False
    # PostgreSQL: a plain SELECT that ``SharedReads`` may send with other units' (see there).
    shareable: bool = False


# The last timestamp written and its text: a unit writes the same "now" many times over.
_last_written: tuple[datetime | None, str | None] = (None, None)


def _utc_text(value: datetime | None) -> str | None:
    """A timestamp as SQLAlchemy's SQLite dialect stores it: UTC, naive, to the microsecond."""
    global _last_written  # noqa: PLW0603 - a one-entry cache; replacing the tuple is atomic
    if value is None:
        return None
    last, text = _last_written
    if value is last:
        return text
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
    # The text of an aware UTC timestamp without its "+00:00".
    text = value.isoformat(" ", "microseconds")[:-6]
    _last_written = (value, text)
    return text


def _utc_datetime(value: str) -> datetime:
    """A stored timestamp read back, aware and in UTC."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


class Hot:
    """A prebuilt statement that runs without SQLAlchemy's per-call execution overhead."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        # Compilations by database and by the names of the parameters given, in their order (an
        # INSERT or UPDATE sets exactly the columns it is given).
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}
        # What the statement is, decided once rather than on every run: a plain SELECT (no FOR
        # UPDATE) needs no transaction begun for it on PostgreSQL; ``defer`` takes an INSERT, or
        # an UPDATE without RETURNING whose row count is checked, and groups them by table.
        self._reads_only = isinstance(statement, sa.Select) and statement._for_update_arg is None
        self._update = isinstance(statement, sa.Update)
        self._returns = bool(getattr(statement, "_returning", ()))
        writes = isinstance(statement, (sa.Insert, sa.Update))
        table = getattr(statement, "table", None)
        self._table = str(getattr(table, "name", table)) if writes else None

    def _compile(self, conn: Connection, keys: tuple[str, ...]) -> _Compiled:
        dialect = conn.dialect
        sqlite = dialect.name == "sqlite"
        compiled = self.statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
        assert isinstance(compiled, SQLCompiler)
        names = tuple(compiled.positiontup or ())
        # Each type's own conversion for this database does the work, except for timestamps on
        # SQLite, written by one C call in exactly the text SQLAlchemy writes.
        binds = tuple(
            _utc_text
            if sqlite and isinstance(compiled.binds[name].type, UTCDateTime)
            else compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in names
        )
        defaults: dict[str, Any] = {}
        table = getattr(self.statement, "table", None)
        for name in names:
            if name in keys:
                continue
            default = table.c[name].default if table is not None and name in table.c else None
            if default is not None and default.is_scalar:
                # A column the INSERT or UPDATE was not given: its default, as SQLAlchemy does.
                defaults[name] = default.arg
                continue
            bind = compiled.binds[name]
            if bind.required or bind.callable is not None:
                raise ValueError(f"no value and no scalar default for {name}")
            # A literal written into the statement (``status == "PENDING"``).
            defaults[name] = bind.value
        row: Any = None
        results: tuple[tuple[int, Callable[[Any], Any]], ...] = ()
        # What a SELECT selects, or what an INSERT/UPDATE … RETURNING returns.
        columns = list(
            getattr(self.statement, "selected_columns", None)
            or getattr(self.statement, "exported_columns", None)
            or ()
        )
        if columns:
            row = namedtuple("Row", [c.key for c in columns])  # type: ignore[misc,no-redef]
            processors = (
                _utc_datetime
                if sqlite and isinstance(c.type, UTCDateTime)
                else _result_processor(c, dialect)
                for c in columns
            )
            results = tuple((i, proc) for i, proc in enumerate(processors) if proc is not None)
        converts = tuple((i, proc) for i, proc in enumerate(binds) if proc is not None)
        # An INSERT on PostgreSQL is compiled with ``RETURNING`` its primary key.
        returns_pk = not sqlite and bool(getattr(compiled, "implicit_returning", None))
        sql = str(compiled)
        shareable = (
            not sqlite
            and self._reads_only
            and sql.startswith("SELECT ")
            and not sql.startswith("SELECT DISTINCT")
        )
        entry = _Compiled(sql, names, defaults, converts, row, results, returns_pk, shareable)
        self._compiled[dialect.name, keys] = entry
        return entry

    def _bound(
        self, conn: Connection, params: Mapping[str, Any] | None
    ) -> tuple[_Compiled, list[Any]]:
        """The compiled form for ``params``' names and their values in its order, converted."""
        params = params or {}
        # Callers give their parameters in a fixed order, so the order itself is the key.
        keys = tuple(params)
        compiled = self._compiled.get((conn.dialect.name, keys)) or self._compile(conn, keys)
        if compiled.defaults:
            params = {**compiled.defaults, **params}
        return compiled, _converted(compiled, [params[name] for name in compiled.names])

    def _bound_ordered(
        self, conn: Connection, keys: tuple[str, ...], values: list[Any]
    ) -> tuple[_Compiled, list[Any]]:
        """As ``_bound``, for values given in the order of ``keys`` (converted in place)."""
        if len(values) != len(keys):
            raise ValueError(f"{len(values)} values for {len(keys)} parameters")
        compiled = self._compiled.get((conn.dialect.name, keys)) or self._compile(conn, keys)
        if compiled.defaults or compiled.names != keys:
            return self._bound(conn, dict(zip(keys, values, strict=True)))
        return compiled, _converted(compiled, values)

    def run(self, conn: Connection, params: Mapping[str, Any] | None = None) -> HotResult:
        """Execute with ``params`` inside the unit's transaction."""
        return self._execute(conn, *self._bound(conn, params))

    def run_ordered(self, conn: Connection, keys: tuple[str, ...], values: list[Any]) -> HotResult:
        """Execute with the values of the parameters ``keys``, given in that order.

        For a caller that binds many parameters at once (a multi-row INSERT): no mapping is
        built only to be read back in the statement's order. ``values`` is converted in place.
        """
        return self._execute(conn, *self._bound_ordered(conn, keys, values))

    def defer(
        self,
        conn: Connection,
        params: Mapping[str, Any] | None = None,
        *,
        expect_rows: int | None = None,
    ) -> None:
        """Run this INSERT in the unit, on PostgreSQL with the unit's other deferred writes.

        For an INSERT whose answer (its new key, its row count) the unit does not read. See the
        module's description for when it is sent. An UPDATE may be deferred too when the number
        of rows it must change is known (``expect_rows``, a guard against a racing writer): if it
        changes another number, ``StaleRows`` is raised and nothing the statement carried is
        written.
        """
        self._defer(conn, *self._bound(conn, params), expect_rows)

    def defer_ordered(self, conn: Connection, keys: tuple[str, ...], values: list[Any]) -> None:
        """``defer`` with the values of the parameters ``keys``, as ``run_ordered`` takes them."""
        self._defer(conn, *self._bound_ordered(conn, keys, values), None)

    def _defer(
        self, conn: Connection, compiled: _Compiled, values: list[Any], expect_rows: int | None
    ) -> None:
        table = self._table
        if table is None or (self._update and expect_rows is None):
            # A change that nobody checks would go unnoticed if a racing writer made it miss.
            raise TypeError("only an INSERT, or an UPDATE with expect_rows, can be deferred")
        if self._update and self._returns:
            raise TypeError("a deferred UPDATE returns nothing: its row count is checked")
        if conn.dialect.name == "sqlite":
            changed = self._execute(conn, compiled, values).rowcount
            if expect_rows is not None and changed != expect_rows:
                raise StaleRows(f"{changed} rows changed where {expect_rows} were expected")
            return
        waiting = _deferred.get(conn)
        if waiting is None:
            waiting = _deferred[conn] = []
        elif (
            len(waiting) >= DEFERRED_MAX
            or sum(len(entry.values) for entry in waiting) + len(values) > DEFERRED_MAX_PARAMETERS
            # The clauses of one statement run in no defined order, and none sees what another
            # wrote: two INSERTs into one table would take their ids (an audit trail's order) in
            # either, and an UPDATE would miss the rows a neighbour inserted.
            or any(table == entry.table for entry in waiting)
        ):
            flush(conn)
            waiting = _deferred[conn] = []
        waiting.append(_Deferred(table, compiled.sql, values, expect_rows))

    def _execute(self, conn: Connection, compiled: _Compiled, values: list[Any]) -> HotResult:
        """Execute with ``values``, converted and in the statement's order."""
        dialect = conn.dialect
        if dialect.name != "sqlite":
            if conn in _deferred:
                flush(conn)
            if compiled.shareable:
                reads = _shared_reads.get(conn)
                if reads is not None and not began(conn):
                    return HotResult(reads.fetch(conn, compiled.sql, values), compiled)
            return HotResult(
                _run_on_postgresql(conn, compiled.sql, values, begin=not self._reads_only),
                compiled,
            )
        driver: Any = conn.connection.driver_connection
        try:
            cursor = driver.execute(compiled.sql, values)
        except sqlite3.Error as exc:
            # Callers catch SQLAlchemy's exceptions (a duplicate key, a busy database), as for
            # every other statement.
            raise sa.exc.DBAPIError.instance(
                compiled.sql, values, exc, sqlite3.Error, dialect=dialect
            ) from exc
        return HotResult(cursor, compiled)


def _converted(compiled: _Compiled, values: list[Any]) -> list[Any]:
    """``values``, in the statement's order, converted in place for the database."""
    for index, convert in compiled.converts:
        values[index] = convert(values[index])
    return values


class StaleRows(Exception):
    """A deferred UPDATE changed another number of rows than expected: a racing writer won.

    Nothing its statement carried was written; the unit is rolled back, to be run again.
    """


@dataclass(frozen=True, slots=True)
class _Deferred:
    table: str
    sql: str
    values: list[Any]
    # The number of rows an UPDATE must change (None for an INSERT).
    expect_rows: int | None


# PostgreSQL: the writes a unit deferred and has not sent, by the unit's connection, in order.
_deferred: weakref.WeakKeyDictionary[Connection, list[_Deferred]] = weakref.WeakKeyDictionary()
# What PostgreSQL answers for the division by zero a row count check makes (``_together``).
_CHECK_FAILED: Final = "22012"
# Deferred writes sent as one statement at most, and bound parameters in it: a unit that defers
# more (a sweep writing many audit entries) sends them in several.
DEFERRED_MAX: Final = 8
DEFERRED_MAX_PARAMETERS: Final = 2000
_PLACEHOLDER = re.compile(r"\$(\d+)")


def flush(conn: Connection, *, begin: bool = True) -> None:
    """Send the unit's deferred writes now, as one statement (PostgreSQL; nothing to do else).

    ``Database`` calls it at the unit's end, ``Hot`` before the unit's next statement of its own,
    and a listener on the engine before SQLAlchemy's. Without ``begin``, in a unit that has begun
    no transaction, the statement is sent alone: one statement commits or fails as a whole.
    """
    final = take(conn)
    if final is None:
        return
    try:
        _run_on_postgresql(conn, final.sql, final.values, begin=begin)
    except sa.exc.DBAPIError as exc:
        raise final.failed(exc) from exc


@dataclass(frozen=True, slots=True)
class Writes:
    """A unit's deferred writes as the one statement that carries them, not yet sent."""

    sql: str
    values: list[Any]
    # Whether the statement checks an UPDATE's row count (a division by zero when it differs).
    checked: bool

    def failed(self, exc: sa.exc.DBAPIError) -> Exception:
        """The error a unit sees when this statement failed with ``exc``."""
        if self.checked and sqlstate(exc.orig) == _CHECK_FAILED:
            stale = StaleRows("a deferred UPDATE did not change the rows expected")
            stale.__cause__ = exc
            return stale
        return exc


def take(conn: Connection) -> Writes | None:
    """The unit's deferred writes as one statement, taken off ``conn`` unsent (None: none)."""
    waiting = _deferred.pop(conn, None)
    if not waiting:
        return None
    checked = any(entry.expect_rows is not None for entry in waiting)
    if len(waiting) == 1 and not checked:
        return Writes(waiting[0].sql, waiting[0].values, False)
    sql = _together(
        tuple(entry.sql for entry in waiting),
        tuple(len(entry.values) for entry in waiting),
        tuple(entry.expect_rows for entry in waiting),
    )
    return Writes(sql, [value for entry in waiting for value in entry.values], checked)


def send_one(conn: Connection, writes: Writes) -> None:
    """Send one unit's writes alone, outside any transaction (raises the driver's error)."""
    _run_on_postgresql(conn, writes.sql, writes.values, begin=False)


def send_many(conn: Connection, sql: str, values: list[list[Any]]) -> None:
    """Execute ``sql`` once per list of ``values``, pipelined, in one transaction of its own.

    PostgreSQL, on a connection in no transaction: asyncpg sends every execution, then one Sync,
    so either all of them commit or none does.
    """

    def many(statement: Any) -> None:
        await_only(statement.executemany(values))

    _on_prepared(conn, sql, values, many, begin=False)


# Reads of units run on an event loop: the loop's ``SharedReads``, by the unit's connection.
_shared_reads: weakref.WeakKeyDictionary[Connection, SharedReads] = weakref.WeakKeyDictionary()
# At most this many units' statements go to PostgreSQL in one batch, reads (``SharedReads``) or
# writes (``Database``'s): a batch runs on one server process, one statement after the other,
# so a longer one would keep the others waiting for it.
BATCH_MAX: Final = 16


def share_reads(conn: Connection, reads: SharedReads) -> None:
    """Let the plain reads of the unit on ``conn`` go with other units' (``SharedReads``)."""
    _shared_reads[conn] = reads


class _ReadAlone(Exception):
    """The batch that was to carry a unit's read failed or was abandoned: it reads alone."""


@dataclass(slots=True)
class _SharedRead:
    values: list[Any]
    # Settled with the unit's rows by the unit that sends the batch (None for that unit).
    done: asyncio.Future[list[Any]] | None


class SharedReads:
    """Sends the same plain SELECT of several units in one round trip (PostgreSQL).

    A unit's plain reads before it begins a transaction are statements of their own, each
    reading its own snapshot under READ COMMITTED. When several units on an event loop make the
    same one at about the same moment, the first of them waits two turns of the loop, then sends
    every one queued meanwhile on its own connection: the executions of one prepared statement,
    pipelined, each with its unit's number as an extra first column so that the rows can be
    handed back to their units (asyncpg's ``fetchmany``). Each execution still takes its own
    snapshot. A unit's read goes alone, on its own connection, should the batch fail or its
    sender leave before sending it.
    """

    def __init__(self) -> None:
        self._open: dict[str, list[_SharedRead]] = {}
        # Batches sent and reads in them, so that the bench can tell their size.
        self.batches = 0
        self.reads = 0

    def fetch(self, conn: Connection, sql: str, values: list[Any]) -> Any:
        """The rows of ``sql`` with ``values``, read with other units' if they come together."""
        queued = self._open.get(sql)
        if queued is not None and len(queued) < BATCH_MAX:
            done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            queued.append(_SharedRead(values, done))
            try:
                mine = await_only(done)
            except _ReadAlone:
                return _run_on_postgresql(conn, sql, values, begin=False)
            return _Fetched(mine, f"SELECT {len(mine)}")
        queued = self._open[sql] = [_SharedRead(values, None)]
        try:
            await_only(_two_turns())
            self._close(sql, queued)
            rows = self._send(conn, sql, queued) if len(queued) > 1 else None
        except BaseException:
            # Its sender's unit failed or was cancelled: the others read alone.
            self._close(sql, queued)
            _read_alone(queued)
            raise
        if rows is None:
            _read_alone(queued)
            return _run_on_postgresql(conn, sql, values, begin=False)
        for read, theirs in zip(queued[1:], rows[1:], strict=True):
            if read.done is not None and not read.done.done():
                read.done.set_result(theirs)
        return _Fetched(rows[0], f"SELECT {len(rows[0])}")

    def _close(self, sql: str, queued: list[_SharedRead]) -> None:
        """Take no more reads into ``queued``.

        A full batch was already replaced by the next one (``fetch``): only one's own is removed.
        """
        if self._open.get(sql) is queued:
            del self._open[sql]

    def _send(
        self, conn: Connection, sql: str, queued: list[_SharedRead]
    ) -> list[list[Any]] | None:
        """Each queued read's rows, read in one batch; None if the batch failed harmlessly.

        A connection lost meanwhile raises: the sender's unit fails (and may run again), the
        others read alone.
        """
        self.batches += 1
        self.reads += len(queued)
        arguments = [[*read.values, number] for number, read in enumerate(queued)]

        def many(statement: Any) -> list[Any]:
            return await_only(statement.fetchmany(arguments))

        try:
            records = _on_prepared(
                conn, _numbered(sql, len(queued[0].values)), [], many, begin=False
            )
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            return None
        rows: list[list[Any]] = [[] for _ in queued]
        for record in records:
            values = tuple(record)
            rows[values[0]].append(values[1:])
        return rows


def _read_alone(queued: list[_SharedRead]) -> None:
    """Tell the units waiting on ``queued`` that their reads were not made for them."""
    for read in queued:
        if read.done is not None and not read.done.done():
            read.done.set_exception(_ReadAlone())


async def _two_turns() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


@lru_cache(maxsize=256)
def _numbered(sql: str, count: int) -> str:
    """``sql`` (a plain SELECT) with one more parameter, read back as its first column."""
    return f"SELECT ${count + 1}::int4 AS kessai_read, {sql.removeprefix('SELECT ')}"


def began(conn: Connection) -> bool:
    """Whether the unit on ``conn`` (PostgreSQL) has begun a transaction.

    A unit's plain reads run before any BEGIN (``Hot``): under READ COMMITTED each statement
    reads its own snapshot whether in a transaction or not, and a plain SELECT holds no row lock
    for a transaction to keep. The first write, locking read or statement run by SQLAlchemy
    begins it. An adapter without the fast path is taken to have begun one.
    """
    adapted: Any = conn.connection.dbapi_connection
    return not _fast_path(adapted) or adapted._transaction is not None


@lru_cache(maxsize=256)
def _together(
    statements: tuple[str, ...],
    counts: tuple[int, ...],
    expected: tuple[int | None, ...],
) -> str:
    """Several writes as one statement: each but the last a ``WITH`` clause.

    Each statement's ``$n`` placeholders are renumbered after the ones before it. SQLAlchemy's
    writes bind every value, so ``$`` appears in their text as a placeholder only; the count
    check below refuses a statement where that would not hold.

    With an ``expected`` row count (an UPDATE's; None for the others), every write is a clause and
    the statement ends with a SELECT that divides by zero where a count differs: the error fails
    the whole statement, so nothing it carried is written, even with no transaction around it.
    """
    parts: list[str] = []
    offset = 0
    for sql, count in zip(statements, counts, strict=True):
        numbers = {int(n) for n in _PLACEHOLDER.findall(sql)}
        if numbers != set(range(1, count + 1)):
            raise ValueError(f"cannot combine a statement with {count} values: {sql}")
        parts.append(_renumbered(sql, offset))
        offset += count
    if all(rows is None for rows in expected):
        clauses = ", ".join(f"kessai_w{i} AS ({part})" for i, part in enumerate(parts[:-1]))
        return f"WITH {clauses} {parts[-1]}"
    checks = ", ".join(
        # Only integers and the clauses' own names are written into the text.
        f"1 / (SELECT (count(*) = {int(rows)})::int FROM kessai_w{i})"  # noqa: S608
        for i, rows in enumerate(expected)
        if rows is not None
    )
    clauses = ", ".join(
        f"kessai_w{i} AS ({part}{'' if rows is None else ' RETURNING 1'})"
        for i, (part, rows) in enumerate(zip(parts, expected, strict=True))
    )
    return f"WITH {clauses} SELECT {checks}"


def _renumbered(sql: str, offset: int) -> str:
    """``sql`` with each placeholder ``$n`` turned into ``$(n + offset)``."""

    def shifted(match: re.Match[str]) -> str:
        return f"${int(match[1]) + offset}"

    return _PLACEHOLDER.sub(shifted, sql)


# asyncpg's prepared statements, by asyncpg connection and then by SQL text: a statement is
# prepared on a connection's first use of it, and a connection's are forgotten with it, when it is
# found dead, or when the server refuses one as stale (after a schema change): they are then
# prepared anew.
_prepared: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
# SQLSTATEs after which a connection's prepared statements are prepared anew: a plan whose result
# no longer matches the schema (feature_not_supported, as PostgreSQL reports it) and a statement
# the server does not know (invalid_sql_statement_name). A duplicate key and the like keep them.
_STALE_STATEMENT = frozenset({"0A000", "26000"})


def sqlstate(error: BaseException | None) -> str | None:
    """The SQLSTATE of a PostgreSQL driver's error, or of the driver error it was raised from.

    ``error`` is a DBAPI error (SQLAlchemy's ``DBAPIError.orig``): asyncpg's adapter keeps the
    code as ``sqlstate``, psycopg's as ``pgcode``.
    """
    for candidate in (error, getattr(error, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def _fast_path(adapted: Any) -> bool:
    """Whether SQLAlchemy's asyncpg adapter has what ``_run_on_postgresql`` uses of it."""
    return hasattr(adapted, "_start_transaction")


class _Fetched:
    """What a statement run on asyncpg answered, with the DBAPI cursor's calls the hot path uses."""

    __slots__ = ("_next", "_rows", "_status")

    def __init__(self, rows: list[Any], status: str | None) -> None:
        self._rows = rows
        self._next = 0
        self._status = status or ""

    def fetchone(self) -> Any:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        rows = self._rows[self._next :]
        self._next = len(self._rows)
        return rows

    @property
    def rowcount(self) -> int:
        # The command tag ends with the count: "UPDATE 1", "INSERT 0 1", "SELECT 3".
        count = self._status.rpartition(" ")[2]
        return int(count) if count.isdigit() else -1


def _run_on_postgresql(conn: Connection, sql: str, values: list[Any], *, begin: bool = True) -> Any:
    """Execute on the asyncpg connection of the unit, from its greenlet.

    ``begin``: begin the unit's transaction first, unless it has been (see ``began``).
    """
    if not _fast_path(conn.connection.dbapi_connection):
        return _run_on_dbapi(conn, sql, values)

    def fetched(statement: Any) -> _Fetched:
        rows = await_only(statement.fetch(*values))
        return _Fetched(rows, statement.get_statusmsg())

    return _on_prepared(conn, sql, values, fetched, begin=begin)


def _on_prepared(
    conn: Connection,
    sql: str,
    values: list[Any],
    call: Callable[[Any], T],
    *,
    begin: bool,
) -> T:
    """``call`` with the connection's prepared statement for ``sql``, with SQLAlchemy's errors.

    ``begin``: begin the unit's transaction first, unless it has been (see ``began``).
    """
    adapted: Any = conn.connection.dbapi_connection
    driver: Any = conn.connection.driver_connection
    dialect = conn.dialect
    try:
        try:
            if begin and adapted._transaction is None:
                # BEGIN, with the isolation level the engine was given; the adapter keeps the
                # transaction, and SQLAlchemy commits or rolls it back with the unit.
                await_only(adapted._start_transaction())
            statements = _prepared.get(driver)
            if statements is None:
                statements = _prepared[driver] = {}
            statement = statements.get(sql)
            if statement is None:
                statement = statements[sql] = await_only(driver.prepare(sql))
            return call(statement)
        except dialect.loaded_dbapi.Error:
            raise
        except Exception as error:  # asyncpg's own: the adapter raises its DBAPI error for it
            adapted._handle_exception(error)
            raise
    except dialect.loaded_dbapi.Error as exc:
        gone = dialect.is_disconnect(exc, adapted, None)
        if gone or sqlstate(exc) in _STALE_STATEMENT:
            _prepared.pop(driver, None)
        raise _driver_error(conn, sql, values, exc, gone=gone) from exc


def _run_on_dbapi(conn: Connection, sql: str, values: list[Any]) -> Any:
    """Execute on a DBAPI cursor of the unit's connection (PostgreSQL through asyncpg)."""
    dialect = conn.dialect
    dbapi_connection: Any = conn.connection.dbapi_connection
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql, values)
    except dialect.loaded_dbapi.Error as exc:
        gone = dialect.is_disconnect(exc, dbapi_connection, cursor)
        raise _driver_error(conn, sql, values, exc, gone=gone) from exc
    return cursor


def _driver_error(
    conn: Connection, sql: str, values: list[Any], error: Exception, *, gone: bool
) -> sa.exc.StatementError:
    """SQLAlchemy's error for a DBAPI error, the connection invalidated first if it is dead.

    As SQLAlchemy's own execution does: a connection found dead is invalidated, so that the pool
    never hands it out again and ``Database`` may run the unit anew.
    """
    dialect = conn.dialect
    if gone:
        conn.invalidate(error)
    return sa.exc.DBAPIError.instance(
        sql,
        values,
        error,
        dialect.loaded_dbapi.Error,
        connection_invalidated=gone,
        dialect=dialect,
    )


def _result_processor(column: Any, dialect: sa.Dialect) -> _Processor:
    """The conversion SQLAlchemy applies to a column read back, decided before any execution.

    SQLAlchemy hands a type's processor the driver's type code from the cursor; a ``Hot``
    statement chooses it at compile time, without one. That is exact for the types the schema
    reads (text, integers, booleans, timestamps, JSON), whose conversion never depends on the
    code. A type whose does (``Numeric`` and ``Float`` on asyncpg) is refused here, on the
    statement's first run, rather than read with a wrong conversion.
    """
    try:
        return column.type.dialect_impl(dialect).result_processor(dialect, None)  # type: ignore[no-any-return]
    except (TypeError, ValueError, sa.exc.InvalidRequestError) as exc:
        raise TypeError(
            f"a Hot statement cannot read {column.key} ({column.type}) on {dialect.name}: its "
            "conversion depends on the driver's type code; read it with Connection.execute"
        ) from exc


class HotResult:
    """The part of a result the hot path uses, for either database."""

    __slots__ = ("_compiled", "_cursor")

    def __init__(self, cursor: Any, compiled: _Compiled) -> None:
        self._cursor = cursor
        self._compiled = compiled

    def _convert(self, raw: Sequence[Any]) -> Any:
        compiled = self._compiled
        assert compiled.row is not None
        # Only the columns that need a conversion are visited (a read runs on every request);
        # ``_make`` refuses a row of another length.
        if not compiled.results:
            return compiled.row._make(raw)
        values = list(raw)
        for index, convert in compiled.results:
            value = values[index]
            if value is not None:
                values[index] = convert(value)
        return compiled.row._make(values)

    def first(self) -> Any:
        """The first row, or None."""
        raw = self._cursor.fetchone()
        return None if raw is None else self._convert(raw)

    def one(self) -> Any:
        """Exactly one row."""
        rows = self._cursor.fetchall()
        if len(rows) != 1:
            raise sa.exc.NoResultFound if not rows else sa.exc.MultipleResultsFound
        return self._convert(rows[0])

    def all(self) -> list[Any]:
        """Every row."""
        return [self._convert(raw) for raw in self._cursor.fetchall()]

    def scalar_one(self) -> Any:
        """The one value of the one row."""
        return self.one()[0]

    @property
    def rowcount(self) -> int:
        """How many rows an UPDATE or DELETE changed."""
        return int(self._cursor.rowcount)

    @property
    def inserted_pk(self) -> int:
        """The primary key of the row an INSERT created."""
        if self._compiled.returns_pk:
            return int(self._cursor.fetchone()[0])
        return int(self._cursor.lastrowid)
