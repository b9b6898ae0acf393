"""`kessai serve --workers N`: N worker processes, each accepting on a listening socket of its own.

uvicorn's own supervisor binds one socket that every worker accepts from. A burst of new keep-alive
connections (a load balancer filling its pool, a shop's terminals reconnecting after a network blip)
then lands mostly on whichever worker wakes first, and stays there while the others idle. Here each
worker gets its own socket on the same address, opened with SO_REUSEPORT, and the kernel spreads new
connections over the sockets by a hash of their addresses, whoever happens to be awake.

With at least as many workers as CPUs, each worker is kept on a CPU of its own (``worker_cpus``),
and its threads other than the database writer yield that CPU to it (``_yield_to_the_writer``).

The supervisor keeps its own copy of every socket for the whole run. A worker that dies is
replaced on the same socket, so the connections queued on it wait for the replacement instead of
being refused. Workers are started with multiprocessing's "spawn" context, like uvicorn's, and log
with uvicorn's wording ("Started parent process", "Child process [PID] died", …), which operators
and the bench (`bench/harness.py`) read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

logger = logging.getLogger("uvicorn.error")

# SO_REUSEPORT balances connections over a group of listening sockets only on Linux; elsewhere
# `kessai serve` keeps uvicorn's own supervisor.
SUPPORTED = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")

# How often every worker is asked whether it is alive; an unanswered question is not repeated.
PING_INTERVAL_SECONDS = 1.0
# How long stopping workers may take to finish their requests before they are killed: above the
# longest provider call (30 s), so that a payment in flight gets its answer recorded.
STOP_TIMEOUT_SECONDS = 35.0

# How long a worker's startup may last before it is killed and replaced: far above a normal
# start on a busy machine (imports, opening the database; about 10 s at worst), so that only a
# startup stuck for good is cut short.
STARTUP_TIMEOUT_SECONDS = 120.0

_SPAWN = multiprocessing.get_context("spawn")
_PING = b"?"
_STARTING = b"0"
_SERVING = b"1"


# --- the sockets --------------------------------------------------------------------------------


def listening_sockets(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """``count`` listening TCP sockets on the same ``host``:``port``, joined by SO_REUSEPORT.

    Port 0 picks one free port for all of them. Raises OSError when the address cannot be used,
    in particular when another server already listens on it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # SO_REUSEPORT would let a second server of the same user join the group silently and take
    # part of the connections. A plain bind first fails, as it always did, on a port in use.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = int(probe.getsockname()[1])
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            # Listening now, not when a worker is up, lets connections that arrive while workers
            # start wait in the backlog instead of being refused.
            sock.listen(backlog)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made


# --- a worker process ---------------------------------------------------------------------------


class _WorkerServer(uvicorn.Server):
    """uvicorn's server, keeping its event loop so that health checks can be answered on it."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving, remembering the loop."""
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)


def _answer_pings(server: _WorkerServer, conn: Connection) -> None:
    """Answer the supervisor's pings: "starting" from this thread, "serving" from the event loop.

    Once the server serves, the answer goes through its event loop: a worker whose loop is stuck
    accepts nothing, and since its socket is its own, nobody else would take its connections.
    """
    lock = threading.Lock()

    def reply(answer: bytes) -> None:
        # An OSError means the supervisor is gone; the next receive notices.
        with lock, contextlib.suppress(OSError):
            conn.send_bytes(answer)

    while True:
        try:
            conn.recv_bytes()
        except (EOFError, OSError):
            # The supervisor died (SIGKILL, say): stop rather than linger as an orphan that
            # nobody supervises and that keeps the port.
            server.should_exit = True
            return
        loop = server.loop
        if server.started and loop is not None:
            try:
                loop.call_soon_threadsafe(reply, _SERVING)
            except RuntimeError:
                return  # the loop has closed: the worker is on its way out
        else:
            reply(_STARTING)


