"""Two builds of the gateway compared in alternating slices, round by round.

    .venv/bin/python bench/ab.py --b /tmp/other/src      # this checkout's src against another
    .venv/bin/python bench/ab.py --a /tmp/x/src --b /tmp/y/src --rounds 40 --slice 2
    .venv/bin/python bench/ab.py --b /tmp/other/src --throughput     # REQUEST/s under wrk
    .venv/bin/python bench/ab.py --b src --b-env KESSAI_PIN_WORKERS=false  # one setting

This machine's speed swings by up to a factor of two within minutes, so two bench runs made one
after the other compare the machine's states as much as the code. Here both builds serve at the
same time, each a `kessai serve` (2 workers on SQLite, the sandbox approving at once) on a fresh
database of its own, started with its ``src`` folder first on ``PYTHONPATH``. Each is driven for
a short slice, then the other, round after round, the order swapped each round (AB, BA, AB, ...):
the two slices of a round see nearly the same machine, and the comparison is made round by round.

- By default, latency: the open-loop generator (bench/openloop.py) pays at ``--rate`` and each
  slice gives the client's p50 and p99.
- With ``--throughput``: wrk pays as fast as the build answers (bench/wrk/replay.lua, 2 threads,
  64 connections, slices of whole seconds) and each slice gives the answers below 400 per second.

For each figure it prints every round's value for both builds, the median over the rounds of B's
divided by A's, in how many rounds B did better, with the sign test's two-sided p-value (the
chance of a split at least that uneven if neither build were better), and each build's figures
over all its slices. Every payment has a fresh code and transKey, as in the bench's REQUEST rows.
Before the rounds each build pays ``--before`` times at ``--rate``, untimed, so that neither is
measured cold. ``--a-env`` and ``--b-env`` (``NAME=VALUE``, repeatable) add to one build's
environment: the same ``src`` with a setting changed is a build too.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import harness
import openloop
from harness import HOST, ROOT, BenchError, Server, log
from run import Turns, parse_plan, payment_lines, payment_requests, serving_fleet, turn_by_turn

BUILDS = ("A", "B")
WRK_THREADS = 2
WRK_CONNECTIONS = 64
# Codes issued per throughput slice second: above what either build can pay in a second here.
CODES_PER_WRK_SECOND = 9_000


@dataclass
class Slices:
    """One build's slices: each figure's value per slice, and what went wrong."""

    figures: dict[str, list[float]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    unanswered: int = 0
    not_200: int = 0
    # Throughput slices whose codes ran out before wrk's time was up (their rate is a floor).
    exhausted: int = 0

    def put(self, figure: str, value: float) -> None:
        """Record one slice's ``figure``."""
        self.figures.setdefault(figure, []).append(value)

    def add_open_loop(self, result: openloop.OpenLoopResult) -> None:
        """Record one latency slice."""
        self.put("p50", result.quantile(0.5))
        self.put("p99", result.quantile(0.99))
        self.latencies.extend(result.latencies)
        self.unanswered += result.unanswered
        self.not_200 += result.answered - result.statuses.get(200, 0)

    def add_wrk(self, result: harness.WrkResult) -> None:
        """Record one throughput slice."""
        self.put("REQUEST/s", result.ok_per_second)
        self.not_200 += result.status_errors
        self.unanswered += result.socket_errors + result.timeouts
        self.exhausted += result.threads_exhausted > 0


