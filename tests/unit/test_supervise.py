"""The `kessai serve --workers N` supervisor: its sockets, and its workers' lives, with tiny apps.

The supervisor runs on a thread of the test process and its workers are real spawned processes
serving the stub apps of ``supervise_stubs``. Timings are generous: a spawned worker may take
several seconds to start on a busy machine.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import supervise_stubs
import uvicorn
from uvicorn.config import STARTUP_FAILURE

from kessai.cli.supervise import Supervisor, listening_sockets, serve, usable_cpus, worker_cpus

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing"),
    pytest.mark.timeout(300),
]

WAIT = 120.0  # the longest any step may take on a loaded machine


# --- the sockets ----------------------------------------------------------------------------------


def test_the_sockets_share_one_port_and_the_kernel_splits_connections_between_them() -> None:
    sockets = listening_sockets("127.0.0.1", 0, 2, 128)
    clients: list[socket.socket] = []
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1
        (port,) = ports
        for sock in sockets:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        # Connections complete in the kernel and wait in a socket's queue: nobody accepts yet.
        clients = [socket.create_connection(("127.0.0.1", port), 10) for _ in range(64)]
        accepted = [_accept_all(sock) for sock in sockets]
        assert sum(accepted) == 64
        # Chosen by a hash of each client's address: fewer than 16 about once in 40,000 bursts.
        assert min(accepted) >= 16, accepted
    finally:
        for opened in [*clients, *sockets]:
            opened.close()


def _accept_all(sock: socket.socket) -> int:
    sock.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_a_port_another_server_listens_on_is_refused() -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(OSError) as raised:
            listening_sockets("127.0.0.1", other.getsockname()[1], 2, 128)
        assert raised.value.errno == errno.EADDRINUSE


def test_a_second_supervisor_on_the_same_port_is_refused_not_joined() -> None:
    # With SO_REUSEPORT alone the second group would quietly take half of the connections.
    first = listening_sockets("127.0.0.1", 0, 2, 128)
    try:
        with pytest.raises(OSError) as raised:
            listening_sockets("127.0.0.1", first[0].getsockname()[1], 2, 128)
        assert raised.value.errno == errno.EADDRINUSE
    finally:
        for sock in first:
            sock.close()


def test_serve_reports_a_port_in_use_as_a_startup_failure() -> None:
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        config = uvicorn.Config(
            "supervise_stubs:pid_app", port=other.getsockname()[1], workers=2, log_level="info"
        )
        assert serve(config) == STARTUP_FAILURE


# --- workers --------------------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Running:
    """A supervisor running on a thread, with its log lines."""

    supervisor: Supervisor
    port: int
    log: _Lines
    thread: threading.Thread
    status: list[int] = field(default_factory=list)
    seen_pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        """The workers' address."""
        return f"http://127.0.0.1:{self.port}/"

    def text(self) -> str:
        """The supervisor's log so far."""
        return "\n".join(self.log.lines)

    def pid_answering(self) -> int:
        """The process id of the worker that answers a new connection (waits for one)."""
        answer = httpx.get(self.url, timeout=WAIT)
        assert answer.status_code == 200
        pid = int(answer.text)
        self.seen_pids.add(pid)
        return pid

    def wait_finished(self, timeout: float = WAIT) -> int:
        """Wait until ``run`` returns; answers its exit status."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the supervisor is still running:\n{self.text()}"
        return self.status[0]


@contextlib.contextmanager
def supervised(
    app: str,
    workers: int,
    *,
    healthcheck: float = 60.0,
    stop_timeout: float = 30.0,
    startup_timeout: float = 120.0,
    cpus: list[frozenset[int] | None] | None = None,
) -> Iterator[Running]:
    """Run a supervisor of ``workers`` workers of ``supervise_stubs:<app>`` on a free port."""
    config = uvicorn.Config(
        f"supervise_stubs:{app}",
        host="127.0.0.1",
        port=0,
        workers=workers,
        lifespan="on",
        log_level="info",
        timeout_worker_healthcheck=int(healthcheck),
    )
    # uvicorn's logging is set up by Config(); listen to the supervisor's logger after it.
    log = _Lines()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(log)
    sockets = listening_sockets("127.0.0.1", 0, workers, 128)
    supervisor = Supervisor(
        config,
        sockets,
        ping_interval=0.2,
        stop_timeout=stop_timeout,
        startup_timeout=startup_timeout,
        cpus=cpus,
    )
    running = Running(supervisor, sockets[0].getsockname()[1], log, threading.Thread())
    running.thread = threading.Thread(target=lambda: running.status.append(supervisor.run()))
    running.thread.start()
    try:
        yield running
    finally:
        supervisor.request_stop()
        supervisor.request_stop()  # whatever still runs is killed at once
        running.thread.join(WAIT)
        supervisor.close()
        for sock in sockets:
            sock.close()
        logger.removeHandler(log)
        assert _gone(running.seen_pids), "workers outlived their supervisor"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _gone(pids: set[int], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while any(_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _freeze(running: Running) -> socket.socket:
    """Ask a worker for GET /freeze, which blocks its event loop; answers the open connection."""
    client = socket.create_connection(("127.0.0.1", running.port), timeout=WAIT)
    client.sendall(b"GET /freeze HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return client


def test_a_worker_that_fails_its_startup_stops_the_supervisor() -> None:
    with supervised("broken_app", 2) as running:
        assert running.wait_finished() == STARTUP_FAILURE
        assert "failed to start, stopping the parent process." in running.text()
        assert " died" not in running.text()


def test_a_worker_whose_event_loop_is_stuck_is_killed_and_replaced_on_its_socket() -> None:
    with supervised("pid_app", 1, healthcheck=10) as running:
        stuck = running.pid_answering()
        with _freeze(running):
            # This connection waits in the socket's queue while the worker is stuck, and is
            # answered by its replacement: nothing else listens on the port.
            replacement = running.pid_answering()
        assert replacement != stuck
        assert _gone({stuck})
        assert f"Child process [{stuck}] left the health check unanswered" in running.text()
        assert f"Child process [{stuck}] died" in running.text()
        assert running.supervisor.pids() == [replacement]
    assert running.wait_finished() == 0


def test_a_worker_stuck_in_its_startup_is_killed_and_replaced_on_its_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its ping thread keeps answering "starting", so only the startup deadline catches it.
    monkeypatch.setenv(supervise_stubs.STUCK_MARKER, str(tmp_path / "first-worker-started"))
    with supervised("stuck_once_app", 1, healthcheck=3, startup_timeout=3) as running:
        # Queued on the socket while the first worker is stuck; its replacement answers it.
        replacement = running.pid_answering()
        (killed,) = re.findall(
            r"Child process \[(\d+)\] was not serving \d+ s after", running.text()
        )
        assert int(killed) != replacement
        assert _gone({int(killed)})
        assert f"Child process [{killed}] died" in running.text()
        assert running.supervisor.pids() == [replacement]
    assert running.wait_finished() == 0


def test_a_restart_replaces_every_worker_each_after_its_successor_serves() -> None:
    with supervised("pid_app", 1) as running:
        old = running.pid_answering()
        running.supervisor.request_restart()
        # While both run they share the socket; the old one stops once the new one serves.
        deadline = time.monotonic() + WAIT
        while running.supervisor.pids() == [old]:
            assert time.monotonic() < deadline, running.text()
            time.sleep(0.1)
        (new,) = running.supervisor.pids()
        running.seen_pids.add(new)
        assert new != old
        assert _gone({old})
        assert running.pid_answering() == new
        assert f"Terminated child process [{old}]" in running.text()
        assert " died" not in running.text()
    assert running.wait_finished() == 0


def test_a_worker_that_does_not_stop_is_killed_after_the_stop_timeout() -> None:
    # A worker whose event loop is stuck cannot act on SIGTERM.
    with supervised("pid_app", 1, stop_timeout=2) as running:
        stuck = running.pid_answering()
        with _freeze(running):
            time.sleep(1)  # let the request reach the app
            running.supervisor.request_stop()
            assert running.wait_finished() == 0
        assert _gone({stuck})
        assert f"Child process [{stuck}] has not stopped; killing it" in running.text()


def test_asking_twice_to_stop_kills_at_once() -> None:
    with supervised("pid_app", 1, stop_timeout=3600) as running:
        stuck = running.pid_answering()
        with _freeze(running):
            time.sleep(1)
            running.supervisor.request_stop()
            running.supervisor.request_stop()
            # Well before the hour the stop timeout would otherwise allow.
            assert running.wait_finished() == 0
        assert _gone({stuck})


def test_each_worker_holds_one_listening_socket_of_its_own() -> None:
    with supervised("pid_app", 2) as running:
        listening = {os.fstat(sock.fileno()).st_ino for sock in running.supervisor.sockets}
        deadline = time.monotonic() + WAIT
        while True:
            pids = running.supervisor.pids()
            running.seen_pids.update(pids)
            held = {pid: _socket_inodes(pid) & listening for pid in pids}
            if len(held) == 2 and all(held.values()):
                break  # both workers have received their socket
            assert time.monotonic() < deadline, running.text()
            time.sleep(0.1)
        assert all(len(inodes) == 1 for inodes in held.values()), held
        assert set.union(*held.values()) == listening


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets among the open file descriptors of ``pid`` (none if it is gone)."""
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return set()
    found = set()
    for fd in descriptors:
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(int(target[len("socket:[") : -1]))
    return found


