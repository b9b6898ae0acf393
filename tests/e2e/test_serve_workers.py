"""`kessai serve --workers 2`: connections spread over the workers; dead workers are replaced.

Which worker holds a connection is read from the kernel: the server side of every established
connection is found in /proc/net/tcp by its ports, and its socket inode among the file
descriptors of each worker process (/proc/PID/fd). Linux only, like the production servers.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from kessai.adapters.db import OS_THREAD_NAMES

from .support import KESSAI, base_env, free_port, sqlite_url, stop_process, tail, wait_healthy

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    # Starting two spawned workers takes several seconds, much longer on a busy machine.
    pytest.mark.timeout(600),
]

CONNECTIONS = 64
START_TIMEOUT = 180.0
ANSWER_TIMEOUT = 120.0
WRITER = OS_THREAD_NAMES["writer"]
LISTEN, ESTABLISHED = "0A", "01"


# --- the server and its workers -------------------------------------------------------------------


@dataclass
class Served:
    """A `kessai serve --workers N` process on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    workers: int

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        """The log so far."""
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The worker processes: children started by multiprocessing's spawn."""
        return sorted(pid for pid in _children(self.process.pid) if _is_spawned(pid))

    def wait_ready(self, timeout: float = START_TIMEOUT) -> list[int]:
        """Wait until ``workers`` workers run, each has finished its startup, and /healthz answers.

        Answers the workers' pids.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise AssertionError(f"kessai serve exited {code}:\n{self.tail()}")
            pids = self.worker_pids()
            text = self.log_text()
            started = all(f"Started server process [{pid}]" in text for pid in pids)
            complete = text.count("Application startup complete") >= text.count(
                "Started server process"
            )
            if len(pids) == self.workers and started and complete and self._healthy():
                return pids
            time.sleep(0.3)
        raise AssertionError(f"the workers did not start within {timeout}s:\n{self.tail()}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=10).status_code == 200
        except httpx.TransportError:
            return False

    def tail(self) -> str:
        """The end of the log, for failure messages."""
        return tail(self.log, 60)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _parent(int(entry.name)) == pid:
            found.append(int(entry.name))
    return found


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (in parentheses) may contain spaces: the fields start after it.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _is_spawned(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs; answers those still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _running(pid)]
        if not alive:
            return []
        time.sleep(0.2)
    return [pid for pid in pids if _running(pid)]


@contextlib.contextmanager
def serving(
    tmp_path: Path, workers: int = 2, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """Start `kessai serve --workers N` on a free port; stop it, and any worker it left, after.

    ``env`` adds to (or overrides) the test environment's variables.
    """
    database = sqlite_url(tmp_path / "k.db")
    last: AssertionError | None = None
    for attempt in range(3):  # the free port can be taken between probe and bind
        port = free_port()
        log = tmp_path / f"serve-{attempt}.log"
        command = [KESSAI, "serve", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--database", database, "--workers", str(workers)]
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, env={**base_env(), **(env or {})}, stdout=sink, stderr=subprocess.STDOUT
            )
        served = Served(process, port, log, workers)
        seen: set[int] = set()
        try:
            wait_healthy(served.base_url, process, log, timeout=START_TIMEOUT)
            seen.update(served.wait_ready())
        except (RuntimeError, AssertionError) as exc:
            seen.update(served.worker_pids())
            _stop(served, seen)
            last = AssertionError(str(exc))
            continue
        try:
            yield served
        finally:
            seen.update(served.worker_pids())
            _stop(served, seen)
        return
    raise AssertionError(f"kessai serve --workers {workers} did not start: {last}")


def _stop(served: Served, workers: set[int]) -> None:
    stop_process(served.process, timeout=60)
    # A test that fails may leave workers behind: never let them outlive it.
    for pid in workers:
        if _running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- connections and who holds them -------------------------------------------------------------


class TcpRow(NamedTuple):
    """One socket of /proc/net/tcp (or tcp6)."""

    local_port: int
    remote_port: int
    state: str
    queued: int  # for a listening socket: connections waiting to be accepted
    inode: int


def _tcp_table() -> list[TcpRow]:
    """Every IPv4 and IPv6 TCP socket of this network namespace."""
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(name).read_text().splitlines()[1:]:
                fields = line.split()
                rows.append(
                    TcpRow(
                        local_port=int(fields[1].rsplit(":", 1)[1], 16),
                        remote_port=int(fields[2].rsplit(":", 1)[1], 16),
                        state=fields[3],
                        queued=int(fields[4].split(":")[1], 16),
                        inode=int(fields[9]),
                    )
                )
    return rows


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets among the open file descriptors of ``pid``."""
    found = set()
    folder = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in folder.iterdir():
            with contextlib.suppress(OSError):
                match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
                if match:
                    found.add(int(match.group(1)))
    return found


