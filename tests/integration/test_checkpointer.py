"""SQLite's WAL is copied back into the database file by a thread of its own, not by commits."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy.engine import Connection

from kessai.adapters import db as dbmod
from kessai.adapters.db import Database
from kessai.adapters.migrate import upgrade

ROWS = 300

T = TypeVar("T")


def _checkpointers() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "kessai-checkpoint")


def _rows_in_the_file_alone(database_file: Path, copy: Path) -> int | None:
    """The probe rows a copy of the database file holds without its WAL (None: not there yet)."""
    shutil.copyfile(database_file, copy)
    try:
        # immutable: the copy is read as it is, with no WAL and no shared-memory file beside it.
        with contextlib.closing(sqlite3.connect(f"file:{copy}?immutable=1", uri=True)) as alone:
            return int(alone.execute("SELECT count(*) FROM probe").fetchone()[0])
    except sqlite3.DatabaseError:
        return None  # the table is not checkpointed yet, or the copy caught a page mid-write
    finally:
        copy.unlink()


def test_committed_writes_reach_the_database_file_without_a_committing_checkpoint(
    tmp_path: Path,
) -> None:
    database_file = tmp_path / "kessai.db"
    db = Database(f"sqlite:///{database_file}")
    try:
        upgrade(db)
        backstop = db.run_sync(
            lambda conn: conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar(), write=False
        )
        # Far above what this test writes: a commit never checkpoints here.
        assert backstop == dbmod.WAL_BACKSTOP_PAGES
        db.run_sync(lambda conn: conn.exec_driver_sql("CREATE TABLE probe (n INTEGER)"))

        def add(n: int) -> None:
            def unit(conn: Connection) -> None:
                conn.exec_driver_sql(f"INSERT INTO probe VALUES ({n})")

            db.run_sync(unit)

        for n in range(ROWS):
            add(n)
        # Only a checkpoint puts them in the file itself: until then they live in the WAL.
        deadline = time.monotonic() + 10
        found = _rows_in_the_file_alone(database_file, tmp_path / "copy.db")
        while found != ROWS and time.monotonic() < deadline:
            time.sleep(0.05)
            found = _rows_in_the_file_alone(database_file, tmp_path / "copy.db")
        assert found == ROWS
    finally:
        db.close()


def test_the_checkpointer_stops_with_its_database(tmp_path: Path) -> None:
    before = _checkpointers()
    db = Database(f"sqlite:///{tmp_path / 'kessai.db'}")
    upgrade(db)
    assert _checkpointers() == before + 1
    db.close()
    assert _checkpointers() == before


def test_a_database_in_memory_has_no_checkpointer() -> None:
    before = _checkpointers()
    db = Database("sqlite://")
    try:
        db.run_sync(lambda conn: conn.exec_driver_sql("SELECT 1").scalar())
        assert _checkpointers() == before
    finally:
        db.close()


def _write_until_in_the_file(db: Database, database_file: Path, copy: Path) -> int | None:
    """Commit a page-sized row at a time until the file alone holds some; how many it holds."""
    db.run_sync(lambda conn: conn.exec_driver_sql("CREATE TABLE probe (n INTEGER, pad BLOB)"))
    found = None
    for n in range(ROWS):
        db.run_sync(
            lambda conn, n=n: conn.exec_driver_sql(
                f"INSERT INTO probe VALUES ({n}, zeroblob(4000))"
            )
        )
        found = _rows_in_the_file_alone(database_file, copy)
        if found:
            break
    return found


def test_a_commit_checkpoints_once_the_checkpointer_has_fallen_far_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpointer that never gets anything done, and a backstop low enough to reach.
    monkeypatch.setattr(dbmod._Checkpointer, "_checkpoint", lambda self: None)
    monkeypatch.setattr(dbmod, "WAL_BACKSTOP_PAGES", 20)
    database_file = tmp_path / "kessai.db"
    db = Database(f"sqlite:///{database_file}")
    try:
        upgrade(db)
        found = _write_until_in_the_file(db, database_file, tmp_path / "copy.db")
        # Each row fills a page: the commit that took the WAL past 20 pages copied it back.
        assert found is not None and 0 < found < 30
    finally:
        db.close()


def test_a_checkpoint_that_fails_is_tried_again_after_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = dbmod._Checkpointer._checkpoint
    failures: list[str] = []

    def busy_once(self: dbmod._Checkpointer) -> None:
        if not failures:
            failures.append("busy")
            # What SQLite raises while another process's checkpoint holds the WAL.
            raise sqlite3.OperationalError("database is locked")
        real(self)

    monkeypatch.setattr(dbmod._Checkpointer, "_checkpoint", busy_once)
    database_file = tmp_path / "kessai.db"
    db = Database(f"sqlite:///{database_file}")
    try:
        upgrade(db)  # its writes wake the checkpointer, whose first attempt fails
        deadline = time.monotonic() + 10
        while not failures and time.monotonic() < deadline:
            time.sleep(0.01)
        assert failures == ["busy"]
        # The thread lives on: the next writes are checkpointed into the file.
        assert _checkpointers() >= 1
        found = _write_until_in_the_file(db, database_file, tmp_path / "copy.db")
        assert found
    finally:
        db.close()


def _os_thread_names() -> dict[int, str]:
    """Each thread of this process as the kernel names it, by native id."""
    tasks = Path("/proc/self/task")
    return {int(task.name): (task / "comm").read_text().strip() for task in tasks.iterdir()}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_the_writer_and_the_checkpointer_carry_their_names_in_the_operating_system(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'kessai.db'}")
    try:
        upgrade(db)
        db.run_sync(lambda conn: conn.exec_driver_sql("CREATE TABLE probe (n INTEGER)"))
        ours = {
            thread.name: thread.native_id
            for thread in threading.enumerate()
            if thread.name in ("kessai-db", "kessai-checkpoint")
        }
        # Each thread names itself as it starts, which may be a moment after ``start`` returns.
        deadline = time.monotonic() + 5
        names = _os_thread_names()
        while names[ours["kessai-checkpoint"]] != "kessai-ckpt" and time.monotonic() < deadline:
            time.sleep(0.01)
            names = _os_thread_names()
        # top -H, ps -L and the bench tell the threads apart by these names.
        assert names[ours["kessai-db"]] == dbmod.OS_THREAD_NAMES["writer"] == "kessai-db"
        assert names[ours["kessai-checkpoint"]] == dbmod.OS_THREAD_NAMES["checkpointer"]
        assert names[threading.get_native_id()] != "kessai-db"
    finally:
        db.close()


def test_a_closing_database_checkpoints_its_last_writes_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pause no test outlasts: only the checkpoint made on closing can move the rows.
    monkeypatch.setattr(dbmod, "CHECKPOINT_PAUSE_SECONDS", 3600.0)
    database_file = tmp_path / "kessai.db"
    db = Database(f"sqlite:///{database_file}")
    upgrade(db)
    db.run_sync(lambda conn: conn.exec_driver_sql("CREATE TABLE probe (n INTEGER)"))
    # Another process's connection: SQLite itself checkpoints only as the last one closes.
    with contextlib.closing(sqlite3.connect(database_file)) as other:
        try:
            other.execute("SELECT count(*) FROM probe").fetchone()
            for n in range(ROWS):
                db.run_sync(
                    lambda conn, n=n: conn.exec_driver_sql(f"INSERT INTO probe VALUES ({n})")
                )
            assert _rows_in_the_file_alone(database_file, tmp_path / "before.db") != ROWS
        finally:
            db.close()
        assert _rows_in_the_file_alone(database_file, tmp_path / "after.db") == ROWS
        # The WAL is still the other connection's: nothing was taken from it.
        assert int(other.execute("SELECT count(*) FROM probe").fetchone()[0]) == ROWS


def test_a_checkpoint_does_not_bring_back_a_removed_database_file(tmp_path: Path) -> None:
    database_file = tmp_path / "kessai.db"
    checkpointer = dbmod._Checkpointer(str(database_file))
    with pytest.raises(sqlite3.OperationalError):
        checkpointer._checkpoint()
    assert not database_file.exists()


def _policy_of_a_thread(policy: int, body: Callable[[], T]) -> T:
    """Run ``body`` on a new thread that runs under ``policy``, and answer what it answered."""
    answers: list[T] = []

    def run() -> None:
        os.sched_setscheduler(0, policy, os.sched_param(0))
        answers.append(body())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert answers, "the thread failed"
    return answers[0]


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="needs Linux's policies")
def test_the_writer_runs_at_the_normal_policy_when_its_creator_is_batched(
    tmp_path: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'kessai.db'}")

    def policy(conn: Connection) -> int:
        return os.sched_getscheduler(0)

    def first_unit() -> tuple[int, int]:
        writer = db.run_sync(policy)
        (checkpointer,) = (t for t in threading.enumerate() if t.name == "kessai-checkpoint")
        assert checkpointer.native_id is not None
        return writer, os.sched_getscheduler(checkpointer.native_id)

    try:
        # A pinned serving worker's loop runs under SCHED_BATCH and starts the database's
        # threads with its first unit (kessai.cli.supervise).
        writer, checkpointer = _policy_of_a_thread(os.SCHED_BATCH, first_unit)
        # Only the writer may take the shared CPU from the threads it wakes.
        assert writer == os.SCHED_OTHER
        assert checkpointer == os.SCHED_BATCH
    finally:
        db.close()


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="needs Linux's policies")
@pytest.mark.parametrize("policy", ["SCHED_OTHER", "SCHED_IDLE"])
def test_a_thread_not_batched_keeps_its_policy(policy: str) -> None:
    # An operator's choice (chrt --idle, say) is not undone.
    chosen = getattr(os, policy)

    def leave() -> int:
        dbmod.leave_batch_policy()
        return os.sched_getscheduler(0)

    assert _policy_of_a_thread(chosen, leave) == chosen


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="needs Linux's policies")
def test_a_refused_policy_leaves_a_batched_writer_batched_without_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The writer must start all the same: a refusal costs only the preemption it would regain.
    def refuse(pid: int, policy: int, param: os.sched_param) -> None:
        raise PermissionError(1, "Operation not permitted")

    def leave() -> int:
        monkeypatch.setattr(os, "sched_setscheduler", refuse)
        dbmod.leave_batch_policy()
        return os.sched_getscheduler(0)

    assert _policy_of_a_thread(os.SCHED_BATCH, leave) == os.SCHED_BATCH
