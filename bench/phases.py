"""Where a REQUEST's latency goes inside the gateway, phase by phase, at a fixed rate.

    .venv/bin/python bench/phases.py                        # 1,000 REQUEST/s for 20 s
    .venv/bin/python bench/phases.py --rate 2000 --seconds 10
    .venv/bin/python bench/phases.py --before 90000 --spare 340000   # as in the full bench

Starts `kessai serve` (2 workers on SQLite, the sandbox approving at once) on 127.0.0.1 with
bench/phasehook on its path, which times each group of units on the writer thread; pays with
fresh codes at a fixed rate (bench/openloop.py); then splits each payment's time from being
queued for the writer thread to its answer being handed back to the event loop into phases:

- queued: waiting for the writer thread, busy with the groups before;
- lock wait: waiting for the writer lock while another process commits;
- under the lock: BEGIN, every unit of the group, COMMIT;
- WAL flush: the fsync that makes the group durable, after the lock is let go;
- answer: until the event loop runs the answer.

It prints each phase's mean over all payments, over those between the 90th and 99th percentile,
and over the slowest 1 %, with the group size and how many overlapped a checkpoint. What comes
before (HTTP, the express lane) and after (the response) is the difference to the client's
latency, printed above the table.

``--before N`` first pays N times at ``--before-rate``, untimed, as the full bench's latency row
comes after its saturating REQUEST row: the books, the WAL and the processes are then as that row
left them. ``--spare N`` issues N more codes that are never used, since the full bench issues
enough for its saturating row and the codes' table is that large. Timing adds a little work per
group; figures are close to, not the same as, the bench's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openloop
from harness import BENCH, HOST, log
from run import paying_server

HOOK = BENCH / "phasehook"
# Each phase: its name in the table, and the two stamps it lies between.
PHASES = (
    ("queued", "queued", "taken"),
    ("lock wait", "taken", "locked"),
    ("under the lock", "locked", "unlocked"),
    ("of which the writer's CPU", "locked_cpu", "unlocking_cpu"),
    ("WAL flush", "unlocked", "flushed"),
    ("answer", "flushed", "answered"),
)


@dataclass(frozen=True)
class Payment:
    """One unit's stamps (monotonic seconds) and the group it ran in."""

    queued: float
    group: dict[str, Any]

    def stamp(self, name: str) -> float:
        """A stamp of this payment: its own queuing, or its group's.

        A group takes in the units queued while it waited for the writer lock, after it was
        taken up: for such a unit, a stamp of its group from before it was queued reads as its
        queuing, so that its phases start when it does (no negative wait) and still add up.
        The writer's CPU readings are a clock of their own, and are kept as they are.
        """
        if name == "queued":
            return self.queued
        value = float(self.group[name])
        return value if name.endswith("_cpu") else max(value, self.queued)

    @property
    def total(self) -> float:
        """From queued to the event loop running its answer."""
        return self.stamp("answered") - self.queued

    def phase(self, start: str, end: str) -> float:
        """Seconds between two stamps."""
        return self.stamp(end) - self.stamp(start)


def read_records(lines: Iterable[str]) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
    """Groups and checkpoints from the hook's JSON lines."""
    groups: list[dict[str, Any]] = []
    checkpoints: list[tuple[float, float]] = []
    for line in lines:
        record = json.loads(line)
        if "checkpoint" in record:
            start, end = record["checkpoint"]
            checkpoints.append((float(start), float(end)))
        else:
            groups.append(record)
    return groups, checkpoints


def payments(groups: Iterable[dict[str, Any]], start: float, end: float) -> list[Payment]:
    """The units queued within [start, end) of groups that wrote and were answered, by total."""
    stamps = ("locked", "unlocked", "flushed", "answered")
    found = [
        Payment(queued, group)
        for group in groups
        if all(name in group for name in stamps)
        for queued in group["queued"]
        if queued is not None and start <= queued < end
    ]
    found.sort(key=lambda payment: payment.total)
    return found


def _overlaps(payment: Payment, checkpoints: Sequence[tuple[float, float]]) -> bool:
    answered = payment.stamp("answered")
    return any(start < answered and end > payment.queued for start, end in checkpoints)


def by_second(found: Sequence[Payment], start: float) -> str:
    """The in-gateway p99 of the payments queued in each second after ``start``.

    A p99 over the whole window cannot tell a steady tail from one bad second (a checkpoint of
    another process's writes, say); this line can.
    """
    p99s = openloop.per_second(((p.queued - start, p.total) for p in found), 0.99)
    parts = [f"{second}: {p99 * 1000:.2f}" for second, p99 in p99s.items()]
    return "in-gateway p99 by second of the window, ms — " + ", ".join(parts)