def _listening_inodes(port: int) -> set[int]:
    return {row.inode for row in _tcp_table() if row.local_port == port and row.state == LISTEN}


def _wait_accepted(port: int, pid: int, timeout: float = ANSWER_TIMEOUT) -> None:
    """Wait until the listening sockets ``pid`` holds have no connection waiting to be accepted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = _socket_inodes(pid)
        waiting = [
            row.queued
            for row in _tcp_table()
            if row.local_port == port and row.state == LISTEN and row.inode in held
        ]
        if waiting and not any(waiting):
            return
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} did not accept its connections within {timeout}s")


def _holders(port: int, clients: list[socket.socket], pids: list[int]) -> dict[int, int]:
    """How many of ``clients``' connections each worker holds (every one must be held by one)."""
    server_side = {
        row.remote_port: row.inode
        for row in _tcp_table()
        if row.local_port == port and row.state == ESTABLISHED
    }
    inodes = {pid: _socket_inodes(pid) for pid in pids}
    counts = dict.fromkeys(pids, 0)
    for client in clients:
        inode = server_side.get(client.getsockname()[1])
        owners = [pid for pid in pids if inode in inodes[pid]]
        assert len(owners) == 1, f"connection {client.getsockname()} is held by {owners}"
        counts[owners[0]] += 1
    return counts


