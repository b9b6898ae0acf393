"""Two builds of the gateway compared in alternating slices at a fixed REQUEST rate.

    .venv/bin/python bench/ab.py --b /tmp/other/src      # this checkout's src against another
    .venv/bin/python bench/ab.py --a /tmp/x/src --b /tmp/y/src --rounds 40 --slice 2

This machine's speed swings by up to a factor of two within minutes, so two bench runs made one
after the other compare the machine's states as much as the code. Here both builds serve at the
same time, each a `kessai serve` (2 workers on SQLite, the sandbox approving at once) on a fresh
database of its own, started with its ``src`` folder first on ``PYTHONPATH``. The open-loop
generator (bench/openloop.py) then pays on one for a short slice, then on the other, round after
round, the order swapped each round (AB, BA, AB, ...). The two slices of a round see nearly the
same machine, and the comparison is made round by round:

- each round's client p50 and p99 for both builds;
- the median over the rounds of B's figure divided by A's;
- in how many rounds B was the faster, with the sign test's two-sided p-value: the chance of a
  split at least that uneven if neither build were faster.

Every slice pays with fresh codes, as the bench's REQUEST rows do. Before the rounds, each build
first pays ``--before`` times at the same rate, untimed, so that neither is measured cold.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import openloop
from harness import HOST, ROOT, BenchError, Server, log
from run import paying_server

BUILDS = ("A", "B")


@dataclass
class Slices:
    """One build's slices: each one's client p50 and p99 in seconds, and every latency."""

    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    unanswered: int = 0
    not_200: int = 0

    def add(self, result: openloop.OpenLoopResult) -> None:
        """Record one slice."""
        self.p50.append(result.quantile(0.5))
        self.p99.append(result.quantile(0.99))
        self.latencies.extend(result.latencies)
        self.unanswered += result.unanswered
        self.not_200 += result.answered - result.statuses.get(200, 0)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided p-value of ``wins`` against ``losses`` when either is equally likely (ties out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail: float = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(a: Sequence[float], b: Sequence[float]) -> str:
    """One figure's comparison over paired rounds: the median ratio and who won how often."""
    ratios = [y / x for x, y in zip(a, b, strict=True) if x > 0 and math.isfinite(x * y)]
    faster = sum(y < x for x, y in zip(a, b, strict=True))
    slower = sum(y > x for x, y in zip(a, b, strict=True))
    median = f"{statistics.median(ratios):.3f}" if ratios else "n/a"
    return (
        f"B/A median {median}; B faster in {faster} of {len(a)} rounds, slower in {slower} "
        f"(sign test p = {sign_test(faster, slower):.3f})"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}" if math.isfinite(seconds) else "unanswered"


def report(slices: dict[str, Slices], sources: dict[str, Path]) -> str:
    """The rounds, then the comparison of p50 and p99 and each build's pooled figures."""
    a, b = slices["A"], slices["B"]
    lines = [
        f"A: {sources['A']}",
        f"B: {sources['B']}",
        "",
        "| round | A p50 | B p50 | A p99 | B p99 |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n, row in enumerate(zip(a.p50, b.p50, a.p99, b.p99, strict=True)):
        lines.append(f"| {n + 1} | " + " | ".join(_ms(value) for value in row) + " |")
    lines += ["", f"p50: {compare(a.p50, b.p50)}", f"p99: {compare(a.p99, b.p99)}"]
    for name, build in slices.items():
        ordered = sorted(build.latencies)
        pooled = (
            " / ".join(_ms(openloop.nearest_rank(ordered, q)) for q in (0.5, 0.99, 0.999))
            if ordered
            else "nothing answered"
        )
        lines.append(
            f"{name}, all slices together: p50 / p99 / p99.9 {pooled} ms; "
            f"{build.unanswered:,} unanswered, {build.not_200:,} answers other than 200"
        )
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--a", type=Path, default=ROOT / "src", help="A's src folder (this one's)")
    parser.add_argument("--b", type=Path, required=True, help="B's src folder")
    parser.add_argument("--rate", type=float, default=1000.0, help="REQUEST/s (default 1,000)")
    parser.add_argument("--slice", type=float, default=2.0, help="seconds per slice (default 2)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of two slices (20)")
    parser.add_argument(
        "--before", type=int, default=5000, help="untimed payments per build first (5,000)"
    )
    args = parser.parse_args(argv)
    for name in ("a", "b"):
        folder: Path = getattr(args, name)
        if not (folder / "kessai" / "__init__.py").is_file():
            parser.error(f"--{name} {folder}: not a src folder holding the kessai package")
    if args.rate <= 0 or args.slice <= 0 or args.rounds < 1 or args.before < 0:
        parser.error("--rate and --slice must be positive, --rounds at least 1, --before ≥ 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Serve both builds, drive them in alternating slices, print the comparison."""
    args = parse(sys.argv[1:] if argv is None else argv)
    sources = {"A": args.a.resolve(), "B": args.b.resolve()}
    per_slice = max(1, round(args.rate * args.slice))
    count = args.before + args.rounds * per_slice
    work = Path(tempfile.mkdtemp(prefix="kessai-ab-"))
    try:
        with contextlib.ExitStack() as stack:
            servers: dict[str, Server] = {}
            requests: dict[str, list[bytes]] = {}
            for name in BUILDS:
                folder = work / name
                folder.mkdir()
                servers[name], requests[name] = stack.enter_context(
                    paying_server(
                        name,
                        f"sqlite:///{folder / 'kessai.db'}",
                        folder,
                        count,
                        name,
                        {"PYTHONPATH": str(sources[name])},
                    )
                )
            for name in BUILDS:
                if args.before:
                    log(f"{name}: {args.before:,} payments first, untimed")
                    openloop.run(
                        HOST,
                        servers[name].port,
                        requests[name][: args.before],
                        rate=args.rate,
                        seconds=args.before / args.rate,
                    )
            time.sleep(1.0)
            slices = {name: Slices() for name in BUILDS}
            log(f"{args.rounds} rounds of {args.slice:g} s on each build at {args.rate:,.0f}/s")
            for n in range(args.rounds):
                start = args.before + n * per_slice
                for name in BUILDS if n % 2 == 0 else BUILDS[::-1]:
                    slices[name].add(
                        openloop.run(
                            HOST,
                            servers[name].port,
                            requests[name][start : start + per_slice],
                            rate=args.rate,
                            seconds=args.slice,
                        )
                    )
    except BenchError as exc:
        print(f"ab.py: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(slices, sources))
    return 0


if __name__ == "__main__":
    sys.exit(main())
