"""Times each SQLite group's phases in a `kessai serve` process, for bench/phases.py.

bench/phases.py puts this folder first on PYTHONPATH and names a folder in
``KESSAI_BENCH_PHASES``; Python then imports this module at the start of every process of the
server (the supervisor and each spawned worker). Without that variable it does nothing. With it,
it wraps the writer thread's steps in ``kessai.adapters.db`` (none of the gateway's code changes)
and writes, per group of units, when each unit was queued and when the group was taken up, got
the writer lock, let it go, had the WAL flushed and was handed back to the event loop; and when
each checkpoint ran. One JSON object per line, in ``<folder>/phases-<pid>.jsonl``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

_FOLDER = os.environ.get("KESSAI_BENCH_PHASES")
# How often answered groups are written out, and how long a group may wait for its answer.
_WRITE_EVERY_SECONDS = 0.5
_GIVE_UP_SECONDS = 10.0


def _install(folder: str) -> None:
    from kessai.adapters import db  # noqa: PLC0415 - only in a traced server

    clock = time.monotonic
    queued: dict[int, float] = {}  # id(unit) -> when it was queued
    current: dict[int, dict[str, Any]] = {}  # writer thread -> the group it runs
    waking: dict[int, dict[str, Any]] = {}  # id(waiter) -> its group's record
    records: list[dict[str, Any]] = []
    checkpoints: list[tuple[float, float]] = []
    lock = threading.Lock()
    path = os.path.join(folder, f"phases-{os.getpid()}.jsonl")

    def write() -> None:
        stale = clock() - _GIVE_UP_SECONDS
        done: list[dict[str, Any]] = []
        waiting: list[dict[str, Any]] = []
        with lock:
            for record in records:
                finished = "answered" in record or record["taken"] < stale
                (done if finished else waiting).append(record)
            records[:] = waiting
            spans = checkpoints[:]
            checkpoints.clear()
        if not done and not spans:
            return
        with open(path, "a", encoding="utf-8") as out:
            for record in done:
                out.write(json.dumps(record) + "\n")
            for start, end in spans:
                out.write(json.dumps({"checkpoint": [start, end]}) + "\n")

    put = db._SqliteWriter._put

    def traced_put(self: Any, unit: Any) -> None:
        queued[id(unit)] = clock()
        put(self, unit)

    run_group = db._SqliteWriter._run_group

    def traced_run_group(self: Any, group: list[Any], lock_fd: int | None) -> Any:
        record: dict[str, Any] = {"taken": clock()}
        current[threading.get_ident()] = record
        outcomes = run_group(self, group, lock_fd)
        record["queued"] = [queued.pop(id(unit), None) for unit in group]
        return outcomes

    flocked = db._flocked

    @contextlib.contextmanager
    def traced_flocked(fd: int | None) -> Iterator[None]:
        record = current.get(threading.get_ident(), {})
        with flocked(fd):
            if fd is not None:
                record["locked"] = clock()
                record["locked_cpu"] = time.thread_time()
            try:
                yield
            finally:
                if fd is not None:
                    record["unlocking"] = clock()
                    record["unlocking_cpu"] = time.thread_time()
        if fd is not None:
            record["unlocked"] = clock()

    made_durable = db._SqliteWriter._made_durable

    def traced_made_durable(self: Any, outcomes: Any, *, wrote: bool) -> Any:
        record = current.get(threading.get_ident(), {})
        answer = made_durable(self, outcomes, wrote=wrote)
        record["flushed"] = clock()
        return answer

    settle = db._SqliteWriter._settle

    def traced_settle(group: list[Any], outcomes: Any) -> None:
        record = current.pop(threading.get_ident(), None)
        if record is not None and "queued" in record:
            for unit in group:
                if unit.waiter is not None:
                    waking[id(unit.waiter)] = record
            with lock:
                records.append(record)
        settle(group, outcomes)

    settle_waiters = db._settle_waiters

    def traced_settle_waiters(outcomes: list[tuple[Any, bool, Any]]) -> None:
        now = clock()
        for waiter, _, _ in outcomes:
            record = waking.pop(id(waiter), None)
            if record is not None:
                record.setdefault("answered", now)
        settle_waiters(outcomes)

    checkpoint = db._Checkpointer._checkpoint

    def traced_checkpoint(self: Any) -> None:
        start = clock()
        try:
            checkpoint(self)
        finally:
            with lock:
                checkpoints.append((start, clock()))

    def write_answered() -> None:
        # Groups are written once answered (or after a while, should an answer never come), so
        # the file is complete shortly after the load stops, however the process then ends.
        while True:
            time.sleep(_WRITE_EVERY_SECONDS)
            write()

    patches: list[tuple[Any, str, Callable[..., Any]]] = [
        (db._SqliteWriter, "_put", traced_put),
        (db._SqliteWriter, "_run_group", traced_run_group),
        (db._SqliteWriter, "_made_durable", traced_made_durable),
        (db._SqliteWriter, "_settle", staticmethod(traced_settle)),
        (db._Checkpointer, "_checkpoint", traced_checkpoint),
        (db, "_flocked", traced_flocked),
        (db, "_settle_waiters", traced_settle_waiters),
    ]
    for owner, name, replacement in patches:
        if not hasattr(owner, name):
            raise RuntimeError(f"bench/phasehook: kessai.adapters.db has no {name} to time")
        setattr(owner, name, replacement)
    threading.Thread(target=write_answered, name="phases-writer", daemon=True).start()
    atexit.register(write)


if _FOLDER:
    _install(_FOLDER)
