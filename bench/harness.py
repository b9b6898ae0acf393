"""The bench's moving parts: server processes, wrk, the kessai CLI, the books, the machine.

Everything the gateway does is driven the way an operator drives it: `kessai serve` as a
process, `kessai admin … --json` for provisioning (run in this process, through the CLI's own
Typer app, to skip a second of interpreter start-up per command), LOGIN over HTTP. Only the
sandbox codes are issued through the sandbox's own function, in batches, because a million of
them through the CLI would take longer than the bench.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
from sqlalchemy.engine import Connection

ROOT: Final = Path(__file__).resolve().parents[1]
BENCH: Final = ROOT / "bench"
REPLAY_LUA: Final = BENCH / "wrk" / "replay.lua"
BIN: Final = Path(sys.executable).parent
KESSAI: Final = str(BIN / "kessai")
UVICORN: Final = str(BIN / "uvicorn")
HOST: Final = "127.0.0.1"


class BenchError(RuntimeError):
    """A step of the bench failed; the message says which and why."""


def log(message: str) -> None:
    """Progress on stderr, so that stdout carries only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without any KESSAI_* setting that could change what is measured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESSAI_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["KESSAI_SANDBOX_ENABLED"] = "true"  # the bench pays with the sandbox's codes
    env.update(extra)
    return env


# --- server processes -----------------------------------------------------------------------------


@dataclass
class Server:
    """A server process listening on 127.0.0.1 (`kessai serve` or uvicorn with the hello app)."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://{HOST}:{self.port}"

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (children started by multiprocessing's spawn)."""
        found = []
        for pid, _name, fields in processes():
            if int(fields[1]) != self.process.pid:
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            if b"spawn_main" in cmdline:
                found.append(pid)
        return sorted(found)

    def pids(self) -> list[int]:
        """The workers and the process that started them: all of the server's processes."""
        return [*self.worker_pids(), self.process.pid]

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _launch(
    name: str, command: list[str], workdir: Path, env: dict[str, str], port: int, attempt: int
) -> Server:
    log_path = workdir / f"{name}-{attempt}.log"
    with log_path.open("wb") as sink:
        process = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT
        )
    return Server(name, process, port, log_path)