def report(found: Sequence[Payment], checkpoints: Sequence[tuple[float, float]]) -> str:
    """The table: percentiles of the in-gateway time, then each phase's mean per slice."""
    if not found:
        return "no timed payments in the window"
    count = len(found)
    totals = [payment.total for payment in found]

    def at(q: float) -> float:
        return openloop.nearest_rank(totals, q) * 1000

    slices = {
        "all": found,
        "p90–p99": found[int(count * 0.9) : int(count * 0.99)] or found[-1:],
        "slowest 1 %": found[int(count * 0.99) :] or found[-1:],
    }
    lines = [
        f"{count:,} payments, queued for the writer thread → answer on the event loop: "
        f"p50 {at(0.5):.2f} ms, p90 {at(0.9):.2f} ms, p99 {at(0.99):.2f} ms, "
        f"p99.9 {at(0.999):.2f} ms",
        "",
        "| mean, ms | " + " | ".join(slices) + " |",
        "|---|" + "---:|" * len(slices),
    ]
    for name, start, end in PHASES:
        means = [sum(p.phase(start, end) for p in part) / len(part) for part in slices.values()]
        label = f"  {name}" if start.endswith("_cpu") else name  # a part of the row above
        lines.append(f"| {label} | " + " | ".join(f"{m * 1000:.2f}" for m in means) + " |")
    means = [sum(p.total for p in part) / len(part) for part in slices.values()]
    lines.append("| **in all** | " + " | ".join(f"{m * 1000:.2f}" for m in means) + " |")
    sizes = [sum(len(p.group["queued"]) for p in part) / len(part) for part in slices.values()]
    lines.append("| units in its group | " + " | ".join(f"{s:.1f}" for s in sizes) + " |")
    shares = [
        100 * sum(_overlaps(p, checkpoints) for p in part) / len(part) for part in slices.values()
    ]
    lines.append("| overlapped a checkpoint | " + " | ".join(f"{s:.0f} %" for s in shares) + " |")
    # ``found`` is sorted by time in the gateway: the window is from its earliest queued payment.
    window = (min(p.queued for p in found), max(p.stamp("answered") for p in found))
    inside = [end - start for start, end in checkpoints if window[0] <= start < window[1]]
    lines.append("")
    if inside:
        lines.append(
            f"checkpoints in the window: {len(inside):,}, "
            f"{1000 * sum(inside) / len(inside):.2f} ms on average, longest "
            f"{1000 * max(inside):.2f} ms"
        )
    lines.append(by_second(found, window[0]))
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="REQUEST/s (default 1,000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="load time (default 20)")
    parser.add_argument(
        "--before", type=int, default=0, help="payments made first, untimed (default none)"
    )
    parser.add_argument(
        "--before-rate", type=float, default=5000.0, help="their rate (default 5,000/s)"
    )
    parser.add_argument(
        "--spare", type=int, default=0, help="codes issued and never used (default none)"
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.before_rate <= 0:
        parser.error("--rate, --seconds and --before-rate must be above zero")
    if args.before < 0 or args.spare < 0:
        parser.error("--before and --spare cannot be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Serve with the hook, load at a fixed rate, print the phases."""
    args = parse(sys.argv[1:] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="kessai-phases-"))
    try:
        url = f"sqlite:///{work / 'kessai.db'}"
        traces = work / "phases"
        traces.mkdir()
        count = max(1, round(args.rate * args.seconds))
        before = args.before
        path = os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")]))
        env = {"PYTHONPATH": path, "KESSAI_BENCH_PHASES": str(traces)}
        made_count = before + count + args.spare
        with paying_server("phases", url, work, made_count, "P", env) as (server, made):
            requests = made[before : before + count]
            if before:
                log(f"{before:,} payments first, at {args.before_rate:,.0f}/s")
                openloop.run(
                    HOST,
                    server.port,
                    made[:before],
                    rate=args.before_rate,
                    seconds=before / args.before_rate,
                )
                time.sleep(2.0)  # its stragglers answered, as the bench settles between rows
            log(f"{args.rate:,.0f} REQUEST/s for {args.seconds:g} s")
            start = time.monotonic()  # the hook's clock, shared by every process
            result = openloop.run(HOST, server.port, requests, rate=args.rate, seconds=args.seconds)
            end = time.monotonic()
            # The hook writes what was answered every half second; what it still held when the
            # server stops is not always written, so three of its rounds go by first.
            time.sleep(1.5)
        lines = [
            line
            for trace in sorted(traces.glob("phases-*.jsonl"))
            for line in trace.read_text(encoding="utf-8").splitlines()
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    groups, checkpoints = read_records(lines)
    answered = result.statuses.get(200, 0)
    print(
        f"REQUEST at {args.rate:,.0f}/s for {args.seconds:g} s: {result.scheduled:,} sent, "
        f"{answered:,} answered with HTTP 200; at the client p50 "
        f"{result.quantile(0.5) * 1000:.2f} ms, p99 {result.quantile(0.99) * 1000:.2f} ms, "
        f"p99.9 {result.quantile(0.999) * 1000:.2f} ms"
    )
    print(report(payments(groups, start, end), checkpoints))
    return 0


if __name__ == "__main__":
    sys.exit(main())