def _connect_all(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` connections in one burst, as a load balancer or a load generator does.

    The connects are non-blocking, so that all of them reach the server's accept queues within a
    moment, before a worker has had time to take its share.
    """
    made = []
    for _ in range(count):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        made.append(client)
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
    deadline = time.monotonic() + ANSWER_TIMEOUT
    for client in made:
        # Writable once connected (or failed: the error then shows in SO_ERROR).
        remaining = max(0.0, deadline - time.monotonic())
        _, writable, _ = select.select([], [client], [], remaining)
        assert writable, "a connection did not complete in time"
        error = client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        assert error == 0, os.strerror(error)
        client.setblocking(True)
        client.settimeout(ANSWER_TIMEOUT)
    return made


def _ask_all(clients: list[socket.socket]) -> None:
    """Send GET /healthz (keep-alive) on every connection, then read every answer: all 200."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for client in clients:
        client.sendall(request)
    for client in clients:
        status = _read_status(client)
        assert status == 200, f"GET /healthz answered {status}"


def _read_status(client: socket.socket) -> int:
    """Read one HTTP/1.1 response (headers and a Content-Length body); answers its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed before an answer: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        chunk = client.recv(4096)
        if not chunk:
            raise AssertionError("connection closed inside the body")
        body += chunk
    return int(lines[0].split()[1])


@contextlib.contextmanager
def connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` keep-alive connections that have each had an answer; closed afterwards."""
    clients = _connect_all(port, count)
    try:
        _ask_all(clients)
        yield clients
    finally:
        for client in clients:
            client.close()


# --- the tests ------------------------------------------------------------------------------------


def test_a_burst_of_keep_alive_connections_is_spread_over_both_workers(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        pids = served.wait_ready()
        with connections(served.port, CONNECTIONS) as clients:
            counts = _holders(served.port, clients, pids)
        _assert_fair(counts)

        # The same burst while one worker is not running (descheduled on a busy machine, or in
        # a long pause): from a shared socket, the other worker would accept the whole burst and
        # keep it. Each socket's connections wait for their own worker instead.
        paused, running = pids
        os.kill(paused, signal.SIGSTOP)
        try:
            clients = _connect_all(served.port, CONNECTIONS)
            _wait_accepted(served.port, running)
        finally:
            os.kill(paused, signal.SIGCONT)
        try:
            _ask_all(clients)
            counts = _holders(served.port, clients, pids)
        finally:
            for client in clients:
                client.close()
        _assert_fair(counts)


def _assert_fair(counts: dict[int, int]) -> None:
    # The kernel picks a socket by a hash of the client's address: with 64 connections, a worker
    # gets fewer than 16 about once in 40,000 bursts.
    assert sum(counts.values()) == CONNECTIONS, counts
    assert all(count >= CONNECTIONS // 4 for count in counts.values()), counts


def test_each_worker_listens_on_a_socket_of_its_own(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        pids = served.wait_ready()
        listening = _listening_inodes(served.port)
        own = {pid: _socket_inodes(pid) & listening for pid in pids}
        assert all(len(inodes) == 1 for inodes in own.values()), own
        assert len(set.union(*own.values())) == len(pids), own
        # The supervisor keeps a copy of every socket, for the workers that replace dead ones.
        assert _socket_inodes(served.process.pid) & listening == listening


def _cpus(pid: int) -> set[int]:
    """The CPUs every thread of ``pid`` may run on: all its threads must agree."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            found.append(os.sched_getaffinity(int(task.name)))
    assert found and all(cpus == found[0] for cpus in found), found
    return found[0]


def _policies(pid: int) -> dict[str, set[int]]:
    """The scheduling policies of ``pid``'s threads, by the threads' names in the kernel."""
    found: dict[str, set[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended
            name = (task / "comm").read_text(encoding="ascii").strip()
            found.setdefault(name, set()).add(os.sched_getscheduler(int(task.name)))
    return found


def _writers_started(served: Served, pids: list[int]) -> None:
    """Send /healthz on fresh connections until every worker has started its database writer.

    Each worker starts its writer thread with its first unit of work; a new connection lands on
    a worker by a hash of its address.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while not all(WRITER in _policies(pid) for pid in pids):
        assert time.monotonic() < deadline, {pid: _policies(pid) for pid in pids}
        assert httpx.get(f"{served.base_url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("pinned", [True, False])
def test_each_worker_is_kept_on_a_cpu_of_its_own_unless_told_not_to(
    tmp_path: Path, pinned: bool
) -> None:
    usable = os.sched_getaffinity(0)  # the server inherits this process's
    workers = max(2, len(usable))
    env = {} if pinned else {"KESSAI_PIN_WORKERS": "false"}
    with serving(tmp_path, workers, env) as served:
        pids = served.wait_ready()
        _writers_started(served, pids)
        # Every thread of each worker (its event loop, its database threads) on the same CPUs.
        held = sorted(_cpus(pid) for pid in pids)
        policies = [_policies(pid) for pid in pids]
    if pinned:
        # As many workers as CPUs: one CPU each, every CPU used.
        assert all(len(cpus) == 1 for cpus in held), held
        assert set().union(*held) == usable
        assert "Workers kept on CPUs" in served.log_text()
        # On a shared CPU only the database writer preempts the threads it wakes.
        for threads in policies:
            assert threads.pop(WRITER) == {os.SCHED_OTHER}, policies
            assert set().union(*threads.values()) == {os.SCHED_BATCH}, policies
    else:
        assert held == [usable] * workers
        assert "Workers kept on CPUs" not in served.log_text()
        for threads in policies:
            assert set().union(*threads.values()) == {os.SCHED_OTHER}, policies


def test_a_killed_worker_is_replaced_on_its_socket_and_sigterm_stops_everything(
    tmp_path: Path,
) -> None:
    with serving(tmp_path) as served:
        victim, survivor = served.wait_ready()
        listening = _listening_inodes(served.port)
        (victims_socket,) = _socket_inodes(victim) & listening

        cpus = _cpus(victim)
        os.kill(victim, signal.SIGKILL)
        # Connections made at once, while the replacement may still be starting: those hashed to
        # the dead worker's socket wait in its backlog and are answered all the same.
        with connections(served.port, 32):
            pass

        pids = served.wait_ready()
        assert victim not in pids
        assert survivor in pids
        (replacement,) = set(pids) - {survivor}
        assert f"Child process [{victim}] died" in served.log_text()
        assert _socket_inodes(replacement) & listening == {victims_socket}
        # On the CPUs of the worker it replaces (one of them when workers are pinned).
        assert _cpus(replacement) == cpus
        # And the port keeps answering, over both workers again.
        with connections(served.port, CONNECTIONS) as clients:
            counts = _holders(served.port, clients, pids)
        assert all(count > 0 for count in counts.values()), counts

        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=90) == 0, served.tail()
        assert _wait_gone(pids, timeout=30) == [], f"orphan workers:\n{served.tail()}"
        assert _listening_inodes(served.port) == set()
        text = served.log_text()
        assert f"Stopping parent process [{served.process.pid}]" in text
        assert text.count("Terminated child process") == len(pids), text


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    with serving(tmp_path) as served:
        pids = served.wait_ready()
        served.process.kill()
        served.process.wait(timeout=30)
        # Nobody would replace them or stop them any more: they stop by themselves.
        assert _wait_gone(pids, timeout=90) == [], served.tail()
        assert _listening_inodes(served.port) == set()
