"""SQLite durability: the writer fsyncs the WAL after releasing the write lock, before answering.

Each fsync the writer makes is recorded with what held at that moment: which file it flushed,
whether the cross-process writer lock was free, and whether the unit's caller had its answer yet.
Two ``Database`` objects on one file stand for two processes: each has its own connection,
thread and lock descriptor, and ``flock`` tells open descriptors apart even within one process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import seed_terminal
from litestar.testing import TestClient
from sqlalchemy.engine import Connection

from kessai.adapters import db as db_module
from kessai.adapters.db import Database, NotDurable
from kessai.api.app import serving_app
from kessai.config import Settings

_TABLE = "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)"


@dataclass(frozen=True)
class Flush:
    path: str
    thread: threading.Thread
    lock_free: bool
    answered: bool


class Recorder:
    """Stands in for ``os.fsync`` in the database module and notes each call."""

    def __init__(self, lock_path: Path) -> None:
        self.lock_path = lock_path
        self.flushes: list[Flush] = []
        self.watched: Future[Any] | None = None
        self.fail_with: OSError | None = None
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        free = False
        probe = os.open(self.lock_path, os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            free = True
            fcntl.flock(probe, fcntl.LOCK_UN)
        finally:
            os.close(probe)
        answered = self.watched is not None and self.watched.done()
        path = os.readlink(f"/proc/self/fd/{fd}")
        self.flushes.append(Flush(path, threading.current_thread(), free, answered))
        if self.fail_with is not None:
            raise self.fail_with
        self._real(fd)

    def of(self, database: Database) -> list[Flush]:
        """The flushes made by ``database``'s writer thread."""
        thread = database._writer._thread
        return [f for f in self.flushes if f.thread is thread]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "w.db"


