"""The performance bench: starts everything on 127.0.0.1, measures, prints one table.

    scripts/bench                 # full run (about fifteen minutes); writes BENCHMARKS.md
    scripts/bench --quick         # a second or two per row, tiny counts; prints the table only
    .venv/bin/python bench/run.py --help

Rows, all measured in the same run on the same machine:

- ceiling: a raw Starlette "hello" app (small JSON in, small JSON out) under uvicorn with
  2 workers, driven by wrk exactly like the gateway: what Python web serving costs here;
- REQUEST: completed customer-code payments per second, `kessai serve --workers 2` on SQLite
  (WAL, each commit fsynced before its answer), the sandbox approving at once, every request
  with a fresh transKey and a fresh one-time code issued before the run, terminals of several
  merchants logged in.
  The figure is counted in the database (payments that became COMPLETED during the window);
- PAYCHECK and STATUS reads per second on those payments;
- latency of REQUEST at a fixed rate (1,000/s), open loop, from each request's scheduled time
  (bench/openloop.py), beside the ceiling app's at the same rate, measured in alternating turns
  of the same window; their difference per quantile is the latency the gateway adds (the
  sandbox answers at once, so nothing else is in it);
- REQUEST per second with the gateway on a local PostgreSQL;
- RSS of each gateway worker at start and after N payments (N = 1,000,000 asked; the run stops
  at the time budget and says how many it reached);
- PAYCHECK p99 at a fixed rate with 10,000 and with 1,000,000 payments stored (bulk-copied from
  real ones, bench/seed.py).

Targets (ratios within one run) are printed beside the figures; the bench only measures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import harness
import openloop
import seed
from harness import HOST, BenchError, Books, Fleet, Server, log

# The growth rows measure each store in this many turns, alternating with the other store: a
# pause of the machine then lands in one short turn of one store, not in a whole row.
GROWTH_TURNS: Final = 12
# The latency rows (REQUEST and the hello app) likewise, for the same reason: their difference is
# the gateway-added latency, and a slow stretch that hit only one of them would be counted in it.
LATENCY_TURNS: Final = 10
# The rows the sqlite part fills in, the hello app's latency among them (measured beside REQUEST's).
SQLITE_ROWS: Final = (
    "request", "paycheck", "status", "latency", "latency_ceiling", "latency_added", "rss_start",
    "rss_after",
)  # fmt: skip
ROW_KEYS: Final = (
    "ceiling",
    "request",
    "paycheck",
    "status",
    "latency",
    "latency_ceiling",
    "latency_added",
    "postgresql",
    "rss_start",
    "rss_after",
    "growth_small",
    "growth_large",
)


@dataclass(frozen=True)
class Plan:
    """How long and how much: the full run's defaults, or --quick's."""

    quick: bool
    seconds: float  # each throughput row (REQUEST, ceiling, PostgreSQL)
    read_seconds: float  # PAYCHECK and STATUS rows
    rate: float  # the fixed rate of the latency rows
    latency_seconds: float
    drain_seconds: float  # how long answers are awaited after the last request is due
    open_connections: int  # connections of the open-loop generator
    memory_payments: int
    memory_seconds: float  # time budget of the memory row's payments
    growth_small: int
    growth_large: int
    growth_seconds: float
    connections: int  # wrk
    threads: int  # wrk
    merchants: int
    terminals_per_merchant: int
    postgres_url: str | None
    skip: frozenset[str]


def parse_plan(argv: Sequence[str]) -> tuple[Plan, Path | None, Path | None, Path | None, bool]:
    """Command-line options → the plan, the report paths, the work folder and --keep."""
    parser = argparse.ArgumentParser(
        description="Kessai's performance bench (wrk and an open-loop generator on 127.0.0.1)."
    )
    parser.add_argument("--quick", action="store_true", help="seconds per row, tiny counts")
    parser.add_argument("--out", type=Path, help="markdown report (full run: BENCHMARKS.md)")
    parser.add_argument("--json", type=Path, dest="json_out", help="also write rows as JSON")
    parser.add_argument("--seconds", type=float, help="each throughput row (default 15)")
    parser.add_argument("--read-seconds", type=float, help="PAYCHECK/STATUS rows (default 10)")
    parser.add_argument("--rate", type=float, help="fixed rate of the latency rows (1000/s)")
    parser.add_argument("--latency-seconds", type=float, help="latency rows (default 20)")
    parser.add_argument(
        "--memory-payments", type=int, help="payments before the last RSS reading (1,000,000)"
    )
    parser.add_argument(
        "--memory-seconds", type=float, help="time budget for those payments (default 480)"
    )
    parser.add_argument("--growth-small", type=int, help="payments stored, first (10,000)")
    parser.add_argument("--growth-large", type=int, help="payments stored, second (1,000,000)")
    parser.add_argument("--growth-seconds", type=float, help="each growth row (default 60)")
    parser.add_argument("--connections", type=int, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, help="wrk threads (default 2)")
    parser.add_argument(
        "--postgres-url",
        help="a PostgreSQL server to create a scratch database on "
        "(default: a private cluster started with scripts/pg-cluster)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to leave out: ceiling, sqlite, growth, postgresql",
    )
    parser.add_argument("--workdir", type=Path, help="where databases and logs go (a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    quick = bool(args.quick)

    def pick(value: float | int | None, full: float | int, short: float | int) -> float | int:
        return value if value is not None else (short if quick else full)

    plan = Plan(
        quick=quick,
        seconds=float(pick(args.seconds, 15, 2)),
        read_seconds=float(pick(args.read_seconds, 10, 1)),
        rate=float(pick(args.rate, 1000, 50)),
        latency_seconds=float(pick(args.latency_seconds, 20, 2)),
        drain_seconds=10.0 if quick else 15.0,
        open_connections=32 if quick else 128,
        memory_payments=int(pick(args.memory_payments, 1_000_000, 300)),
        memory_seconds=float(pick(args.memory_seconds, 480, 2)),
        growth_small=int(pick(args.growth_small, 10_000, 200)),
        growth_large=int(pick(args.growth_large, 1_000_000, 2_000)),
        growth_seconds=float(pick(args.growth_seconds, 60, 1)),
        connections=int(pick(args.connections, 64, 16)),
        threads=int(pick(args.threads, 2, 2)),
        merchants=2 if quick else 4,
        terminals_per_merchant=2 if quick else 4,
        postgres_url=args.postgres_url,
        skip=frozenset(part.strip() for part in args.skip.split(",") if part.strip()),
    )
    unknown = plan.skip - {"ceiling", "sqlite", "growth", "postgresql"}
    if unknown:
        parser.error(f"unknown parts to skip: {', '.join(sorted(unknown))}")
    if "sqlite" in plan.skip and "growth" not in plan.skip:
        parser.error("growth copies payments made in the sqlite part: skip both or neither")
    out = args.out if args.out is not None else (None if quick else harness.ROOT / "BENCHMARKS.md")
    return plan, out, args.json_out, args.workdir, bool(args.keep)


# --- the table ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table. ``number`` is the row's headline figure (None when not measured)."""

    key: str
    measure: str
    value: str = "not measured"
    number: float | None = None
    target: str = ""
    verdict: str = ""
    note: str = ""