def worker_cpus(workers: int, usable: Collection[int]) -> list[frozenset[int] | None]:
    """The CPUs each worker's threads are kept on, by slot; None leaves a worker free to move.

    Only when there are at least as many workers as ``usable`` CPUs (those this process may run
    on) is each worker given one, in turn. A worker's event loop hands every unit of work to its
    database writer thread and takes the answer back; on one CPU the two share its caches, and
    the process's working set stays in that CPU's cache instead of following its threads from one
    CPU to the other (on the bench's two cores, REQUEST/s rose 4-9 %). With fewer workers than
    CPUs, a worker's threads could use more than one CPU at once, and none is pinned.
    """
    cpus = sorted(usable)
    if not cpus or workers < len(cpus):
        return [None] * workers
    return [frozenset({cpus[slot % len(cpus)]}) for slot in range(workers)]


def usable_cpus() -> frozenset[int]:
    """The CPUs this process may run on; none where the system cannot tell (macOS, Windows).

    With none, ``worker_cpus`` pins nobody: there is no affinity to set there either.
    """
    affinity = getattr(os, "sched_getaffinity", None)
    return frozenset() if affinity is None else frozenset(affinity(0))


def _each_thread(apply: Callable[[int], None]) -> None:
    """Call ``apply`` with the id of each thread this process has now.

    For a setting a new thread takes from its creator (CPU affinity, scheduling policy): set here
    before the worker starts any thread of its own, it holds for every later one too.
    """
    for task in os.listdir("/proc/self/task"):
        apply(int(task))


def _pin(cpus: frozenset[int]) -> None:
    """Keep every thread of this process, and those it starts later, on ``cpus``.

    A refusal (a CPU taken away meanwhile) leaves the worker unpinned, and says so.
    """
    try:
        _each_thread(lambda task: os.sched_setaffinity(task, cpus))
    except OSError as exc:
        logger.warning("Worker [%d] not kept on CPU %s: %s", os.getpid(), sorted(cpus), exc)


def _yield_to_the_writer() -> None:
    """Run this process's threads under SCHED_BATCH; the database writer leaves it as it starts.

    A pinned worker's event loop and SQLite writer share one CPU. The writer hands the GIL over
    at each SQLite call, which wakes the loop if it waits for it; under the normal policy the
    woken loop took the CPU from the writer at once, while the writer held the lock every process
    waits for (at saturation about a fifth of the time under it was spent off the CPU). A thread
    under SCHED_BATCH does not preempt the running one when it wakes: the writer keeps the CPU
    until it blocks or its turn ends. Threads started later take this policy from their creator;
    the writer takes the normal one back (``kessai.adapters.db.leave_batch_policy``). A refusal
    leaves the policy as it was, and says so.
    """
    try:
        _each_thread(lambda task: os.sched_setscheduler(task, os.SCHED_BATCH, os.sched_param(0)))
    except OSError as exc:
        logger.warning("Worker [%d] left at the normal scheduling policy: %s", os.getpid(), exc)


def _work(
    config: uvicorn.Config,
    sock: socket.socket,
    conn: Connection,
    cpus: frozenset[int] | None = None,
) -> None:
    """The body of a worker process: serve on ``sock`` until told to stop, on ``cpus`` if given."""
    # Logging is set up again in each child, as uvicorn does for its workers.
    config.configure_logging()
    if cpus is not None:
        # Before any thread is started, so that every one the worker starts (its database
        # writer, the checkpointer, the ping thread below) inherits both.
        _pin(cpus)
        _yield_to_the_writer()
    server = _WorkerServer(config)
    threading.Thread(
        target=_answer_pings, args=(server, conn), name="kessai-healthcheck", daemon=True
    ).start()
    # Ctrl+C reaches the whole process group: the supervisor handles it, no traceback here.
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])