@pytest.fixture
def recorder(path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder(Path(f"{path}-writer.lock"))
    monkeypatch.setattr(db_module.os, "fsync", recorder)
    return recorder


@pytest.fixture
def databases(path: Path) -> Iterator[tuple[Database, Database]]:
    first = Database(str(path))
    first.run_sync(lambda conn: conn.exec_driver_sql(_TABLE))
    second = Database(str(path))
    yield first, second
    first.close()
    second.close()


def _insert(k: int) -> Any:
    def unit(conn: Connection) -> int:
        conn.exec_driver_sql("INSERT INTO t (k, v) VALUES (?, 'x')", (k,))
        return k

    return unit


def _count(conn: Connection) -> int:
    return int(conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one())


def test_a_write_is_answered_after_a_wal_fsync_made_once_the_writer_lock_is_free(
    databases: tuple[Database, Database], recorder: Recorder, path: Path
) -> None:
    first, _ = databases
    future = first._writer.submit(_insert(1), True)
    recorder.watched = future
    assert future.result(timeout=10) == 1
    wal = [f for f in recorder.of(first) if f.path == f"{path}-wal"]
    # Without the writer's own fsync, SQLite fsyncs inside COMMIT, under the lock: none here.
    assert len(wal) == 1
    assert wal[0].lock_free and not wal[0].answered


def test_each_write_is_flushed_and_the_wal_folder_once(
    databases: tuple[Database, Database], recorder: Recorder, path: Path
) -> None:
    first, _ = databases
    for k in range(3):
        first.run_sync(_insert(k))
    paths = [f.path for f in recorder.of(first)]
    assert paths.count(f"{path}-wal") == 3
    # The folder's flush makes the WAL's name durable; it was already flushed for the table's
    # creation, before the recorder was installed, so not again.
    assert str(path.parent) not in paths


def test_a_new_wal_has_its_folder_flushed(path: Path, recorder: Recorder) -> None:
    database = Database(str(path))
    try:
        database.run_sync(lambda conn: conn.exec_driver_sql(_TABLE))
        database.run_sync(_insert(1))
    finally:
        database.close()
    paths = [f.path for f in recorder.flushes]
    assert paths == [str(path.parent), f"{path}-wal", f"{path}-wal"]


def test_a_read_that_may_see_another_process_commit_flushes_before_answering(
    databases: tuple[Database, Database], recorder: Recorder, path: Path
) -> None:
    first, second = databases
    assert second.run_sync(_count, write=False) == 0  # opens its connection
    recorder.flushes.clear()
    first.run_sync(_insert(1))
    # Whatever the first process has flushed, the second cannot know it: it flushes once.
    future = second._writer.submit(_count, False)
    recorder.watched = future
    assert future.result(timeout=10) == 1
    reads = recorder.of(second)
    assert [f.path for f in reads] == [f"{path}-wal"] and not reads[0].answered
    # Nothing committed since: the next reads need no flush.
    assert second.run_sync(_count, write=False) == 1
    assert second.run_sync(_count, write=False) == 1
    assert len(recorder.of(second)) == 1
    first.run_sync(_insert(2))
    assert second.run_sync(_count, write=False) == 2
    assert len(recorder.of(second)) == 2


def test_a_reading_unit_that_changes_a_row_is_flushed(
    databases: tuple[Database, Database], recorder: Recorder
) -> None:
    first, _ = databases
    first.run_sync(_count, write=False)
    recorder.flushes.clear()
    # As a terminal's polling read touches its session: a read unit that writes a little.
    first.run_sync(_insert(7), write=False)
    assert len(recorder.of(first)) == 1
    first.run_sync(_count, write=False)
    assert len(recorder.of(first)) == 1


def test_a_failed_flush_refuses_that_answer_and_every_later_unit(
    databases: tuple[Database, Database],
    recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, _ = databases
    recorder.fail_with = OSError(errno.EIO, "Input/output error")
    with pytest.raises(NotDurable, match="Input/output error"):
        first.run_sync(_insert(1))
    assert any(r.levelname == "CRITICAL" for r in caplog.records)
    # The disk answers again, but pages it failed to write may be gone: nothing more is vouched
    # for by this process, reads included, and nothing more is run.
    recorder.fail_with = None
    with pytest.raises(NotDurable):
        first.run_sync(_insert(2))
    with pytest.raises(NotDurable):
        first.run_sync(_count, write=False)
    assert recorder.of(first)[-1].path.endswith("-wal")
    assert len(recorder.of(first)) == 1


def test_sqlite_commits_without_its_own_fsync_only_where_the_writer_flushes(
    path: Path,
) -> None:
    def synchronous(conn: Connection) -> int:
        return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())

    on_file = Database(str(path))
    in_memory = Database("sqlite://")
    try:
        assert on_file.run_sync(synchronous, write=False) == 1  # NORMAL: the writer flushes
        assert in_memory.run_sync(synchronous, write=False) == 2  # FULL: nothing to flush
    finally:
        on_file.close()
        in_memory.close()


def test_a_file_database_that_cannot_use_wal_keeps_sqlite_fsyncing_in_commit() -> None:
    # Configured as a file database would be, on a connection that refuses WAL (an in-memory
    # database answers "memory"): no writer flush would cover its commits, so SQLite's own must.
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        db_module._configure_sqlite(conn, db_module.WAL_BACKSTOP_PAGES)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_gateway_whose_disk_fails_an_fsync_answers_500_and_reports_itself_unhealthy(
    path: Path, recorder: Recorder
) -> None:
    login, codes = seed_terminal(f"sqlite:///{path}", "Disk Shop", 2)
    with TestClient(serving_app(f"sqlite:///{path}", Settings(sandbox_enabled=True))) as client:
        answer = client.post("/v1/login", json={**login, "key": "AA:BB:CC:00:11:22"})
        auth = {"Authorization": f"Bearer {answer.json()['sessionToken']}"}
        body = {"transKey": "DISK1", "amount": 500, "code": codes[0]}
        recorder.fail_with = OSError(errno.EIO, "Input/output error")
        failed = client.post("/v1/payments", json=body, headers=auth)
        recorder.fail_with = None
        assert failed.status_code == 500
        error = failed.json()["error"]
        assert (error["code"], error["retryable"]) == ("INTERNAL_ERROR", True)
        # Nothing of the disk's error reaches the terminal; the operator's log has it.
        assert "Input/output" not in failed.text
        assert client.get("/healthz").status_code == 503
        again = client.post("/v1/payments", json={**body, "transKey": "DISK2"}, headers=auth)
        assert again.status_code == 500


class _UnreadableConnection:
    """A sqlite3 connection whose every statement fails (a disk error, say)."""

    total_changes = 0

    def execute(self, sql: str) -> Any:
        raise sqlite3.OperationalError("disk I/O error")


def test_a_connection_that_cannot_say_its_settings_is_flushed_not_a_crash(
    databases: tuple[Database, Database], recorder: Recorder, path: Path
) -> None:
    # The writer thread must answer every failure and never end on one; not knowing whether
    # SQLite fsyncs in COMMIT, nor what changed, it fsyncs (at worst twice).
    flush = db_module._WalFlush(str(path))
    unreadable: Any = _UnreadableConnection()
    try:
        for _ in range(2):
            flush.flush_if_needed(unreadable, wrote=False)
    finally:
        flush.close()
    wal = f"{path}-wal"
    assert [f.path for f in recorder.flushes[-3:]] == [str(path.parent), wal, wal]
