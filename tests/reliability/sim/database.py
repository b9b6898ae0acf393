"""The gateway's database as the simulation sees it: failing by seed, and watched.

``FaultyDatabase`` wraps the real ``Database``. A writing unit of work chosen by the seed runs to
its end and then fails before its commit, so nothing of it may remain; the wrapper proves that
with SQLite's ``data_version`` (it moves only when another connection commits). Units run to
completion one at a time on the caller's thread, so that the worker's concurrent jobs interleave
the same way on every replay.

``Probe`` is a second, plain ``sqlite3`` connection on the same file. It installs triggers that
record every touched payment and every forbidden change the moment it is written (a paid payment
unpaid, a succeeded refund undone, a row deleted), and it reads committed state for the checks.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any, Final, TypeVar

import sqlalchemy as sa

from kessai.adapters.db import Database

from .faults import DB_WRITE_FAILURE, FaultPlan

T = TypeVar("T")

# Failures injected while the current task's gateway call ran. Each task has its own box (tasks
# copy the context they start in), so concurrent calls do not see each other's failures.
INJECTED: ContextVar[list[int] | None] = ContextVar("injected", default=None)

PAID_SQL: Final = "('COMPLETED','PARTIALLY_REFUNDED','REFUNDED')"
UNPAID_FINAL_SQL: Final = "('FAILED','EXPIRED','CANCELED')"

# Trigger bodies see one row's old and new values, so they hold whatever order a unit of work
# writes its statements in; sums across rows are checked after each step instead.
_TRIGGERS: Final = f"""
CREATE TABLE IF NOT EXISTS sim_touch (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, payment_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sim_violations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, payment_id INTEGER, detail TEXT
);
CREATE TRIGGER IF NOT EXISTS sim_payment_inserted AFTER INSERT ON payments BEGIN
    INSERT INTO sim_touch(payment_id) VALUES (NEW.id);
    INSERT INTO sim_violations(kind, payment_id, detail)
        SELECT 'one-payment-per-transkey', NEW.id, NEW.trans_key
        WHERE (SELECT count(*) FROM payments
               WHERE merchant_id = NEW.merchant_id AND trans_key = NEW.trans_key) > 1;
END;
CREATE TRIGGER IF NOT EXISTS sim_payment_updated AFTER UPDATE ON payments BEGIN
    INSERT INTO sim_touch(payment_id) VALUES (NEW.id);
    INSERT INTO sim_violations(kind, payment_id, detail)
        SELECT 'paid-stays-paid', NEW.id, OLD.status || ' -> ' || NEW.status
        WHERE OLD.status IN {PAID_SQL} AND NEW.status NOT IN {PAID_SQL};
    INSERT INTO sim_violations(kind, payment_id, detail)
        SELECT 'unpaid-final-stays', NEW.id, OLD.status || ' -> ' || NEW.status
        WHERE OLD.status IN {UNPAID_FINAL_SQL} AND NEW.status != OLD.status;
    INSERT INTO sim_violations(kind, payment_id, detail)
        SELECT 'refunded-never-shrinks', NEW.id,
               OLD.refunded_amount || ' -> ' || NEW.refunded_amount
        WHERE NEW.refunded_amount < OLD.refunded_amount;
    INSERT INTO sim_violations(kind, payment_id, detail)
        SELECT 'payment-identity', NEW.id, OLD.trans_id || '/' || OLD.trans_key
        WHERE NEW.trans_id != OLD.trans_id OR NEW.trans_key != OLD.trans_key
           OR NEW.amount != OLD.amount OR NEW.merchant_id != OLD.merchant_id;
END;
CREATE TRIGGER IF NOT EXISTS sim_payment_deleted AFTER DELETE ON payments BEGIN
    INSERT INTO sim_violations(kind, payment_id, detail)
        VALUES ('payment-deleted', OLD.id, OLD.trans_id);
END;
CREATE TRIGGER IF NOT EXISTS sim_refund_inserted AFTER INSERT ON refunds BEGIN
    INSERT INTO sim_touch(payment_id) VALUES (NEW.payment_id);
