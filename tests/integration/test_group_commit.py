"""SQLite group commit: queued units share a transaction but succeed or fail one by one."""

from __future__ import annotations

import asyncio
import fcntl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters.db import Database

_TABLE = "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"


def _insert(k: int, v: str = "x") -> object:
    def unit(conn: Connection) -> int:
        conn.exec_driver_sql("INSERT INTO t (k, v) VALUES (?, ?)", (k, v))
        return k

    return unit


def _rows(db: Database) -> list[tuple[int, str]]:
    return db.run_sync(
        lambda conn: [tuple(r) for r in conn.exec_driver_sql("SELECT k, v FROM t ORDER BY k")],
        write=False,
    )


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'g.db'}")
    database.run_sync(lambda conn: conn.exec_driver_sql(_TABLE))
    yield database  # type: ignore[misc]
    database.close()


async def _gather(db: Database, units: list[object]) -> list[object]:
    return await asyncio.gather(*(db.run(u) for u in units), return_exceptions=True)  # type: ignore[arg-type]


def test_a_failing_unit_is_undone_alone(db: Database) -> None:
    units = [_insert(k) for k in range(1, 41)]
    units[10] = _insert(5)  # a duplicate key: this unit alone fails
    answers = asyncio.run(_gather(db, units))
    assert isinstance(answers[10], sa.exc.IntegrityError)
    assert [a for i, a in enumerate(answers) if i != 10] == [k for k in range(1, 41) if k != 11]
    assert [k for k, _ in _rows(db)] == [k for k in range(1, 41) if k != 11]


def test_a_unit_that_raises_leaves_nothing_behind(db: Database) -> None:
    def half_then_fail(conn: Connection) -> None:
        conn.exec_driver_sql("INSERT INTO t (k, v) VALUES (100, 'half')")
        raise ValueError("changed my mind")

    answers = asyncio.run(_gather(db, [_insert(1), half_then_fail, _insert(2)]))
    assert answers[0] == 1 and answers[2] == 2
    assert isinstance(answers[1], ValueError)
    assert _rows(db) == [(1, "x"), (2, "x")]


class _Halt(BaseException):
    """Not an Exception: what a unit raising SystemExit or the like looks like to the writer."""


def _halting(conn: Connection) -> None:
    conn.exec_driver_sql("INSERT INTO t (k, v) VALUES (200, 'halted')")
    raise _Halt


def test_a_unit_raising_a_base_exception_gets_it_back_and_the_writer_serves_on(
    db: Database,
) -> None:
    # Such an exception used to escape the writer thread and end it: every later unit waited
    # for an answer forever.
    with pytest.raises(_Halt):
        db.run_sync(_halting)
    answers = asyncio.run(_gather(db, [_insert(1), _halting, _insert(2)]))
    assert answers[0] == 1 and answers[2] == 2
    assert isinstance(answers[1], _Halt)
    assert _rows(db) == [(1, "x"), (2, "x")]


def test_a_database_error_that_spoils_the_group_costs_only_its_own_unit(db: Database) -> None:
    def broken(conn: Connection) -> None:
        conn.exec_driver_sql("INSERT INTO no_such_table VALUES (1)")

    answers = asyncio.run(_gather(db, [_insert(1), _insert(2), broken, _insert(3)]))
    assert answers[:2] == [1, 2] and answers[3] == 3
    assert isinstance(answers[2], sa.exc.OperationalError)
    assert [k for k, _ in _rows(db)] == [1, 2, 3]


def test_later_units_of_a_group_see_earlier_ones(db: Database) -> None:
    def count(conn: Connection) -> int:
        return int(conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one())

    answers = asyncio.run(_gather(db, [_insert(1), _insert(2), count]))
    assert answers == [1, 2, 2]


def test_two_handles_on_one_file_take_turns(tmp_path: Path) -> None:
    # Two handles stand for two processes: each has its own writer thread and lock descriptor.
    url = f"sqlite:///{tmp_path / 'two.db'}"
    first, second = Database(url), Database(url)
    try:
        first.run_sync(lambda conn: conn.exec_driver_sql(_TABLE))

        async def both() -> None:
            await asyncio.gather(
                *(first.run(_insert(k)) for k in range(0, 400, 2)),  # type: ignore[arg-type]
                *(second.run(_insert(k)) for k in range(1, 400, 2)),  # type: ignore[arg-type]
            )

        asyncio.run(both())
        assert [k for k, _ in _rows(second)] == list(range(400))
        assert (tmp_path / "two.db-writer.lock").exists()
    finally:
        first.close()
        second.close()


def test_units_that_queue_while_another_process_writes_join_the_waiting_group(
    db: Database, tmp_path: Path
) -> None:
    # The writer made up its group, then waited for the writer lock; units queued meanwhile
    # waited for the group's COMMIT and then a whole further turn of the lock of their own.
    transactions: list[object] = []
    sa.event.listen(db._sqlite, "begin", transactions.append)
    writer = db._writer
    with open(tmp_path / "g.db-writer.lock", "a+b") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)  # another process is writing
        first = writer.submit(_insert(1), True)
        while writer._queue.qsize():  # the writer has taken it and waits for the lock
            time.sleep(0.001)
        time.sleep(0.1)
        later = [writer.submit(_insert(k), True) for k in (2, 3)]
        assert not first.done()
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
    assert [f.result(timeout=30) for f in (first, *later)] == [1, 2, 3]
    assert len(transactions) == 1  # one BEGIN and one COMMIT for the three
    assert [k for k, _ in _rows(db)] == [1, 2, 3]