# --- CPUs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "usable", "expected"),
    [
        (2, {0, 1}, [{0}, {1}]),
        (4, {0, 1}, [{0}, {1}, {0}, {1}]),  # more workers than CPUs: in turn
        (3, {7, 2, 5}, [{2}, {5}, {7}]),  # the CPUs this process may use, whichever they are
        (2, {3}, [{3}, {3}]),
        (1, {0, 1}, [None]),  # fewer workers than CPUs: a worker may use several at once
        (2, {0, 1, 2, 3}, [None, None]),
        (2, set(), [None, None]),
    ],
)
def test_workers_are_given_a_cpu_each_only_when_they_are_at_least_as_many(
    workers: int, usable: set[int], expected: list[set[int] | None]
) -> None:
    assert worker_cpus(workers, usable) == expected


def test_a_system_that_cannot_tell_its_cpus_pins_no_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert usable_cpus() == frozenset(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS and Windows
    assert usable_cpus() == frozenset()
    assert worker_cpus(2, usable_cpus()) == [None, None]


def _affinities(pid: int) -> list[set[int]]:
    """The CPUs each thread of ``pid`` may run on."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            found.append(os.sched_getaffinity(int(task.name)))
    return found


def _policies(pid: int) -> set[int]:
    """The scheduling policies of ``pid``'s threads."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            found.add(os.sched_getscheduler(int(task.name)))
    return found


def test_a_worker_and_its_replacement_run_on_the_cpus_given_for_its_socket() -> None:
    usable = os.sched_getaffinity(0)
    one = min(usable)
    with supervised("pid_app", 2, healthcheck=10, cpus=[frozenset({one}), None]) as running:
        deadline = time.monotonic() + WAIT
        # Each worker pins itself first thing, then starts its ping thread: two threads or more
        # mean the pinning is done.
        while len(running.supervisor.pids()) < 2 or not all(
            len(_affinities(pid)) > 1 for pid in running.supervisor.pids()
        ):
            assert time.monotonic() < deadline, running.text()
            time.sleep(0.1)
        pinned, free = running.supervisor.pids()
        running.seen_pids.update({pinned, free})
        # Every thread of the first, the ones it started after being pinned among them.
        threads = _affinities(pinned)
        assert len(threads) > 1 and all(cpus == {one} for cpus in threads), threads
        assert all(cpus == usable for cpus in _affinities(free))
        # A pinned worker's threads yield its CPU to a database writer (this app starts none).
        assert _policies(pinned) == {os.SCHED_BATCH}
        assert _policies(free) == {os.SCHED_OTHER}
        os.kill(pinned, signal.SIGKILL)
        while running.supervisor.pids()[0] == pinned:
            assert time.monotonic() < deadline, running.text()
            time.sleep(0.1)
        replacement = running.supervisor.pids()[0]
        running.seen_pids.add(replacement)
        while len(_affinities(replacement)) < 2:
            assert time.monotonic() < deadline, running.text()
            time.sleep(0.1)
        assert all(cpus == {one} for cpus in _affinities(replacement))
        assert _policies(replacement) == {os.SCHED_BATCH}


def test_a_supervisor_needs_a_cpu_set_for_each_socket() -> None:
    config = uvicorn.Config("supervise_stubs:pid_app", workers=2)
    sockets = listening_sockets("127.0.0.1", 0, 2, 128)
    try:
        with pytest.raises(ValueError, match="1 CPU sets for 2 sockets"):
            Supervisor(config, sockets, cpus=[None])
    finally:
        for sock in sockets:
            sock.close()


def test_a_cpu_the_worker_may_not_use_leaves_it_unpinned_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kessai.cli.supervise import _pin  # noqa: PLC0415 - the worker's own step

    before = os.sched_getaffinity(0)
    missing = max(before) + 4096  # no such CPU: the kernel refuses it
    with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
        _pin(frozenset({missing}))
    assert os.sched_getaffinity(0) == before
    assert f"not kept on CPU [{missing}]" in caplog.text


def test_a_policy_refused_leaves_the_worker_as_it_was_and_says_so(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kessai.cli.supervise import _yield_to_the_writer  # noqa: PLC0415 - the worker's own step

    def refuse(pid: int, policy: int, param: os.sched_param) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
        _yield_to_the_writer()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert "left at the normal scheduling policy: [Errno 1] Operation not permitted" in caplog.text