def sign_test(wins: int, losses: int) -> float:
    """Two-sided p-value of ``wins`` against ``losses`` when either is equally likely (ties out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail: float = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(a: Sequence[float], b: Sequence[float], *, higher_is_better: bool = False) -> str:
    """One figure's comparison over paired rounds: the median ratio and who did better how often."""
    pairs = list(zip(a, b, strict=True))
    ratios = [y / x for x, y in pairs if x > 0 and math.isfinite(x * y)]
    better = sum((y > x) if higher_is_better else (y < x) for x, y in pairs)
    worse = sum((y < x) if higher_is_better else (y > x) for x, y in pairs)
    median = f"{statistics.median(ratios):.3f}" if ratios else "n/a"
    return (
        f"B/A median {median}; B better in {better} of {len(pairs)} rounds, worse in {worse} "
        f"(sign test p = {sign_test(better, worse):.3f})"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}" if math.isfinite(seconds) else "unanswered"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def report(slices: dict[str, Slices], sources: Mapping[str, object], *, throughput: bool) -> str:
    """The rounds, then each figure's comparison and each build's figures over all its slices.

    ``sources`` names each build as the report heads it: its src folder, and its variables.
    """
    a, b = slices["A"], slices["B"]
    names = ["REQUEST/s"] if throughput else ["p50", "p99"]
    show: Callable[[float], str] = _rate if throughput else _ms
    lines = [
        f"A: {sources['A']}",
        f"B: {sources['B']}",
        "",
        "| round | " + " | ".join(f"A {name} | B {name}" for name in names) + " |",
        "|---:|" + "---:|---:|" * len(names),
    ]
    columns = [side.figures.get(name, []) for name in names for side in (a, b)]
    for n, row in enumerate(zip(*columns, strict=True)):
        lines.append(f"| {n + 1} | " + " | ".join(show(value) for value in row) + " |")
    lines.append("")
    for name in names:
        paired = compare(
            a.figures.get(name, []), b.figures.get(name, []), higher_is_better=throughput
        )
        lines.append(f"{name}: {paired}")
    for label, build in slices.items():
        if throughput:
            rates = build.figures.get("REQUEST/s", [])
            summary = f"mean {_rate(statistics.fmean(rates))}/s" if rates else "no slice"
            floors = (
                f", {build.exhausted} slices ran out of codes (floors)" if build.exhausted else ""
            )
            lines.append(
                f"{label}, all slices: {summary}; {build.not_200:,} answers of 400 or more, "
                f"{build.unanswered:,} socket errors and timeouts{floors}"
            )
            continue
        ordered = sorted(build.latencies)
        pooled = (
            " / ".join(_ms(openloop.nearest_rank(ordered, q)) for q in (0.5, 0.99, 0.999))
            if ordered
            else "nothing answered"
        )
        lines.append(
            f"{label}, all slices together: p50 / p99 / p99.9 {pooled} ms; "
            f"{build.unanswered:,} unanswered, {build.not_200:,} answers other than 200"
        )
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--a", type=Path, default=ROOT / "src", help="A's src folder (this one's)")
    parser.add_argument("--b", type=Path, required=True, help="B's src folder")
    parser.add_argument(
        "--throughput", action="store_true", help="REQUEST/s under wrk instead of latency"
    )
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="latency: REQUEST/s (default 1,000)"
    )
    parser.add_argument(
        "--slice", type=float, default=2.0, help="seconds per slice (2; whole seconds with wrk)"
    )
    parser.add_argument("--rounds", type=int, default=20, help="rounds of two slices (20)")
    parser.add_argument(
        "--before", type=int, default=5000, help="untimed payments per build first (5,000)"
    )
    for name in ("a", "b"):
        parser.add_argument(
            f"--{name}-env",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"a variable of {name.upper()}'s environment (repeatable)",
        )
    args = parser.parse_args(argv)
    for name in ("a", "b"):
        pairs = [item.partition("=") for item in getattr(args, f"{name}_env")]
        if any(not key or not equals for key, equals, _ in pairs):
            parser.error(f"--{name}-env takes NAME=VALUE")
        setattr(args, f"{name}_env", {key: value for key, _, value in pairs})
        folder: Path = getattr(args, name)
        if not (folder / "kessai" / "__init__.py").is_file():
            parser.error(f"--{name} {folder}: not a src folder holding the kessai package")
    if args.rate <= 0 or args.slice <= 0 or args.rounds < 1 or args.before < 0:
        parser.error("--rate and --slice must be positive, --rounds at least 1, --before ≥ 0")
    if args.throughput and not harness.wrk_available():
        parser.error("--throughput needs wrk on PATH (scripts/bootstrap --bench installs it)")
    return args


