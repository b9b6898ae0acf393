"""Opening a new journal from several processes at once: the switch to WAL waits its turn.

Without the wait, about one new file in 25 opened by four threads at once failed with "database
is locked": SQLite refuses a concurrent switch out of rollback-journal mode at once, without
waiting on busy_timeout. The trials below make a regression all but certain to show.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kessai.client import Journal
from kessai.client.journal import use_wal

OPENERS = 4
TRIALS = 150


def _all_at_once(count: int, job: Callable[[], object]) -> list[BaseException]:
    """Run ``job`` on ``count`` threads released together; answers what they raised."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            job()
        except BaseException as exc:  # every failure is the finding, whatever its kind
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_connections_opening_a_new_file_at_once_all_get_wal(tmp_path: Path) -> None:
    for trial in range(TRIALS):
        path = tmp_path / f"{trial}.db"
        modes: list[str] = []

        def open_it(path: Path = path, modes: list[str] = modes) -> None:
            connection = sqlite3.connect(path, isolation_level=None, timeout=10)
            try:
                modes.append(use_wal(connection, 10))
            finally:
                connection.close()

        assert _all_at_once(OPENERS, open_it) == []
        assert modes == ["wal"] * OPENERS


def test_journals_opened_at_once_on_a_new_file_all_open(tmp_path: Path) -> None:
    for trial in range(TRIALS):
        path = tmp_path / f"{trial}" / "journal.db"

        def open_it(path: Path = path) -> None:
            Journal(path).close()

        assert _all_at_once(OPENERS, open_it) == []
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert check.execute("PRAGMA user_version").fetchone()[0] > 0


def test_the_switch_gives_up_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # rollback-journal mode: nobody else may even read
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        began = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            use_wal(other, 0.2)
        waited = time.monotonic() - began
        assert 0.1 <= waited < 5  # it did wait, and it did stop
        holder.execute("COMMIT")
        assert use_wal(other, 0.2) == "wal"  # free again: the switch goes through
    finally:
        other.close()
        holder.close()


def test_other_errors_are_not_waited_on(tmp_path: Path) -> None:
    path = tmp_path / "not-a-database.db"
    path.write_bytes(b"this is not a SQLite file, just text long enough to have a header" * 4)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        began = time.monotonic()
        with pytest.raises(sqlite3.DatabaseError, match="not a database"):
            use_wal(connection, 30)
        assert time.monotonic() - began < 5
    finally:
        connection.close()


def test_a_database_in_memory_keeps_its_mode() -> None:
    connection = sqlite3.connect(":memory:")
    try:
        assert use_wal(connection, 1) == "memory"
    finally:
        connection.close()