@dataclass
class Report:
    """The table being filled in, and what went wrong on the way."""

    plan: Plan
    rows: dict[str, Row] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)
    # Throughput rows' CPU use and how many answers (or payments) it bought.
    cpu: dict[str, tuple[harness.CpuUse, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rate = f"{self.plan.rate:,.0f}/s"
        labels = {
            "ceiling": "Ceiling: Starlette hello, uvicorn 2 workers — requests/s",
            "request": "REQUEST, SQLite (durable before answered) — completed payments/s",
            "paycheck": "PAYCHECK — reads/s",
            "status": "STATUS — reads/s",
            "latency": f"REQUEST latency at {rate}, open loop — p50 / p99 / p99.9",
            "latency_ceiling": f"Ceiling latency at {rate}, open loop — p50 / p99 / p99.9",
            "latency_added": f"Gateway-added latency at {rate} (REQUEST − ceiling) — "
            "p50 / p99 / p99.9",
            "postgresql": "REQUEST, PostgreSQL — completed payments/s",
            "rss_start": "RSS per gateway worker at start",
            "rss_after": "RSS per gateway worker after N payments",
            "growth_small": f"PAYCHECK p99 with {self.plan.growth_small:,} payments stored",
            "growth_large": f"PAYCHECK p99 with {self.plan.growth_large:,} payments stored",
        }
        self.rows = {key: Row(key, labels[key]) for key in ROW_KEYS}

    def set(self, key: str, **values: object) -> None:
        """Fill in fields of one row."""
        row = self.rows[key]
        for name, value in values.items():
            setattr(row, name, value)

    def fail(self, keys: Sequence[str], part: str, error: BaseException) -> None:
        """Mark the rows of a part that failed, keeping the reason."""
        self.failures.append(f"{part}: {error}")
        log(f"{part} failed:\n{''.join(traceback.format_exception(error))}")
        for key in keys:
            if self.rows[key].number is None:
                self.set(key, value="failed", note=f"{part} failed: {str(error)[:200]}")

    def skip(self, keys: Sequence[str], part: str) -> None:
        """Mark the rows of a part left out on request."""
        for key in keys:
            self.set(key, value="skipped", note=f"--skip {part}")

    def table(self) -> str:
        """The markdown table."""
        lines = ["| measure | result | target | verdict |", "|---|---|---|---|"]
        for row in self.rows.values():
            lines.append(f"| {row.measure} | {row.value} | {row.target} | {row.verdict} |")
        return "\n".join(lines)

    def notes(self) -> str:
        """How each row was measured, one bullet per row."""
        return "\n".join(
            f"- **{row.measure}**: {row.note}" for row in self.rows.values() if row.note
        )

    def markdown(self, command: str) -> str:
        """BENCHMARKS.md: machine, table, how each row was measured."""
        machine = "\n".join(f"| {name} | {value} |" for name, value in self.machine.items())
        return f"""# Benchmarks

Written by `{command}` (bench/run.py; see bench/README.md). Every figure below comes from one
run on the machine described here; the targets are ratios within that run. Load generators
(wrk, and the open-loop generator for fixed-rate latency) run on the same machine, over
127.0.0.1, sharing its cores with the servers.

## Machine

| | |
|---|---|
{machine}

## Results

{self.table()}

{self.cpu_section()}## How each row was measured

{self.notes()}
"""

    def cpu_section(self) -> str:
        """Where the CPU went in the throughput rows, and what that bounds (empty without them)."""
        if not self.cpu:
            return ""
        cores = os.cpu_count() or 1
        groups = ("server", "wrk", "PostgreSQL", "other")
        lines = [
            "| row | cores busy | CPU per answer | "
            + " | ".join(groups)
            + f" | answers/s with all {cores} cores busy |",
            "|---|---|---|" + "---|" * (len(groups) + 1),
        ]
        for key, (use, answers) in self.cpu.items():
            per = use.per_answer_us(answers)
            if not per:
                continue
            cells = " | ".join(f"{per[g]:,.0f} µs" if g in per else "—" for g in groups)
            lines.append(
                f"| {self.rows[key].measure.split(' — ')[0]} | {use.cores_busy():.2f} | "
                f"{per['all']:,.0f} µs | {cells} | {cores * 1e6 / per['all']:,.0f}/s |"
            )
        ceiling = self.cpu.get("ceiling")
        ceiling_us = ceiling[0].per_answer_us(ceiling[1]).get("all") if ceiling else None
        needs = ""
        if ceiling_us is not None:
            needs = (
                "\nWith every core busy, REQUEST reaches 0.5 × the ceiling only if a payment "
                f"costs at most\ntwice the CPU of a ceiling answer ({2 * ceiling_us:,.0f} µs "
                "here, wrk's share included), and 0.3 × only if\n"
                f"it costs at most {ceiling_us / 0.3:,.0f} µs."
            )
        return f"""## Where the CPU went

Measured from /proc over each throughput row: the machine's busy time (idle and I/O wait left
out), the server's own processes, wrk, PostgreSQL's processes, and the rest (the kernel's network
work, the bench itself). A rate can rise until every core is busy; the last column is that bound
at each row's CPU per answer.{needs}

{chr(10).join(lines)}

{self.thread_section()}"""

    def thread_section(self) -> str:
        """The server's CPU per answer split by thread (empty when no row measured it)."""
        roles = harness.THREAD_ROLES
        lines = [
            "| row | server | " + " | ".join(roles) + " |",
            "|---|---|" + "---|" * len(roles),
        ]
        for key, (use, answers) in self.cpu.items():
            if not use.threads or answers <= 0:
                continue
            per = {role: used / answers * 1e6 for role, used in use.threads.items()}
            cells = " | ".join(f"{per[role]:,.0f} µs" if role in per else "—" for role in roles)
            lines.append(
                f"| {self.rows[key].measure.split(' — ')[0]} | "
                f"{sum(per.values()):,.0f} µs | {cells} |"
            )
        if len(lines) == 2:
            return ""
        return f"""The server's share per answer, by the thread that used it (from /proc/PID/task):
each worker's event loop (HTTP, the gateway's code outside units, and on PostgreSQL the units
themselves), its SQLite writer thread (every unit, the commits and the WAL's fsyncs) and its
checkpointer. A writer spends nearly all of its time holding SQLite's write lock, which the two
workers take in turn: one second divided by the writers' time per payment is about the most
payments a second this design commits on SQLite, however many cores there are.

{chr(10).join(lines)}

"""

    def as_json(self) -> str:
        """Rows and machine as JSON (for the smoke test and for comparing runs)."""
        return json.dumps(
            {
                "machine": self.machine,
                "plan": {k: v for k, v in asdict(self.plan).items() if k != "skip"},
                "rows": [asdict(row) for row in self.rows.values()],
                "failures": self.failures,
                "cpu": {
                    key: {
                        "seconds": use.seconds,
                        "busy": use.busy,
                        "groups": use.groups,
                        "threads": use.threads,
                        "answers": answers,
                    }
                    for key, (use, answers) in self.cpu.items()
                },
            },
            ensure_ascii=False,
            indent=2,
        )


# --- formatting and verdicts ----------------------------------------------------------------------


def per_second(value: float) -> str:
    """A rate, rounded, with thousands separators."""
    return f"{value:,.0f}/s"


def ms(seconds: float, unanswered_bound: float | None = None) -> str:
    """Seconds as milliseconds; an infinite quantile (unanswered requests) as a lower bound."""
    if math.isinf(seconds):
        return f"> {unanswered_bound or 0:,.0f} s" if unanswered_bound else "unanswered"
    if math.isnan(seconds):
        return "—"
    return f"{seconds * 1000:,.1f} ms" if abs(seconds) < 1 else f"{seconds:,.2f} s"


def verdict(met: bool) -> str:
    """How the table marks a target."""
    return "met" if met else "MISSED"


@dataclass(frozen=True)
class Latency:
    """p50, p99 and p99.9 of an open-loop run, in seconds (inf when unanswered)."""

    p50: float
    p99: float
    p999: float

    @classmethod
    def of(cls, result: openloop.OpenLoopResult) -> Latency:
        """The three quantiles of a run."""
        return cls(result.quantile(0.5), result.quantile(0.99), result.quantile(0.999))

    def text(self, bound: float) -> str:
        """'p50 / p99 / p99.9' for the table."""
        return " / ".join(ms(q, bound) for q in (self.p50, self.p99, self.p999))

    @property
    def p99_ms(self) -> float | None:
        """The p99 in milliseconds, for the JSON rows; None when some were never answered."""
        return None if math.isinf(self.p99) else self.p99 * 1000


def describe_open_loop(
    result: openloop.OpenLoopResult, seconds: float, accepted: str = "", *, by_second: bool = False
) -> str:
    """Counts behind an open-loop row (``accepted`` names what the accepted answers were).

    ``by_second`` adds the p99 of each second, for the latency rows: one bad second (a stall of
    the machine, a checkpoint of another process's writes) then shows as such.
    """
    statuses = ", ".join(f"{code}: {n:,}" for code, n in sorted(result.statuses.items()))
    text = (
        f"{result.scheduled:,} requests due over {seconds:g} s on {result.rate:,.0f}/s, "
        f"{result.answered:,} answered (HTTP {statuses or 'none'})"
    )
    if accepted:
        text += f", {result.accepted:,} of them {accepted}"
    if result.unanswered:
        text += f", {result.unanswered:,} not answered in time (counted as infinitely slow)"
    if result.errors:
        text += f", {result.errors:,} connection errors"
    if result.send_lag_max > 0.005:
        text += f"; the generator itself fell up to {result.send_lag_max * 1000:.0f} ms behind"
    if by_second and result.due:
        figures = ", ".join(f"{figure * 1000:.1f}" for figure in result.by_second(0.99))
        text += f"; p99 of each second, ms: {figures}"
    return text


# --- request bodies -------------------------------------------------------------------------------


def payment_body(tag: str, i: int, code: str) -> str:
    """A REQUEST body: a fresh transKey, an amount in yen, the customer's one-time code."""
    body = {"transKey": f"{tag}{i:09d}", "amount": 100 + (i * 37) % 9_900, "code": code}
    return json.dumps(body, separators=(",", ":"))


def payment_lines(codes: Sequence[str], tokens: dict[str, str], tag: str) -> Iterator[str]:
    """replay.lua lines for REQUESTs, spread over every logged-in terminal."""
    mids = sorted(tokens)
    for i, code in enumerate(codes):
        yield f"POST\t/v1/payments\t{tokens[mids[i % len(mids)]]}\t{payment_body(tag, i, code)}"


def payment_requests(
    server: Server, tokens: dict[str, str], codes: Sequence[str], tag: str
) -> list[bytes]:
    """One REQUEST per code as raw HTTP for the open-loop generator, terminals taken in turn."""
    host = f"{HOST}:{server.port}"
    mids = sorted(tokens)
    return [
        openloop.http_request(
            "POST",
            "/v1/payments",
            host,
            token=tokens[mids[i % len(mids)]],
            body=payment_body(tag, i, code).encode(),
        )
        for i, code in enumerate(codes)
    ]


@contextlib.contextmanager
def serving_fleet(
    name: str,
    url: str,
    work: Path,
    count: int,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[Server, dict[str, str], list[str]]]:
    """`kessai serve` on a freshly provisioned ``url``, with ``count`` sandbox codes issued.

    For the profiling tools: 4 merchants of 4 terminals each, every terminal logged in. Yields
    the server, each mid's session token and the codes; the server stops afterwards.
    """
    log("provisioning")
    fleet = harness.provision(url, 4, 4)
    codes = harness.issue_codes(url, count)
    server = harness.kessai_server(name, url, work, extra_env=extra_env)
    try:
        yield server, harness.login_all(server.base_url, fleet), codes
    finally:
        server.stop()


@contextlib.contextmanager
def paying_server(
    name: str,
    url: str,
    work: Path,
    count: int,
    tag: str,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[Server, list[bytes]]]:
    """``serving_fleet``, with one REQUEST per code ready for it (raw HTTP, open-loop generator)."""
    with serving_fleet(name, url, work, count, extra_env) as (server, tokens, codes):
        yield server, payment_requests(server, tokens, codes, tag)


def settle(books: Books, quiet_seconds: float = 1.0, limit: float = 60.0) -> None:
    """Wait until no payment has been added for ``quiet_seconds`` (requests still in flight)."""
    deadline = time.monotonic() + limit
    last = books.last_id()
    while time.monotonic() < deadline:
        time.sleep(quiet_seconds)
        now = books.last_id()
        if now == last:
            return
        last = now


def utcnow() -> datetime:
    """Now, in UTC, as the gateway stamps its rows."""
    return datetime.now(UTC)


# --- running the load generators ------------------------------------------------------------------


@dataclass(frozen=True)
class WrkRun:
    """What wrk reported for one row, and the wall-clock window it ran in."""

    result: harness.WrkResult
    start: datetime
    end: datetime
    # The machine's CPU over the run: the server's processes, wrk, PostgreSQL, the rest.
    cpu: harness.CpuUse


def _drive_wrk(
    plan: Plan,
    server: Server,
    prefix: Path,
    lines: Iterable[str],
    mode: str,
    seconds: float,
    stop_when: Callable[[], bool] | None = None,
) -> WrkRun:
    """Deal ``lines`` into replay.lua's files at ``prefix``, then run wrk on ``server``.

    wrk uses the plan's threads and connections; ``mode`` is replay.lua's ("once" sends each
    line at most once, "cycle" starts over). The window is taken right around wrk itself, so
    that writing the files never counts as time the server had.
    """
    harness.write_lines(prefix, lines, plan.threads)
    pids = server.pids()
    classify = harness.classifier(pids)
    start = utcnow()
    threads_before = harness.thread_snapshot(pids)
    before = harness.cpu_snapshot()
    result = harness.run_wrk(
        server.base_url,
        prefix,
        mode,
        seconds,
        connections=plan.connections,
        threads=plan.threads,
        stop_when=stop_when,
    )
    # wrk has ended and been waited for: its CPU is that of the children reaped meanwhile.
    cpu = harness.cpu_use(before, harness.cpu_snapshot(), classify, reaped="wrk")
    threads = harness.thread_use(threads_before, harness.thread_snapshot(pids))
    return WrkRun(result, start, utcnow(), replace(cpu, threads=threads))


def _status_200(status: int, body: bytes) -> bool:
    return status == 200


def _drive_open_loop(
    plan: Plan,
    server: Server,
    requests: Sequence[bytes],
    rate: float,
    seconds: float,
    accept: Callable[[int, bytes], bool] = _status_200,
) -> openloop.OpenLoopResult:
    """Send ``requests`` to ``server`` at a fixed rate with the plan's connections and drain time.

    ``accept`` says which answers count as the ones asked for (by default any HTTP 200).
    """
    return openloop.run(
        HOST,
        server.port,
        requests,
        rate=rate,
        seconds=seconds,
        connections=plan.open_connections,
        drain_seconds=plan.drain_seconds,
        accept=accept,
    )


@dataclass(frozen=True)
class Turns:
    """One server measured in turns: what to send it, and which answers count."""

    server: Server
    requests: Sequence[bytes]
    # Every request is sent at most once over all the turns (payments): each turn takes the
    # next ones. Otherwise each turn cycles through them from the start (reads).
    once: bool = False
    accept: Callable[[int, bytes], bool] = _status_200


def turn_by_turn(
    plan: Plan, sides: Sequence[Turns], rate: float, seconds: float, turns: int
) -> list[list[openloop.OpenLoopResult]]:
    """Each side driven at ``rate`` for ``seconds`` in all, in ``turns`` short turns in rotation.

    The order of the sides is reversed every other round, so that none always follows the same
    neighbour. A pause of the machine then lands in one short turn of one side, and a slow
    stretch hits every side alike. Answers each side's results, turn by turn.
    """
    length = seconds / turns
    per_turn = max(1, round(rate * length))
    results: list[list[openloop.OpenLoopResult]] = [[] for _ in sides]
    order = list(range(len(sides)))
    for turn in range(turns):
        for index in order if turn % 2 == 0 else order[::-1]:
            side = sides[index]
            requests = side.requests
            if side.once:
                requests = requests[turn * per_turn : (turn + 1) * per_turn]
                if len(requests) < per_turn:
                    raise BenchError(f"{side.server.name}: too few requests for {turns} turns")
            results[index].append(
                _drive_open_loop(plan, side.server, requests, rate, length, side.accept)
            )
    return results


def in_turns(
    plan: Plan, sides: Sequence[Turns], rate: float, seconds: float, turns: int
) -> list[openloop.OpenLoopResult]:
    """``turn_by_turn``, each side's turns merged into one result, in order."""
    return [
        functools.reduce(_merge, results)
        for results in turn_by_turn(plan, sides, rate, seconds, turns)
    ]


# --- the parts ------------------------------------------------------------------------------------


@dataclass
class Ceiling:
    """What the ceiling part measured."""

    rate: float


HELLO_CODE: Final = "9" * 24


def hello_bodies(count: int = 2_000) -> list[str]:
    """Bodies for the hello app: the size and shape of REQUEST's."""
    return [payment_body("H", i, HELLO_CODE) for i in range(count)]


def part_ceiling(plan: Plan, report: Report, work: Path) -> Ceiling:
    """The hello app's throughput with wrk (its latency is measured beside REQUEST's)."""
    log("ceiling: starting the hello app")
    server = harness.hello_server(work)
    try:
        token = secrets.token_urlsafe(32)
        lines = (f"POST\t/hello\t{token}\t{b}" for b in hello_bodies())
        ran = _drive_wrk(plan, server, work / "hello", lines, "cycle", plan.seconds)
        result = ran.result
        rate = result.ok_per_second
        answers = result.requests - result.status_errors
        report.cpu["ceiling"] = (ran.cpu, answers)
        report.set(
            "ceiling",
            value=per_second(rate),
            number=rate,
            note=f"wrk, {plan.threads} threads, {plan.connections} connections, "
            f"{result.seconds:.1f} s: {result.requests:,} answers, "
            f"{result.status_errors:,} of them ≥ 400, {result.socket_errors:,} socket errors; "
            f"wrk's own (closed-loop) p99 {result.p99_ms:.1f} ms. The body has the size and shape "
            "of a REQUEST body, with an Authorization header, and is parsed as JSON. "
            + ran.cpu.text(answers, "answer"),
        )
        log(f"ceiling: {rate:,.0f}/s")
        return Ceiling(rate)
    finally:
        server.stop()


@dataclass
class SqliteOutcome:
    """What the growth part needs from the SQLite part."""

    base: Path
    main: Path
    fleet: Fleet
    paycheck_rate: float
    templates: list[tuple[seed.Template, str]]  # (template, mid of its terminal)


def _code_pool(plan: Plan, ceiling: Ceiling | None) -> int:
    """Enough codes for a REQUEST row at the ceiling's rate: REQUEST cannot go faster than that.

    The quick run takes fewer (a pool that runs out only makes its figure a floor, and says so).
    """
    rate = ceiling.rate if ceiling is not None and ceiling.rate > 0 else 5_000
    pool = math.ceil(rate * plan.seconds * 1.2) + 500
    return min(pool, 3_000) if plan.quick else pool


@contextlib.contextmanager
def _serving(
    plan: Plan, ceiling: Ceiling | None, name: str, url: str, fleet: Fleet, work: Path
) -> Iterator[tuple[Server, Books, dict[str, str], list[str]]]:
    """A provisioned database made ready for the REQUEST row, served until the block ends.

    Issues the row's codes, starts `kessai serve` on ``url`` and logs every terminal of ``fleet``
    in; yields the server, its books, each mid's session token and the codes.
    """
    pool = _code_pool(plan, ceiling)
    started = time.monotonic()
    codes = harness.issue_codes(url, pool)
    log(f"{name}: {pool:,} codes issued in {harness.since(started)}; starting kessai serve")
    server = harness.kessai_server(name, url, work)
    books = Books(url)
    try:
        yield server, books, harness.login_all(server.base_url, fleet), codes
    finally:
        books.close()
        server.stop()


def _restarts_note(server: Server, before: int) -> str:
    """A warning when uvicorn replaced a worker while a row was measured."""
    restarted = harness.worker_restarts(server) - before
    if restarted <= 0:
        return ""
    log(f"{server.name}: uvicorn replaced {restarted} worker(s) during a measurement")
    return (
        f" WARNING: uvicorn replaced {restarted} worker(s) of this server while this row ran "
        "(a worker it found dead or unresponsive); the figure is not trustworthy."
    )


def _request_row(
    report: Report,
    key: str,
    books: Books,
    server: Server,
    tokens: dict[str, str],
    codes: Sequence[str],
    tag: str,
    plan: Plan,
    work: Path,
    ceiling: Ceiling | None,
    share: float,
) -> float:
    """Pay with every code in turn through wrk for plan.seconds; the rate counted in the books."""
    restarts = harness.worker_restarts(server)
    lines = payment_lines(codes, tokens, tag)
    ran = _drive_wrk(plan, server, work / f"{key}-requests", lines, "once", plan.seconds)
    result, start, end = ran.result, ran.start, ran.end
    settle(books)
    completed = books.completed_between(start, end)
    window = (end - start).total_seconds()
    rate = completed / window
    note = (
        f"{completed:,} payments became COMPLETED in the database during the {window:.1f} s "
        f"wrk ran ({plan.threads} threads, {plan.connections} connections, "
        f"{len(tokens)} terminals of {plan.merchants} merchants, {len(codes):,} codes issued "
        f"beforehand); wrk saw {result.requests:,} answers, {result.status_errors:,} of them "
        f"≥ 400, {result.socket_errors:,} socket errors, {result.timeouts:,} timeouts; "
        f"wrk's own (closed-loop) p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms."
    )
    note += " " + ran.cpu.text(completed, "payment")
    report.cpu[key] = (ran.cpu, completed)
    if result.threads_exhausted:
        note += " The code pool ran out before the end, so this figure is a floor."
    note += _restarts_note(server, restarts)
    target, met = "", None
    if ceiling is not None and ceiling.rate > 0:
        target = f"≥ {share:g} × ceiling = {share * ceiling.rate:,.0f}/s"
        met = rate >= share * ceiling.rate
        note += f" Ratio to the ceiling: {rate / ceiling.rate:.3f}."
    report.set(
        key,
        value=per_second(rate),
        number=rate,
        target=target,
        verdict=""
        if met is None or ceiling is None
        else f"{verdict(met)} ({rate / ceiling.rate:.2f} × ceiling)",
        note=note,
    )
    return rate


def _read_row(
    report: Report,
    key: str,
    server: Server,
    lines: Sequence[str],
    plan: Plan,
    work: Path,
    what: str,
) -> float:
    restarts = harness.worker_restarts(server)
    prefix = work / f"{key}-reads"
    result = _drive_wrk(plan, server, prefix, lines, "cycle", plan.read_seconds).result
    rate = result.ok_per_second
    report.set(
        key,
        value=per_second(rate),
        number=rate,
        note=f"wrk, {plan.threads} threads, {plan.connections} connections, "
        f"{result.seconds:.1f} s, {what} over {len(lines):,} COMPLETED payments, each read with "
        f"its own terminal's session: {result.requests:,} answers, {result.status_errors:,} "
        f"≥ 400, {result.socket_errors:,} socket errors; p50 {result.p50_ms:.1f} ms, "
        f"p99 {result.p99_ms:.1f} ms (closed loop)." + _restarts_note(server, restarts),
    )
    if result.status_errors:
        # A refused read is a fault (every payment read exists): say so, but measure the rest.
        report.failures.append(f"{key}: {result.status_errors} reads answered ≥ 400")
    return rate


def _rss(server: Server) -> list[float]:
    return [harness.rss_mb(pid) for pid in server.worker_pids()]


def _mb(values: Sequence[float]) -> str:
    return " / ".join(f"{v:,.0f} MB" for v in values)


def part_sqlite(plan: Plan, report: Report, work: Path, ceiling: Ceiling | None) -> SqliteOutcome:
    """REQUEST, PAYCHECK, STATUS, fixed-rate latency and memory on one SQLite gateway."""
    folder = work / "sqlite"
    folder.mkdir()
    base = folder / "base.db"
    log("sqlite: provisioning")
    fleet = harness.provision(f"sqlite:///{base}", plan.merchants, plan.terminals_per_merchant)
    main = folder / "main.db"
    harness.copy_sqlite(base, main)
    url = f"sqlite:///{main}"
    with _serving(plan, ceiling, "sqlite", url, fleet, work) as (server, books, tokens, codes):
        at_start = _rss(server)
        log("sqlite: REQUEST")
        request_rate = _request_row(
            report, "request", books, server, tokens, codes, "R", plan, work, ceiling, 0.5
        )
        log(f"sqlite: REQUEST {request_rate:,.0f}/s; PAYCHECK and STATUS")
        sample = books.rows(
            "SELECT p.trans_id, p.trans_key, t.mid FROM payments p "
            "JOIN terminals t ON t.id = p.terminal_id WHERE p.status = 'COMPLETED' "
            "ORDER BY random() LIMIT 20000"
        )
        if not sample:
            raise BenchError("no payment completed: nothing to read")
        paycheck_rate = _read_row(
            report,
            "paycheck",
            server,
            [f"GET\t/v1/payments/{tid}\t{tokens[mid]}\t" for tid, _, mid in sample],
            plan,
            work,
            "GET /v1/payments/{transId}",
        )
        _read_row(
            report,
            "status",
            server,
            [f"GET\t/v1/payments?transKey={key}\t{tokens[mid]}\t" for _, key, mid in sample],
            plan,
            work,
            "GET /v1/payments?transKey=…",
        )
        part_latency(plan, report, books, server, tokens, url, work)
        part_memory(plan, report, books, server, tokens, url, work, request_rate, at_start)
        templates = [
            (seed.Template(int(pid), str(tid)), str(mid))
            for pid, tid, mid in books.rows(
                "SELECT p.id, p.trans_id, t.mid FROM payments p "
                "JOIN terminals t ON t.id = p.terminal_id "
                "WHERE p.id IN (SELECT min(id) FROM payments WHERE status = 'COMPLETED' "
                "AND kind = 'CUSTOMER_CODE' GROUP BY terminal_id) ORDER BY p.id"
            )
        ]
    return SqliteOutcome(base, main, fleet, paycheck_rate, templates)


def part_latency(
    plan: Plan,
    report: Report,
    books: Books,
    server: Server,
    tokens: dict[str, str],
    url: str,
    work: Path,
) -> None:
    """REQUEST and the hello app at the fixed rate, open loop, in alternating turns.

    Each REQUEST has a fresh transKey and code. The gateway-added latency is a difference of two
    measurements, so both are taken in the same stretch of time: the hello app serves beside the
    gateway (each idles while the other is measured), in ``LATENCY_TURNS`` turns each.
    """
    count = max(1, round(plan.rate * plan.latency_seconds))
    codes = harness.issue_codes(url, count)
    requests = payment_requests(server, tokens, codes, "L")
    log("sqlite: starting the hello app beside the gateway")
    hello = harness.hello_server(work)
    try:
        token = secrets.token_urlsafe(32)
        host = f"{HOST}:{hello.port}"
        greetings = [
            openloop.http_request("POST", "/hello", host, token=token, body=b.encode())
            for b in hello_bodies()
        ]
        # A warm-up of the fresh hello app (the gateway has served every row before this one).
        _drive_open_loop(plan, hello, greetings, plan.rate, min(1.0, plan.latency_seconds))
        log(
            f"sqlite: REQUEST and the hello app at {plan.rate:,.0f}/s, open loop, "
            f"{LATENCY_TURNS} turns each, {count:,} payments"
        )
        restarts = harness.worker_restarts(server)
        completed = Turns(
            server,
            requests,
            once=True,
            accept=lambda status, body: status == 200 and b'"COMPLETED"' in body,
        )
        measured, base_run = in_turns(
            plan, [completed, Turns(hello, greetings)], plan.rate, plan.latency_seconds,
            LATENCY_TURNS,
        )  # fmt: skip
    finally:
        hello.stop()
    settle(books)
    restarted = _restarts_note(server, restarts)
    turns = (
        f"{LATENCY_TURNS} turns of {plan.latency_seconds / LATENCY_TURNS:g} s, alternating "
        "with the other server (the per-second p99s run on from one turn to the next); "
        f"{plan.open_connections} keep-alive connections; latency from each request's "
        "scheduled send time."
    )
    latency = Latency.of(measured)
    report.set(
        "latency",
        value=latency.text(plan.drain_seconds),
        number=latency.p99_ms,
        note=describe_open_loop(measured, plan.latency_seconds, "COMPLETED", by_second=True)
        + f"; {turns}"
        + restarted,
    )
    base = Latency.of(base_run)
    report.set(
        "latency_ceiling",
        value=base.text(plan.drain_seconds),
        number=base.p99_ms,
        note=describe_open_loop(base_run, plan.latency_seconds, by_second=True)
        + f"; the hello app of the ceiling row, started again beside the gateway; {turns}",
    )
    added = Latency(latency.p50 - base.p50, latency.p99 - base.p99, latency.p999 - base.p999)
    report.set(
        "latency_added",
        value=added.text(plan.drain_seconds),
        number=added.p99_ms,
        target="p99 ≤ 5 ms",
        verdict=verdict(added.p99 <= 0.005),
        note="each quantile of the REQUEST row minus the same quantile of the ceiling's latency "
        "row, measured with the same generator at the same rate, in alternating turns of the "
        "same window: what the gateway adds to the cost of serving any HTTP request here. The "
        "sandbox answers at once (in the gateway's own database), so no wallet time is in it.",
    )


def part_memory(
    plan: Plan,
    report: Report,
    books: Books,
    server: Server,
    tokens: dict[str, str],
    url: str,
    work: Path,
    request_rate: float,
    at_start: list[float],
) -> None:
    """Keep paying until N payments in all (or the time budget), then read RSS again."""
    report.set(
        "rss_start",
        value=_mb(at_start),
        number=max(at_start),
        target="≤ 150 MB",
        verdict=verdict(max(at_start) <= 150),
        note=f"VmRSS of each of the {len(at_start)} uvicorn worker processes of `kessai serve`, "
        "read from /proc once the server answered and the terminals had logged in.",
    )
    warm = _rss(server)
    restarts = harness.worker_restarts(server)
    done = books.completed()
    remaining = plan.memory_payments - done
    if remaining > 0:
        # A few codes more than the payments missing: wrk may leave a line or two unsent, and
        # the stretch stops at the count anyway (give or take the requests in flight).
        spare = 64 + remaining // 100
        pool = min(
            remaining + spare, math.ceil(max(request_rate, 1) * plan.memory_seconds * 1.3) + 200
        )
        started = time.monotonic()
        codes = harness.issue_codes(url, pool)
        log(
            f"sqlite: {pool:,} more codes in {harness.since(started)}; paying until "
            f"{plan.memory_payments:,} payments or {plan.memory_seconds:g} s"
        )
        target_id = books.last_id() + remaining
        _drive_wrk(
            plan,
            server,
            work / "memory-requests",
            payment_lines(codes, tokens, "M"),
            "once",
            plan.memory_seconds,
            stop_when=lambda: books.last_id() >= target_id,
        )
        settle(books)
    after = _rss(server)
    total = books.completed()
    growth = max(a - w for a, w in zip(after, warm, strict=True))
    grew = max(a / w for a, w in zip(after, warm, strict=True)) - 1
    met = max(after) <= 150 and grew <= 0.10
    reached = "" if total >= plan.memory_payments else f" ({plan.memory_payments:,} asked)"
    # Within the limits but short of the payments asked for proves less than the target asks.
    judged = verdict(met) if not met or not reached else "held so far (fewer payments)"
    report.set(
        "rss_after",
        measure=f"RSS per gateway worker after {total:,} payments{reached}",
        value=_mb(after),
        number=max(after),
        target=f"≤ 150 MB, not growing, after {plan.memory_payments:,}",
        verdict=judged,
        note=f"{total:,} COMPLETED payments served by this server in all (every row above, then "
        f"wrk until {plan.memory_payments:,} or {plan.memory_seconds:g} s). Before this last "
        f"stretch the workers held {_mb(warm)}; the most any grew since is {growth:+.1f} MB "
        f"({grew:+.1%}; 'not growing' is read as at most +10 %)."
        + _restarts_note(server, restarts),
    )


def part_growth(plan: Plan, report: Report, work: Path, sqlite: SqliteOutcome) -> None:
    """PAYCHECK p99 at a fixed rate on a gateway with few, and with many, payments stored.

    Both gateways run side by side (one idles while the other is measured), and the two are
    measured in short turns, twelve each, so that a change in the machine's other load hits both
    alike. A p99 needs many samples to be steady: 60 s at 250/s gives each store 15,000
    requests, so its 150 slowest decide the figure, not a handful caught by one hiccup.
    """
    if not sqlite.templates:
        raise BenchError("no completed payment to copy")
    # A modest rate the gateway reads with room to spare, so that the tail is the lookups' own
    # rather than a queue's: a quarter of its PAYCHECK capacity, at most 250/s.
    rate = float(max(20, min(250, round(sqlite.paycheck_rate * 0.25, -1))))
    templates = [template for template, _ in sqlite.templates]
    mids = [mid for _, mid in sqlite.templates]
    stores = {"growth_small": plan.growth_small, "growth_large": plan.growth_large}
    databases = {key: work / "sqlite" / f"growth-{count}.db" for key, count in stores.items()}
    written = {}
    for key, count in stores.items():
        harness.copy_sqlite(sqlite.base, databases[key])
        started = time.monotonic()
        written[key] = seed.seed_payments(databases[key], sqlite.main, templates, count)
        log(f"growth: {count:,} payments stored in {harness.since(started)}")
    servers = harness.start_servers(
        [
            harness.kessai_spec(f"growth-{stores[key]}", f"sqlite:///{databases[key]}", work)
            for key in stores
        ],
        work,
        workers=2,
    )
    try:
        requests = {}
        for key, server in zip(stores, servers, strict=True):
            tokens = harness.login_all(server.base_url, sqlite.fleet)
            count = stores[key]
            chosen = random.Random(count).sample(range(count), min(count, 20_000))
            requests[key] = [
                openloop.http_request(
                    "GET",
                    f"/v1/payments/{seed.seeded_trans_id(n)}",
                    f"{HOST}:{server.port}",
                    token=tokens[mids[n % len(mids)]],
                )
                for n in chosen
            ]
            # A warm-up (lazy imports, caches, the page cache) before anything is measured.
            _drive_open_loop(plan, server, requests[key], rate, max(1.0, plan.growth_seconds / 6))
        restarts = [harness.worker_restarts(server) for server in servers]
        log(f"growth: PAYCHECK at {rate:,.0f}/s, in turns")
        sides = [Turns(server, requests[key]) for key, server in zip(stores, servers, strict=True)]
        results = in_turns(plan, sides, rate, plan.growth_seconds, GROWTH_TURNS)
        measured = dict(zip(stores, results, strict=True))
        restarted = [
            _restarts_note(server, before) for server, before in zip(servers, restarts, strict=True)
        ]
    finally:
        for server in servers:
            server.stop()
        for database in databases.values():
            for suffix in ("", "-wal", "-shm"):
                Path(f"{database}{suffix}").unlink(missing_ok=True)
    p99s = {}
    for (key, result), warning in zip(measured.items(), restarted, strict=True):
        refused = result.answered - result.accepted
        if refused:
            raise BenchError(f"{key}: {refused} PAYCHECKs of stored payments were refused")
        latency = Latency.of(result)
        p99s[key] = latency.p99
        rows_written = ", ".join(f"{table} {n:,}" for table, n in written[key].items())
        report.set(
            key,
            value=ms(latency.p99, plan.drain_seconds),
            number=latency.p99_ms,
            note=f"PAYCHECK of {len(requests[key]):,} random stored payments at {rate:,.0f}/s "
            f"(a quarter of the PAYCHECK row's rate, at most 250/s), open loop, in "
            f"{GROWTH_TURNS} turns alternating with the other store, after a warm-up: "
            f"p50 {ms(latency.p50)}, "
            f"p99.9 {ms(latency.p999, plan.drain_seconds)}; "
            + describe_open_loop(result, plan.growth_seconds)
            + f". Rows written by SQL, copies of real payments: {rows_written}."
            + warning,
        )
    small, large = p99s["growth_small"], p99s["growth_large"]
    report.set(
        "growth_large",
        target=f"within 20 % of the {plan.growth_small:,} figure",
        verdict=f"{verdict(large <= small * 1.2)} ({large / small:.2f} ×)",
    )
    report.rows["growth_large"].note += f" Ratio to the smaller store: {large / small:.2f}."


def _merge(a: openloop.OpenLoopResult, b: openloop.OpenLoopResult) -> openloop.OpenLoopResult:
    """Two runs at the same rate as one."""
    statuses = dict(a.statuses)
    for code, n in b.statuses.items():
        statuses[code] = statuses.get(code, 0) + n
    return openloop.OpenLoopResult(
        scheduled=a.scheduled + b.scheduled,
        rate=a.rate,
        latencies=a.latencies + b.latencies,
        # The second run's seconds follow the first's.
        due=a.due + [due + a.scheduled / a.rate for due in b.due],
        statuses=statuses,
        accepted=a.accepted + b.accepted,
        errors=a.errors + b.errors,
        send_lag_max=max(a.send_lag_max, b.send_lag_max),
    )


def part_postgresql(plan: Plan, report: Report, work: Path, ceiling: Ceiling | None) -> None:
    """REQUEST per second with the gateway on PostgreSQL."""
    with harness.postgres_server(plan.postgres_url) as server_url:
        report.machine["postgresql"] = harness.postgres_version(server_url)
        with harness.scratch_database(server_url, "kessai_bench") as url:
            log("postgresql: provisioning")
            fleet = harness.provision(url, plan.merchants, plan.terminals_per_merchant)
            serving = _serving(plan, ceiling, "postgresql", url, fleet, work)
            with serving as (server, books, tokens, codes):
                rate = _request_row(
                    report,
                    "postgresql",
                    books,
                    server,
                    tokens,
                    codes,
                    "P",
                    plan,
                    work,
                    ceiling,
                    0.3,
                )
                log(f"postgresql: REQUEST {rate:,.0f}/s")


# --- main -----------------------------------------------------------------------------------------


def run_part(
    report: Report, part: str, keys: Sequence[str], action: Callable[[], object]
) -> object | None:
    """Run one part; a failure marks its rows and the bench goes on with the next part."""
    if part in report.plan.skip:
        report.skip(keys, part)
        return None
    try:
        return action()
    except Exception as error:  # the table says which part failed and why; others still run
        report.fail(keys, part, error)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; exit status 1 when a part failed."""
    plan, out, json_out, workdir, keep = parse_plan(sys.argv[1:] if argv is None else argv)
    if not harness.wrk_available():
        print("wrk is missing: apt-get install wrk (scripts/bench does as root)", file=sys.stderr)
        return 2
    work = workdir or Path(tempfile.mkdtemp(prefix="kessai-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    report = Report(plan)
    report.machine = harness.machine(work)
    started = time.monotonic()
    try:
        ceiling = run_part(
            report,
            "ceiling",
            ("ceiling",),
            lambda: part_ceiling(plan, report, work),
        )
        assert ceiling is None or isinstance(ceiling, Ceiling)
        sqlite = run_part(
            report,
            "sqlite",
            SQLITE_ROWS,
            lambda: part_sqlite(plan, report, work, ceiling),
        )
        if "growth" in plan.skip:
            report.skip(("growth_small", "growth_large"), "growth")
        elif sqlite is None:
            report.fail(
                ("growth_small", "growth_large"),
                "growth",
                BenchError("the sqlite part made no payments to copy"),
            )
        elif isinstance(sqlite, SqliteOutcome):
            run_part(
                report,
                "growth",
                ("growth_small", "growth_large"),
                lambda: part_growth(plan, report, work, sqlite),
            )
        run_part(
            report,
            "postgresql",
            ("postgresql",),
            lambda: part_postgresql(plan, report, work, ceiling),
        )
    finally:
        if keep:
            log(f"work folder kept: {work}")
        elif workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    report.machine["bench duration"] = f"{time.monotonic() - started:,.0f} s"
    command = "scripts/bench --quick" if plan.quick else "scripts/bench"
    print(report.table())
    print()
    print(report.notes())
    if out is not None:
        out.write_text(report.markdown(command), encoding="utf-8")
        log(f"wrote {out}")
    if json_out is not None:
        json_out.write_text(report.as_json(), encoding="utf-8")
    if report.failures:
        log("failed parts: " + "; ".join(report.failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