class _Counted:
    """A unit that counts its runs; it raises ``fail`` (after changing a row, if ``half``)."""

    def __init__(self, k: int, fail: Exception | None = None, *, half: bool = False) -> None:
        self.k, self.fail, self.half, self.runs = k, fail, half, 0

    def __call__(self, conn: Connection) -> int:
        self.runs += 1
        if self.fail is not None and not self.half:
            raise self.fail
        conn.exec_driver_sql("INSERT INTO t (k, v) VALUES (?, 'x')", (self.k,))
        if self.fail is not None:
            raise self.fail
        return self.k


def _one_group(db: Database, units: list[Any]) -> tuple[list[object], list[str]]:
    """Run ``units`` as one group (queued while the writer is held); answers and statements."""
    statements: list[str] = []
    gate = threading.Event()

    def hold(conn: Connection) -> None:
        conn.connection.driver_connection.set_trace_callback(statements.append)  # type: ignore[union-attr]
        gate.wait(10)

    writer = db._writer
    held = writer.submit(hold, True)
    while writer._queue.qsize():  # the writer has taken the holding unit
        time.sleep(0.001)
    futures = [writer.submit(unit, True) for unit in units]
    gate.set()
    held.result(timeout=30)
    answers = [f.exception(timeout=30) or f.result() for f in futures]
    statements = statements[statements.index("COMMIT") + 1 :]  # the group's own
    return answers, statements


def test_a_group_that_succeeds_runs_once_without_savepoints(db: Database) -> None:
    units = [_Counted(k) for k in range(1, 6)]
    answers, statements = _one_group(db, units)
    assert answers == [1, 2, 3, 4, 5]
    assert [u.runs for u in units] == [1] * 5
    assert not [s for s in statements if "SAVEPOINT" in s]
    assert statements.count("BEGIN IMMEDIATE") == 1


def test_a_unit_that_fails_before_changing_anything_costs_the_group_nothing(
    db: Database,
) -> None:
    units = [_Counted(1), _Counted(2, ValueError("refused")), _Counted(3)]
    answers, statements = _one_group(db, units)
    assert answers[0] == 1 and answers[2] == 3
    assert isinstance(answers[1], ValueError)
    assert [u.runs for u in units] == [1, 1, 1]
    assert not [s for s in statements if "SAVEPOINT" in s]
    assert [k for k, _ in _rows(db)] == [1, 3]


def test_a_unit_that_fails_after_a_change_has_the_group_run_again_guarded(
    db: Database,
) -> None:
    units = [_Counted(1), _Counted(2, ValueError("changed my mind"), half=True), _Counted(3)]
    answers, statements = _one_group(db, units)
    assert answers[0] == 1 and answers[2] == 3
    assert isinstance(answers[1], ValueError)
    # The first run stopped at the failure; the guarded one ran every unit.
    assert [u.runs for u in units] == [2, 2, 1]
    assert statements.count("BEGIN IMMEDIATE") == 2  # the first transaction was rolled back
    assert "ROLLBACK TO kessai_unit" in statements
    assert [k for k, _ in _rows(db)] == [1, 3]


def test_a_unit_that_fails_after_changing_the_schema_is_undone(db: Database) -> None:
    # SQLite's count of changed rows leaves out CREATE TABLE: the schema's version tells.
    def create_then_fail(conn: Connection) -> None:
        conn.exec_driver_sql("CREATE TABLE u (k INTEGER)")
        raise ValueError("changed my mind")

    answers, _ = _one_group(db, [_Counted(1), create_then_fail, _Counted(3)])
    assert isinstance(answers[1], ValueError)

    def tables(conn: Connection) -> list[str]:
        return [r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master")]

    assert "u" not in db.run_sync(tables, write=False)
    assert [k for k, _ in _rows(db)] == [1, 3]


def test_a_schema_change_is_still_undone_after_the_schema_moved_on_between_groups(
    db: Database,
) -> None:
    # The schema's version is read once per connection, not once per group: one that changed
    # since (a committed CREATE TABLE here) must still never let a failed unit's DDL through.
    def create_then_fail(name: str) -> Any:
        def unit(conn: Connection) -> None:
            conn.exec_driver_sql(f"CREATE TABLE {name} (k INTEGER)")
            raise ValueError("changed my mind")

        return unit

    def tables(conn: Connection) -> list[str]:
        return [r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master")]

    _one_group(db, [_Counted(1), _Counted(2)])  # the version is read here
    db.run_sync(lambda conn: conn.exec_driver_sql("CREATE TABLE kept (k INTEGER)"))
    first, _ = _one_group(db, [_Counted(3), create_then_fail("u1"), _Counted(4)])
    second, _ = _one_group(db, [_Counted(5), create_then_fail("u2"), _Counted(6)])
    assert isinstance(first[1], ValueError) and isinstance(second[1], ValueError)
    names = db.run_sync(tables, write=False)
    assert "kept" in names and "u1" not in names and "u2" not in names
    assert [k for k, _ in _rows(db)] == [1, 2, 3, 4, 5, 6]