END;
CREATE TRIGGER IF NOT EXISTS sim_refund_updated AFTER UPDATE ON refunds BEGIN
    INSERT INTO sim_touch(payment_id) VALUES (NEW.payment_id);
    INSERT INTO sim_violations(kind, payment_id, detail)
        SELECT 'refund-settled-stays', NEW.payment_id,
               NEW.refund_key || ': ' || OLD.status || ' -> ' || NEW.status
        WHERE OLD.status != 'PENDING' AND NEW.status != OLD.status;
    INSERT INTO sim_violations(kind, payment_id, detail)
        SELECT 'refund-identity', NEW.payment_id, OLD.refund_key
        WHERE NEW.amount != OLD.amount OR NEW.refund_key != OLD.refund_key
           OR NEW.payment_id != OLD.payment_id OR NEW.refund_id != OLD.refund_id;
END;
CREATE TRIGGER IF NOT EXISTS sim_refund_deleted AFTER DELETE ON refunds BEGIN
    INSERT INTO sim_violations(kind, payment_id, detail)
        VALUES ('refund-deleted', OLD.payment_id, OLD.refund_key);
END;
"""


class InjectedDatabaseFailure(Exception):
    """A unit of work the simulation made fail before its commit."""


class Probe:
    """A read-only view of the committed books, on its own connection."""

    def __init__(self, path: str) -> None:
        # Autocommit: every query sees the latest commit and holds no snapshot afterwards.
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout=10000")
        self.touch_seq = 0
        self.violation_seq = 0

    def install(self) -> None:
        """Create the watch tables and triggers (once, before the gateway starts)."""
        self.conn.executescript(_TRIGGERS)

    def close(self) -> None:
        """Release the connection."""
        self.conn.close()

    def data_version(self) -> int:
        """A number that changes whenever another connection commits."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def new_violations(self) -> list[tuple[str, int | None, str | None]]:
        """Forbidden changes the triggers saw since the last call."""
        rows = self.conn.execute(
            "SELECT seq, kind, payment_id, detail FROM sim_violations WHERE seq > ? ORDER BY seq",
            (self.violation_seq,),
        ).fetchall()
        if rows:
            self.violation_seq = int(rows[-1][0])
        return [(str(kind), pid, detail) for _, kind, pid, detail in rows]

    def newly_touched(self) -> list[int]:
        """Primary keys of payments written (or whose refunds were) since the last call."""
        rows = self.conn.execute(
            "SELECT seq, payment_id FROM sim_touch WHERE seq > ? ORDER BY seq", (self.touch_seq,)
        ).fetchall()
        if not rows:
            return []
        self.touch_seq = int(rows[-1][0])
        # Insertion order, without repeats: deterministic and independent of hashing.
        return list(dict.fromkeys(int(pid) for _, pid in rows))

    def payments(self, pks: Sequence[int] | None = None) -> list[tuple[Any, ...]]:
        """(id, trans_id, merchant_id, trans_key, status, amount, refunded_amount) rows."""
        query = (
            "SELECT id, trans_id, merchant_id, trans_key, status, amount, refunded_amount "
            "FROM payments"
        )
        return self._rows(query, "id", pks)

    def refunds(self, payment_pks: Sequence[int] | None = None) -> list[tuple[Any, ...]]:
        """(payment_id, refund_id, refund_key, amount, status) rows, oldest first."""
        query = "SELECT payment_id, refund_id, refund_key, amount, status FROM refunds"
        return self._rows(query, "payment_id", payment_pks, order="id")

    def payments_by_trans_id(self, trans_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """The rows ``payments()`` reads, for these transIds."""
        marks = ",".join("?" * len(trans_ids))
        return self.conn.execute(
            "SELECT id, trans_id, merchant_id, trans_key, status, amount, refunded_amount "
            f"FROM payments WHERE trans_id IN ({marks}) ORDER BY id",
            tuple(trans_ids),
        ).fetchall()

    def payment_by_key(self, merchant_id: int, trans_key: str) -> tuple[Any, ...] | None:
        """The payment a merchant holds under ``trans_key``, if any."""
        return self.conn.execute(
            "SELECT id, trans_id, status FROM payments WHERE merchant_id = ? AND trans_key = ?",
            (merchant_id, trans_key),
        ).fetchone()

    def refund_amount(self, trans_id: str, refund_key: str) -> int | None:
        """The amount booked under ``refund_key`` for the payment ``trans_id``, if any."""
        row = self.conn.execute(
            "SELECT r.amount FROM refunds r JOIN payments p ON p.id = r.payment_id "
            "WHERE p.trans_id = ? AND r.refund_key = ?",
            (trans_id, refund_key),
        ).fetchone()
        return None if row is None else int(row[0])

    def count(self, sql: str) -> int:
        """One integer answer."""
        return int(self.conn.execute(sql).fetchone()[0])

    def execute(self, sql: str, params: Iterable[Any] = ()) -> None:
        """Write directly (only tests that corrupt the books on purpose do this)."""
        self.conn.execute(sql, tuple(params))

    def _rows(
        self, query: str, column: str, keys: Sequence[int] | None, order: str = "id"
    ) -> list[tuple[Any, ...]]:
        if keys is None:
            return self.conn.execute(f"{query} ORDER BY {order}").fetchall()
        if not keys:
            return []
        marks = ",".join("?" * len(keys))
        return self.conn.execute(
            f"{query} WHERE {column} IN ({marks}) ORDER BY {order}", tuple(keys)
        ).fetchall()


class FaultyDatabase:
    """The gateway's ``Database``, whose writing units fail before their commit by seed.

    ``leaky=True`` is a deliberately broken variant for the checker's own test: the unit commits
    and then reports a failure, which the before/after ``data_version`` comparison must catch.
    """

    def __init__(
        self, inner: Database, plan: FaultPlan, probe: Probe, *, leaky: bool = False
    ) -> None:
        self.inner = inner
        self.plan = plan
        self.probe = probe
        self.leaky = leaky
        self.dialect = inner.dialect
        self.url = inner.url
        self.injected = 0  # failures injected so far
        self.half_applied: list[str] = []
        self.units = 0
        # The real database's own SQLite engine (its pragmas, its BEGIN IMMEDIATE for writers),
        # driven on this thread. Handing each unit to the database thread and blocking on it
        # gives the same order but costs two context switches per unit, which on a loaded
        # machine is most of a unit's time. Without such an engine, units go through run_sync.
        self._engine: sa.Engine | None = getattr(inner, "_sqlite", None)
        self._conn: sa.Connection | None = None

    async def run(self, fn: Callable[[Any], T], *, write: bool = True) -> T:
        """Run ``fn`` as one unit of work, or fail it before the commit."""
        return self._unit(fn, write)

    def run_sync(self, fn: Callable[[Any], T], *, write: bool = True) -> T:
        """The same, from synchronous code."""
        return self._unit(fn, write)

    def close(self) -> None:
        """Close the real database."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.inner.close()

    async def aclose(self) -> None:
        """Close the real database from async code."""
        self.close()

    def _unit(self, fn: Callable[[Any], T], write: bool) -> T:
        self.units += 1
        rate = self.plan.rates.db_write_failure
        if not (write and self.plan.armed and rate > 0 and self.plan.rng.random() < rate):
            return self._run(fn, write)
        before = self.probe.data_version()

        def doomed(conn: Any) -> T:
            value = fn(conn)
            if self.leaky:
                return value
            raise InjectedDatabaseFailure("the unit failed before its commit")

        with contextlib.suppress(InjectedDatabaseFailure):
            self._run(doomed, write)
        # Anything the unit itself raised (a refusal, a lost race) has propagated above: that
        # unit rolled back on its own and nothing was injected.
        self.plan.count(DB_WRITE_FAILURE, getattr(fn, "__qualname__", ""))
        self.injected += 1
        box = INJECTED.get()
        if box is not None:
            box[0] += 1
        after = self.probe.data_version()
        if after != before:
            self.half_applied.append(getattr(fn, "__qualname__", repr(fn)))
        raise InjectedDatabaseFailure("injected: the database failed before the commit")

    def _run(self, fn: Callable[[Any], T], write: bool) -> T:
        """One unit in one transaction, to completion, before anything else runs.

        Never yielding to the event loop mid-unit is what makes the worker's concurrent jobs
        interleave the same way on every replay.
        """
        if self._engine is None:
            return self.inner.run_sync(fn, write=write)
        # One connection for the whole run, as the database's own writer thread keeps one.
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self._engine.connect()
        conn = self._conn.execution_options(kessai_write=write)
        with conn.begin():
            return fn(conn)