def _ready(server: Server, workers: int) -> bool:
    """Every worker has finished its startup and answers; none is being replaced."""
    pids = server.worker_pids()
    if len(pids) != workers:
        return False
    text = server.log.read_text(errors="replace")
    if any(f"Started server process [{pid}]" not in text for pid in pids):
        return False
    if text.count("Application startup complete") < text.count("Started server process"):
        return False
    try:
        return httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _wait_ready(server: Server, workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    steady = 0
    while time.monotonic() < deadline and server.process.poll() is None:
        # Ready twice in a row, a second apart: a worker just restarted would show.
        steady = steady + 1 if _ready(server, workers) else 0
        if steady >= 2:
            # Each worker answers for itself: a few more probes reach every one of them.
            for _ in range(4 * workers):
                httpx.get(f"{server.base_url}/healthz", timeout=10)
            return
        time.sleep(1.0 if steady else 0.3)
    raise BenchError(f"{server.name} did not start:\n{tail(server.log)}")


def start_servers(
    specs: Sequence[tuple[str, Callable[[int], list[str]], dict[str, str]]],
    workdir: Path,
    workers: int,
    timeout: float = 180.0,
) -> list[Server]:
    """Start every server at once (start-up is mostly waiting), then wait for each to be ready.

    A server that fails to start (its free port taken meanwhile, say) is tried twice more alone.
    """
    launched = []
    for name, command, env in specs:
        port = free_port()
        launched.append(_launch(name, command(port), workdir, env, port, 0))
    ready: list[Server] = []
    try:
        for (name, command, env), first in zip(specs, launched, strict=True):
            try:
                _wait_ready(first, workers, timeout)
                ready.append(first)
            except BenchError:
                first.stop()
                ready.append(_retry(name, command, env, workdir, workers, timeout))
    except BaseException:
        for server in launched + ready:
            server.stop()
        raise
    return ready


def _retry(
    name: str,
    command: Callable[[int], list[str]],
    env: dict[str, str],
    workdir: Path,
    workers: int,
    timeout: float,
) -> Server:
    last: BenchError | None = None
    for attempt in (1, 2):
        port = free_port()
        server = _launch(name, command(port), workdir, env, port, attempt)
        try:
            _wait_ready(server, workers, timeout)
            return server
        except BenchError as error:
            server.stop()
            last = error
    assert last is not None
    raise last


def worker_restarts(server: Server) -> int:
    """How many times uvicorn's supervisor replaced a worker it found dead or unresponsive."""
    return server.log.read_text(errors="replace").count(" died")


def kessai_spec(
    name: str,
    database_url: str,
    workdir: Path,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
) -> tuple[str, Callable[[int], list[str]], dict[str, str]]:
    """`kessai serve --workers N` on 127.0.0.1 with default settings, for ``start_servers``."""
    metrics = workdir / f"metrics-{name}"
    metrics.mkdir(parents=True, exist_ok=True)
    env = clean_env(PROMETHEUS_MULTIPROC_DIR=str(metrics), **(extra_env or {}))

    def command(port: int) -> list[str]:
        return [
            KESSAI, "serve", "--host", HOST, "--port", str(port),
            "--workers", str(workers), "--database", database_url,
        ]  # fmt: skip

    return name, command, env


def kessai_server(
    name: str,
    database_url: str,
    workdir: Path,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Start `kessai serve --workers N` and wait until every worker is ready."""
    spec = kessai_spec(name, database_url, workdir, workers, extra_env)
    return start_servers([spec], workdir, workers)[0]


def hello_server(workdir: Path, workers: int = 2) -> Server:
    """The ceiling app under uvicorn, with the same loop, parser and workers as `kessai serve`."""
    from kessai.cli.main import WORKER_HEALTHCHECK_SECONDS  # noqa: PLC0415

    def command(port: int) -> list[str]:
        return [
            UVICORN, "hello:app", "--app-dir", str(BENCH), "--host", HOST, "--port", str(port),
            "--workers", str(workers), "--no-access-log", "--no-server-header",
            "--log-level", "info",
            "--timeout-worker-healthcheck", str(WORKER_HEALTHCHECK_SECONDS),
        ]  # fmt: skip

    return start_servers([("hello", command, clean_env())], workdir, workers)[0]


def processes() -> Iterator[tuple[int, str, list[str]]]:
    """Every process in /proc: its pid, command name, and the fields of its stat after the name.

    In those fields, [1] is the parent's pid, [11] and [12] the user and system CPU in ticks
    (``cpu_seconds``).
    """
    return _stats(Path("/proc"))


def _stats(folder: Path) -> Iterator[tuple[int, str, list[str]]]:
    """Each numbered entry of ``folder`` (/proc, or a process's task/): id, name, stat fields."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return  # the process whose threads these were is gone
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name (in parentheses) may contain spaces: fields start after it.
        close = stat.rindex(")")
        yield int(entry.name), stat[stat.index("(") + 1 : close], stat[close + 2 :].split()


def cpu_seconds(fields: list[str]) -> float:
    """The user and system CPU seconds in a process's or thread's stat fields."""
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


# --- wrk ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    """What replay.lua's done() reported."""

    requests: int
    seconds: float
    sent: int
    threads_exhausted: int
    socket_errors: int
    status_errors: int
    timeouts: int
    p50_ms: float
    p99_ms: float
    p999_ms: float

    @property
    def ok_per_second(self) -> float:
        """Answers below 400 per second of the run."""
        return (self.requests - self.status_errors) / self.seconds if self.seconds else 0.0


def wrk_available() -> bool:
    """Whether wrk is on PATH."""
    return shutil.which("wrk") is not None


def wrk_version() -> str:
    """The first line of `wrk -v`."""
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def write_lines(prefix: Path, lines: Iterable[str], threads: int) -> int:
    """Deal request lines round-robin into PREFIX.0 … PREFIX.(threads-1); answer how many."""
    files = [open(f"{prefix}.{i}", "w", encoding="utf-8") for i in range(threads)]  # noqa: SIM115
    count = 0
    try:
        for count, line in enumerate(lines, start=1):
            files[count % threads].write(line + "\n")
    finally:
        for file in files:
            file.close()
    return count


def run_wrk(
    base_url: str,
    prefix: Path,
    mode: str,
    seconds: float,
    *,
    connections: int,
    threads: int,
    stop_when: Callable[[], bool] | None = None,
) -> WrkResult:
    """Run wrk with replay.lua for ``seconds`` (or until ``stop_when()``, checked every second)."""
    command = [
        "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
        "--timeout", "30s", "-s", str(REPLAY_LUA), base_url, "--", str(prefix), mode,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    if stop_when is not None:
        deadline = time.monotonic() + seconds + 5
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)
            if process.poll() is None and stop_when():
                # wrk stops on SIGINT and still reports what it measured.
                process.send_signal(signal.SIGINT)
                break
    try:
        stdout, stderr = process.communicate(timeout=seconds + 120)
    except subprocess.TimeoutExpired as exc:
        process.kill()
        raise BenchError("wrk did not finish") from exc
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON ") :])
            return WrkResult(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                sent=data["sent"],
                threads_exhausted=data["threads_exhausted"],
                socket_errors=data["connect_errors"] + data["read_errors"] + data["write_errors"],
                status_errors=data["status_errors"],
                timeouts=data["timeouts"],
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                p999_ms=data["p999_us"] / 1000,
            )
    raise BenchError(f"wrk printed no result:\n{stdout}\n{stderr}")


# --- CPU accounting -------------------------------------------------------------------------------

_TICKS_PER_SECOND: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU time used so far: the machine's busy time (all cores), and each process's."""

    at: float
    busy: float
    # pid -> (command name, user + system seconds)
    processes: dict[int, tuple[str, float]]
    # What this process's children that ended and were waited for used (wrk, once it is done).
    reaped: float


def cpu_snapshot() -> CpuSnapshot:
    """Read /proc: the machine's busy CPU seconds so far and every process's own."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal: busy is all but idle and iowait. Steal
    # counts as busy: those are moments this machine wanted a core and had none.
    busy = (sum(ticks) - ticks[3] - ticks[4]) / _TICKS_PER_SECOND
    used = {pid: (name, cpu_seconds(fields)) for pid, name, fields in processes()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return CpuSnapshot(time.monotonic(), busy, used, children.ru_utime + children.ru_stime)


@dataclass(frozen=True)
class CpuUse:
    """The CPU a window of the run used: in all, and by group of processes, in CPU seconds.

    ``groups`` holds what each named group used; what no group claimed (the bench's own
    process, the kernel's network work, processes that came and went) is ``other``. ``threads``
    splits the server's share by the role of the thread that used it (``thread_role``).
    """

    seconds: float
    busy: float
    groups: dict[str, float]
    threads: dict[str, float] = field(default_factory=dict)

    @property
    def other(self) -> float:
        """Busy CPU seconds no group accounts for."""
        return max(0.0, self.busy - sum(self.groups.values()))

    def cores_busy(self) -> float:
        """How many of the machine's cores were busy on average."""
        return self.busy / self.seconds if self.seconds > 0 else 0.0

    def per_answer_us(self, answers: int) -> dict[str, float]:
        """Microseconds of CPU per answer: ``all``, each group, and ``other``."""
        if answers <= 0:
            return {}
        # Biggest group first, what no group claimed last.
        ranked = sorted(self.groups.items(), key=lambda item: -item[1])
        shares = {"all": self.busy, **dict(ranked), "other": self.other}
        return {name: used / answers * 1e6 for name, used in shares.items()}

    def text(self, answers: int, what: str) -> str:
        """One sentence for a row's note."""
        per = self.per_answer_us(answers)
        if not per:
            return f"CPU: {self.cores_busy():.2f} of {os.cpu_count()} cores busy."
        parts = ", ".join(f"{name} {value:,.0f}" for name, value in per.items() if name != "all")
        return (
            f"CPU: {self.cores_busy():.2f} of {os.cpu_count()} cores busy; "
            f"{per['all']:,.0f} µs of CPU per {what} ({parts})."
        )


# The server's threads by role: a process's first thread runs its event loop, and the gateway
# names its database threads in the kernel.
THREAD_ROLES: Final = ("event loop", "SQLite writer", "checkpointer", "other threads")


@functools.cache
def _role_of_name() -> dict[str, str]:
    from kessai.adapters.db import OS_THREAD_NAMES  # noqa: PLC0415 - the gateway's own names

    return {
        OS_THREAD_NAMES["writer"]: "SQLite writer",
        OS_THREAD_NAMES["checkpointer"]: "checkpointer",
    }


def thread_role(pid: int, tid: int, name: str) -> str:
    """The role of thread ``tid`` of process ``pid``, named ``name`` by the kernel."""
    if tid == pid:
        return "event loop"
    return _role_of_name().get(name, "other threads")


def thread_snapshot(pids: Iterable[int]) -> dict[tuple[int, int], tuple[str, float]]:
    """Each thread of ``pids``: its role and the user + system CPU seconds it used so far."""
    return {
        (pid, tid): (thread_role(pid, tid, name), cpu_seconds(fields))
        for pid in pids
        for tid, name, fields in _stats(Path(f"/proc/{pid}/task"))
    }


def thread_use(
    before: dict[tuple[int, int], tuple[str, float]],
    after: dict[tuple[int, int], tuple[str, float]],
) -> dict[str, float]:
    """CPU seconds per role between two ``thread_snapshot``s (a thread since it was first seen)."""
    roles: dict[str, float] = {}
    for key, (role, used) in after.items():
        earlier = before.get(key)
        start = earlier[1] if earlier is not None else 0.0
        roles[role] = roles.get(role, 0.0) + max(0.0, used - start)
    return roles


def classifier(
    server_pids: Iterable[int], others: dict[int, str] | None = None
) -> Callable[[int, str], str | None]:
    """The ``classify`` of ``cpu_use``: the server's processes (``Server.pids``), PostgreSQL's,
    and ``others``.

    ``others`` names further processes by pid (the load generator, a profiler); PostgreSQL's
    processes are known by their command name.
    """
    groups = dict.fromkeys(server_pids, "server")
    groups.update(others or {})

    def classify(pid: int, name: str) -> str | None:
        return groups.get(pid) or ("PostgreSQL" if name == "postgres" else None)

    return classify


def cpu_use(
    before: CpuSnapshot,
    after: CpuSnapshot,
    classify: Callable[[int, str], str | None],
    reaped: str | None = None,
) -> CpuUse:
    """The CPU used between two snapshots, grouped by ``classify(pid, command name)``.

    A process counts in its group for what it used while it was seen: since ``before``, or
    since it started if that was later. One that ended within the window is no longer in
    /proc; ``reaped`` names the group of this process's children that ended and were waited
    for meanwhile (wrk, run to completion between the two snapshots).
    """
    groups: dict[str, float] = {}
    for pid, (name, used) in after.processes.items():
        earlier = before.processes.get(pid)
        start = earlier[1] if earlier is not None and earlier[0] == name else 0.0
        group = classify(pid, name)
        if group is not None:
            groups[group] = groups.get(group, 0.0) + max(0.0, used - start)
    if reaped is not None:
        groups[reaped] = groups.get(reaped, 0.0) + max(0.0, after.reaped - before.reaped)
    return CpuUse(after.at - before.at, max(0.0, after.busy - before.busy), groups)


# --- the kessai CLI and the terminal API ---------------------------------------------------------


def cli(*args: str) -> Any:
    """Run one `kessai … --json` command in this process; answer its JSON output."""
    from kessai.cli.main import app  # noqa: PLC0415

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = app([*args, "--json"], prog_name="kessai", standalone_mode=False)
        except SystemExit as exc:
            code = exc.code
    if isinstance(code, int) and code != 0:
        raise BenchError(f"kessai {' '.join(args)} exited {code}: {out.getvalue()}")
    return json.loads(out.getvalue())


@dataclass(frozen=True)
class TerminalCredentials:
    """A provisioned terminal."""

    mid: str
    password: str
    merchant_id: int


@dataclass(frozen=True)
class Fleet:
    """The merchants' terminals and the integration they log in with."""

    os_value: str
    terminals: tuple[TerminalCredentials, ...]


def provision(database_url: str, merchants: int, terminals_per_merchant: int) -> Fleet:
    """Create an integration, ``merchants`` merchants and their terminals (the CLI migrates)."""
    db = ("--database", database_url)
    os_value = cli("admin", "integration", "create", "--name", "Bench POS", *db)["os"]
    terminals = []
    for m in range(merchants):
        merchant = cli("admin", "merchant", "create", "--name", f"Bench shop {m + 1}", *db)
        for _ in range(terminals_per_merchant):
            made = cli(
                "admin", "terminal", "create", "--merchant", str(merchant["merchantId"]), *db
            )
            terminals.append(
                TerminalCredentials(made["mid"], made["password"], int(made["merchantId"]))
            )
    return Fleet(os_value, tuple(terminals))


def login_all(base_url: str, fleet: Fleet) -> dict[str, str]:
    """LOGIN every terminal over HTTP; answer mid → session token."""
    tokens = {}
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for i, terminal in enumerate(fleet.terminals):
            answer = client.post(
                "/v1/login",
                json={
                    "mid": terminal.mid,
                    "key": f"BENCH-REGISTER-{i:03d}",
                    "password": terminal.password,
                    "os": fleet.os_value,
                },
            )
            if answer.status_code != 200:
                raise BenchError(f"LOGIN of {terminal.mid} answered {answer.text}")
            tokens[terminal.mid] = answer.json()["sessionToken"]
    return tokens


# Services whose customer codes the bench pays with: identification and routing see a mix.
SERVICES: Final = ("02", "03", "04", "21")


def issue_codes(database_url: str, count: int) -> list[str]:
    """Issue ``count`` one-time sandbox codes that approve at once, as `kessai sandbox code` does.

    The sandbox stores only a keyed hash of each code; its own function does the hashing, so the
    codes are exactly those the CLI would issue, only in batches of its per-call maximum.
    """
    from kessai.adapters.db import Database  # noqa: PLC0415
    from kessai.connectors.sandbox import wallets  # noqa: PLC0415

    codes: list[str] = []
    database = Database(database_url)
    try:
        batch = 0
        while len(codes) < count:
            size = min(wallets.MAX_CODES_PER_CALL, count - len(codes))
            service = SERVICES[batch % len(SERVICES)]
            now = datetime.now(UTC)
            codes += database.run_sync(functools.partial(_issue, service, size, now))
            batch += 1
    finally:
        database.close()
    # Batches are one service each: interleave them so that every second sees every service.
    return [codes[i] for i in _interleave(len(codes), wallets.MAX_CODES_PER_CALL)]


def _issue(service: str, size: int, now: datetime, conn: Connection) -> list[str]:
    from kessai.connectors.sandbox import wallets  # noqa: PLC0415

    return wallets.issue_codes(conn, service, "success", size, now)


def _interleave(total: int, batch: int) -> Iterator[int]:
    batches = [range(start, min(start + batch, total)) for start in range(0, total, batch)]
    longest = max((len(b) for b in batches), default=0)
    for offset in range(longest):
        for b in batches:
            if offset < len(b):
                yield b[offset]


class Books:
    """Read-only questions to the gateway's database (the honest count of completed payments)."""

    def __init__(self, database_url: str) -> None:
        from kessai.adapters.db import Database  # noqa: PLC0415

        self.database = Database(database_url)

    def scalar(self, sql: str, **params: Any) -> Any:
        """One value of one query."""
        import sqlalchemy as sa  # noqa: PLC0415

        return self.database.run_sync(
            lambda conn: conn.execute(sa.text(sql), params).scalar(), write=False
        )

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        """Every row of one query."""
        import sqlalchemy as sa  # noqa: PLC0415

        return self.database.run_sync(
            lambda conn: [tuple(r) for r in conn.execute(sa.text(sql), params)], write=False
        )

    def completed_between(self, start: datetime, end: datetime) -> int:
        """Payments that became COMPLETED in [start, end] (their last change is the completion)."""
        import sqlalchemy as sa  # noqa: PLC0415

        from kessai.adapters import schema as t  # noqa: PLC0415

        query = sa.select(sa.func.count()).where(
            t.payments.c.status == "COMPLETED",
            t.payments.c.updated_at >= start,
            t.payments.c.updated_at <= end,
        )
        return int(
            self.database.run_sync(lambda conn: conn.execute(query).scalar_one(), write=False)
        )

    def completed(self) -> int:
        """Every COMPLETED payment."""
        return int(self.scalar("SELECT count(*) FROM payments WHERE status = 'COMPLETED'"))

    def last_id(self) -> int:
        """The highest payment id: a cheap progress counter while payments pour in."""
        return int(self.scalar("SELECT coalesce(max(id), 0) FROM payments"))

    def close(self) -> None:
        """Release the connection."""
        self.database.close()


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database (the backup API, so WAL contents come along)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


# --- PostgreSQL -----------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server(given: str | None) -> Iterator[str]:
    """The URL of a PostgreSQL server: the one given, or a private cluster for this run."""
    if given:
        yield given
        return
    import tempfile  # noqa: PLC0415

    # A folder of its own: as root, the cluster runs as `postgres`, which must own it.
    folder = tempfile.mkdtemp(prefix="kessai-bench-pg-")
    script = str(ROOT / "scripts" / "pg-cluster")
    started = subprocess.run(
        [script, "start", folder, str(free_port())], capture_output=True, text=True, check=False
    )
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise BenchError(f"scripts/pg-cluster could not start PostgreSQL: {started.stderr}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([script, "stop", folder], capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new database on the server, named ``prefix`` and a random suffix, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    url = postgres_database(server_url, name)
    try:
        yield url
    finally:
        postgres_database(server_url, name, drop=True)


def postgres_database(server_url: str, name: str, *, drop: bool = False) -> str:
    """Create (or drop) database ``name`` on the server; answer its URL."""
    import asyncio  # noqa: PLC0415

    import asyncpg  # noqa: PLC0415

    async def change() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            if drop:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(change())
    return database_url(server_url, name)


def database_url(server_url: str, name: str) -> str:
    """``server_url`` naming database ``name`` instead; its query (``?host=…``) is kept."""
    base, _, query = server_url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")


def postgres_version(server_url: str) -> str:
    """`SHOW server_version` of the server."""
    import asyncio  # noqa: PLC0415

    import asyncpg  # noqa: PLC0415

    async def ask() -> str:
        conn = await asyncpg.connect(server_url)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    return asyncio.run(ask())


# --- the machine ----------------------------------------------------------------------------------


def _first(command: Sequence[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def machine(database_dir: Path) -> dict[str, str]:
    """What the figures were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    fs = _first(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target", str(database_dir)])
    fs = " ".join((fs or _first(["stat", "-f", "-c", "%T", str(database_dir)])).split())
    commit = _first(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    if commit and _first(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]):
        commit += " with uncommitted changes"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "memory": memory,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "database filesystem": f"{fs} ({database_dir})",
        "load generator": wrk_version() if wrk_available() else "wrk missing",
        "load average at start": load,
        "gateway": f"kessai {_kessai_version()}, commit {commit or 'unknown'}",
    }


def _kessai_version() -> str:
    from kessai import __version__  # noqa: PLC0415

    return __version__


def since(start: float) -> str:
    """Seconds elapsed since a time.monotonic() value, for progress messages."""
    return f"{time.monotonic() - start:.1f} s"