def _drive(
    args: argparse.Namespace,
    servers: dict[str, Server],
    tokens: dict[str, dict[str, str]],
    codes: dict[str, list[str]],
    work: Path,
) -> dict[str, Slices]:
    """The untimed payments, then the rounds; each build's slices."""
    per_slice = _per_slice(args)
    requests = {
        name: payment_requests(
            servers[name],
            tokens[name],
            codes[name][: args.before + (0 if args.throughput else args.rounds * per_slice)],
            name,
        )
        for name in BUILDS
    }
    for name in BUILDS:
        if args.before:
            log(f"{name}: {args.before:,} payments first, untimed")
            before = requests[name][: args.before]
            openloop.run(
                HOST, servers[name].port, before, rate=args.rate, seconds=len(before) / args.rate
            )
    time.sleep(1.0)  # the stragglers answered
    slices = {name: Slices() for name in BUILDS}
    what = "wrk" if args.throughput else f"{args.rate:,.0f}/s"
    log(f"{args.rounds} rounds of {args.slice:g} s on each build, {what}")
    if not args.throughput:
        # The bench's own turns: the open-loop generator with the full bench's connections and
        # drain time, each payment sent in one slice only.
        plan, *_ = parse_plan([])
        sides = [Turns(servers[name], requests[name][args.before :], once=True) for name in BUILDS]
        measured = turn_by_turn(plan, sides, args.rate, args.rounds * args.slice, args.rounds)
        for name, results in zip(BUILDS, measured, strict=True):
            for result in results:
                slices[name].add_open_loop(result)
        return slices
    for n in range(args.rounds):
        start = args.before + n * per_slice
        for name in BUILDS if n % 2 == 0 else BUILDS[::-1]:
            prefix = work / name / f"slice-{n}"
            # A tag of its own per slice keeps every transKey fresh.
            lines = payment_lines(
                codes[name][start : start + per_slice], tokens[name], f"{name}{n:04d}"
            )
            harness.write_lines(prefix, lines, WRK_THREADS)
            slices[name].add_wrk(
                harness.run_wrk(
                    servers[name].base_url,
                    prefix,
                    "once",
                    _wrk_seconds(args),
                    connections=WRK_CONNECTIONS,
                    threads=WRK_THREADS,
                )
            )
            # wrk leaves up to one request per connection unanswered at its end: let the build
            # finish them before the other's slice starts.
            time.sleep(0.5)
    return slices


def _wrk_seconds(args: argparse.Namespace) -> int:
    return max(1, round(float(args.slice)))


def _per_slice(args: argparse.Namespace) -> int:
    """Codes (payments at most) per slice."""
    if args.throughput:
        return CODES_PER_WRK_SECOND * _wrk_seconds(args)
    return max(1, round(float(args.rate) * float(args.slice)))


def main(argv: Sequence[str] | None = None) -> int:
    """Serve both builds, drive them in alternating slices, print the comparison."""
    args = parse(sys.argv[1:] if argv is None else argv)
    sources = {"A": args.a.resolve(), "B": args.b.resolve()}
    envs: dict[str, dict[str, str]] = {"A": args.a_env, "B": args.b_env}
    count = args.before + args.rounds * _per_slice(args)
    work = Path(tempfile.mkdtemp(prefix="kessai-ab-"))
    try:
        with contextlib.ExitStack() as stack:
            servers: dict[str, Server] = {}
            tokens: dict[str, dict[str, str]] = {}
            codes: dict[str, list[str]] = {}
            for name in BUILDS:
                folder = work / name
                folder.mkdir()
                servers[name], tokens[name], codes[name] = stack.enter_context(
                    serving_fleet(
                        name,
                        f"sqlite:///{folder / 'kessai.db'}",
                        folder,
                        count,
                        {"PYTHONPATH": str(sources[name]), **envs[name]},
                    )
                )
            slices = _drive(args, servers, tokens, codes, work)
    except BenchError as exc:
        print(f"ab.py: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    labels = {
        name: " ".join([str(sources[name]), *(f"{k}={v}" for k, v in envs[name].items())])
        for name in BUILDS
    }
    print(report(slices, labels, throughput=args.throughput))
    return 0


if __name__ == "__main__":
    sys.exit(main())