# --- the supervisor -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    """A worker process as the supervisor sees it."""

    slot: int  # the index of its socket
    process: BaseProcess
    conn: Connection
    born_at: float
    ping_sent_at: float | None = None
    answered_at: float = 0.0
    serving: bool = False  # it has answered that its server is serving
    conn_open: bool = True
    killed: bool = False
    retired_at: float | None = None  # when it was told to stop, after its replacement started

    @property
    def pid(self) -> int:
        """The process id (the process has been started)."""
        assert self.process.pid is not None
        return self.process.pid


class Supervisor:
    """Keeps one worker process serving on each listening socket until asked to stop.

    ``config.timeout_worker_healthcheck`` bounds how long a worker may leave a ping unanswered,
    counted from its start too: a worker still starting is never killed within that time.
    ``startup_timeout`` bounds its startup: a worker not serving that long after its start is
    killed and replaced, even though its ping thread still answers.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket.socket],
        *,
        ping_interval: float = PING_INTERVAL_SECONDS,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
        startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
        cpus: Sequence[frozenset[int] | None] | None = None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        # The CPUs each slot's worker is kept on (``worker_cpus``); None: no worker is pinned.
        self.cpus = list(cpus) if cpus is not None else [None] * len(sockets)
        if len(self.cpus) != len(sockets):
            raise ValueError(f"{len(self.cpus)} CPU sets for {len(sockets)} sockets")
        self.healthcheck_seconds = float(config.timeout_worker_healthcheck)
        self.ping_interval = ping_interval
        self.stop_timeout = stop_timeout
        self.startup_timeout = max(startup_timeout, self.healthcheck_seconds)
        self.exit_code = 0
        self._slots: list[_Worker] = []
        self._incoming: dict[int, _Worker] = {}  # replacements starting after a restart request
        self._outgoing: list[_Worker] = []  # replaced workers finishing their requests
        self._signals: list[int] = []
        self._stop = threading.Event()
        self._hurry = threading.Event()  # asked to stop again: kill what has not stopped yet
        self._restart = threading.Event()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)

    # -- requests, from signal handlers or other threads ------------------------------------------

    def request_stop(self) -> None:
        """Stop every worker and return from ``run``; asked twice, kill those still stopping."""
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()
        self._wake()

    def request_restart(self) -> None:
        """Replace every worker by a new one, each retired only once its successor serves."""
        self._restart.set()
        self._wake()

    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        """A signal handler: SIGINT and SIGTERM stop, SIGHUP restarts the workers."""
        self._signals.append(signum)  # logged by the loop: no logging inside a signal handler
        if signum == signal.SIGHUP:
            self.request_restart()
        else:
            self.request_stop()

    def _wake(self) -> None:
        # OSError: the channel is full (a wake-up is pending anyway) or closed.
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"!")

    def _drain_wake(self) -> None:
        try:
            while self._wake_reader.recv(512):
                pass
        except OSError:
            pass

    def _log_signals(self) -> None:
        while self._signals:
            name = signal.Signals(self._signals.pop(0)).name
            action = "restarting processes" if name == "SIGHUP" else "exiting"
            logger.info("Received %s, %s.", name, action)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and keep them serving until asked to stop; answers the exit status."""
        logger.info("Started parent process [%d]", os.getpid())
        try:
            for slot in range(len(self.sockets)):
                self._slots.append(self._spawn(slot))
            while not self._stop.is_set():
                self._step()
            self._log_signals()
        finally:
            self._stop_all()
            logger.info("Stopping parent process [%d]", os.getpid())
        return self.exit_code

    def pids(self) -> list[int]:
        """The process ids of the workers serving the sockets, in the sockets' order."""
        return [worker.pid for worker in self._slots]

    def close(self) -> None:
        """Release the wake-up channel (the sockets belong to the caller)."""
        self._wake_reader.close()
        self._wake_writer.close()

    def _watched(self) -> list[_Worker]:
        """The workers that must answer pings: those serving a socket and their successors."""
        return [*self._slots, *self._incoming.values()]

    def _step(self) -> None:
        now = time.monotonic()
        for worker in self._watched():
            if worker.ping_sent_at is None and now - worker.answered_at >= self.ping_interval:
                self._ping(worker, now)
        handles: list[Connection | socket.socket | int] = [self._wake_reader]
        for worker in [*self._watched(), *self._outgoing]:
            handles.append(worker.process.sentinel)
            if worker.conn_open:
                handles.append(worker.conn)
        wait(handles, timeout=self.ping_interval)
        self._drain_wake()
        self._log_signals()
        now = time.monotonic()
        for worker in self._watched():
            self._read_answers(worker, now)
        if self._restart.is_set():
            self._restart.clear()
            self._begin_restart()
        self._promote_successors()
        self._reap()
        if not self._stop.is_set():
            self._kill_unresponsive(now)

    def _spawn(self, slot: int) -> _Worker:
        parent_end, child_end = _SPAWN.Pipe()
        process = _SPAWN.Process(
            target=_work,
            args=(self.config, self.sockets[slot], child_end, self.cpus[slot]),
            name=f"worker-{slot}",
        )
        process.start()
        # Only the child keeps this end: once the child is gone, our receives end in EOF.
        child_end.close()
        now = time.monotonic()
        worker = _Worker(slot, process, parent_end, born_at=now)
        # The first ping goes at once, so that the health check deadline counts from the start.
        self._ping(worker, now)
        return worker

    def _ping(self, worker: _Worker, now: float) -> None:
        worker.ping_sent_at = now
        if not worker.conn_open:
            return
        try:
            worker.conn.send_bytes(_PING)
        except OSError:
            worker.conn_open = False  # the child is gone; its sentinel tells

    def _read_answers(self, worker: _Worker, now: float) -> None:
        if not worker.conn_open:
            return
        try:
            while worker.conn.poll():
                answer = worker.conn.recv_bytes()
                worker.ping_sent_at = None
                worker.answered_at = now
                worker.serving = worker.serving or answer == _SERVING
        except (EOFError, OSError):
            worker.conn_open = False

    def _begin_restart(self) -> None:
        for slot in range(len(self._slots)):
            if slot not in self._incoming:
                self._incoming[slot] = self._spawn(slot)

    def _promote_successors(self) -> None:
        for slot, successor in list(self._incoming.items()):
            if not successor.serving or not successor.process.is_alive():
                continue
            retired = self._slots[slot]
            self._slots[slot] = successor
            del self._incoming[slot]
            self._terminate(retired)
            retired.retired_at = time.monotonic()
            self._outgoing.append(retired)

    def _reap(self) -> None:
        for worker in list(self._outgoing):
            if not worker.process.is_alive():
                self._release(worker)
                self._outgoing.remove(worker)
        for slot, successor in list(self._incoming.items()):
            if not successor.process.is_alive():
                self._release(successor)
                del self._incoming[slot]
                logger.error(
                    "Child process [%d] died before it served; keeping worker [%d]",
                    successor.pid,
                    self._slots[slot].pid,
                )
        for slot, worker in enumerate(self._slots):
            if worker.process.is_alive():
                continue
            self._release(worker)
            if self._stop.is_set():
                continue
            if worker.process.exitcode == STARTUP_FAILURE and not worker.serving:
                # Its app, or something it needs at startup, is broken: a replacement would fail
                # the same way, again and again. uvicorn's supervisor stops here too.
                logger.error(
                    "Child process [%d] failed to start, stopping the parent process.", worker.pid
                )
                self.exit_code = STARTUP_FAILURE
                self.request_stop()
                continue
            logger.info("Child process [%d] died", worker.pid)
            # A successor already starting (after SIGHUP) takes the socket over.
            waiting = self._incoming.pop(slot) if slot in self._incoming else None
            self._slots[slot] = waiting if waiting is not None else self._spawn(slot)

    def _kill_unresponsive(self, now: float) -> None:
        for worker in self._slots:
            # Its ping thread answers "starting" for as long as its startup lasts: a startup
            # stuck for good (a lock never granted, a hung connection) would strand its socket.
            late = now - worker.born_at > self.startup_timeout
            if late and not worker.killed and not worker.serving:
                logger.error(
                    "Child process [%d] was not serving %d s after it started; killing it",
                    worker.pid,
                    int(now - worker.born_at),
                )
                self._kill(worker)
        for worker in self._watched():
            if worker.killed or worker.ping_sent_at is None:
                continue
            if now - worker.ping_sent_at <= self.healthcheck_seconds:
                continue
            logger.warning(
                "Child process [%d] left the health check unanswered for %d s; killing it",
                worker.pid,
                int(now - worker.ping_sent_at),
            )
            self._kill(worker)
        for slot, successor in self._incoming.items():
            if not successor.killed and now - successor.born_at > self.healthcheck_seconds:
                logger.error(
                    "Child process [%d] was not ready in time; keeping worker [%d]",
                    successor.pid,
                    self._slots[slot].pid,
                )
                self._kill(successor)
        for worker in self._outgoing:
            stopping_since = worker.retired_at or now
            if not worker.killed and now - stopping_since > self.stop_timeout:
                self._kill(worker)

    def _terminate(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            os.kill(worker.pid, signal.SIGTERM)
            logger.info("Terminated child process [%d]", worker.pid)

    def _kill(self, worker: _Worker) -> None:
        # The sentinel becomes ready once it is dead; the next step reaps and replaces it.
        worker.killed = True
        worker.process.kill()

    def _release(self, worker: _Worker) -> None:
        worker.process.join()
        worker.conn.close()
        worker.conn_open = False

    def _stop_all(self) -> None:
        everyone = [*self._slots, *self._incoming.values(), *self._outgoing]
        for worker in everyone:
            if worker.retired_at is None:
                self._terminate(worker)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and not self._hurry.is_set():
            alive = [worker for worker in everyone if worker.process.is_alive()]
            if not alive:
                break
            handles: list[Connection | socket.socket | int] = [self._wake_reader]
            handles += [worker.process.sentinel for worker in alive]
            wait(handles, timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            self._drain_wake()
        for worker in everyone:
            if worker.process.is_alive():
                logger.warning("Child process [%d] has not stopped; killing it", worker.pid)
                worker.process.kill()
        for worker in everyone:
            self._release(worker)
        self._slots, self._incoming, self._outgoing = [], {}, []


# --- the entry point ----------------------------------------------------------------------------


def serve(config: uvicorn.Config, *, pin: bool = False) -> int:
    """Serve ``config``'s app with ``config.workers`` workers until SIGINT or SIGTERM.

    SIGHUP replaces the workers one socket at a time, each old one stopping once its successor
    serves. With ``pin``, workers are kept on CPUs as ``worker_cpus`` decides (a replacement on
    its predecessor's), each with its threads but the database writer under SCHED_BATCH. Answers
    the exit status: 0, or uvicorn's STARTUP_FAILURE when the address cannot be used or a worker
    fails before it ever served.
    """
    try:
        sockets = listening_sockets(config.host, config.port, config.workers, config.backlog)
    except OSError as exc:
        logger.error(exc)  # uvicorn reports a failed bind the same way
        return STARTUP_FAILURE
    port = sockets[0].getsockname()[1]
    address = f"[{config.host}]" if ":" in config.host else config.host
    scheme = "https" if config.is_ssl else "http"
    logger.info("Uvicorn running on %s://%s:%d (Press CTRL+C to quit)", scheme, address, port)
    cpus = worker_cpus(config.workers, usable_cpus()) if pin else None
    if cpus is not None and any(cpus):
        logger.info(
            "Workers kept on CPUs %s, their threads but the database writer under SCHED_BATCH",
            ", ".join(str(min(c)) for c in cpus if c),
        )
    supervisor = Supervisor(config, sockets, cpus=cpus)
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, supervisor.handle_signal) for signum in handled}
    try:
        return supervisor.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        supervisor.close()
        for sock in sockets:
            sock.close()
