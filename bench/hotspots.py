"""Where a REQUEST's time goes: py-spy on both gateway workers under open-loop load.

    .venv/bin/python bench/hotspots.py                      # 4,000 REQUEST/s for 10 s
    .venv/bin/python bench/hotspots.py --rate 1000 --seconds 20 --top 30
    .venv/bin/python bench/hotspots.py --postgres --rate 500   # on a private PostgreSQL cluster
    .venv/bin/python bench/hotspots.py --postgres --native     # C frames too: system calls

Starts `kessai serve` (2 workers on SQLite, or with --postgres on PostgreSQL, the sandbox
approving at once) on 127.0.0.1, pays with fresh codes at a fixed rate (bench/openloop.py),
samples both workers with py-spy meanwhile, and prints, per thread (the event loop, the writer
thread that holds SQLite's write lock, the checkpointer; on PostgreSQL the event loop alone runs
the units), the functions with the largest share of that thread's samples: on their own ("self")
and with what they call ("incl."). py-spy samples what each thread is doing, whether it computes
or waits (for the GIL, for the disk, for the write lock); the CPU line above the tables says how
busy the machine was and what a payment cost in CPU (as in BENCHMARKS.md), PostgreSQL's own
processes apart. Sampling costs CPU too (py-spy's own share is on that line): latency and
throughput measured here are not the bench's figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import harness
import openloop
from harness import HOST, BenchError, log
from run import paying_server

# py-spy names a thread in its raw output as "thread (ID): NAME"; the roles we report.
ROLES = {"MainThread": "event loop", "kessai-db": "writer", "kessai-checkpoint": "checkpointer"}
# The roles whose tables are printed, in this order.
SHOWN = ("event loop", "writer", "checkpointer")
# "Class.method (path/to/file.py:123)": the line is dropped, so a function is counted once.
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


@dataclass
class ThreadProfile:
    """The samples of one role of thread, summed over the workers."""

    samples: int = 0
    own: Counter[str] = field(default_factory=Counter)
    within: Counter[str] = field(default_factory=Counter)


def _function(frame: str) -> str:
    """A frame without its line number, its file shortened to the last two parts of its path."""
    matched = _FRAME.match(frame)
    if matched is None:
        return frame
    parts = matched["file"].split("/")
    return f"{matched['name']} ({'/'.join(parts[-2:])})"


def read_profiles(lines: Iterable[str]) -> dict[str, ThreadProfile]:
    """Sum py-spy's raw (collapsed) stacks by thread role: "FRAMES COUNT" per line."""
    profiles: dict[str, ThreadProfile] = {}
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        first, *frames = stack.split(";")
        thread = first.partition(": ")[2] or first
        role = ROLES.get(thread, thread)
        profile = profiles.setdefault(role, ThreadProfile())
        count = int(count_text)
        profile.samples += count
        names = [_function(frame) for frame in frames]
        if names:
            profile.own[names[-1]] += count
            for name in set(names):  # a recursive function counts once per sample
                profile.within[name] += count
    return profiles


def table(profile: ThreadProfile, top: int) -> str:
    """The ``top`` functions by self share, then the ``top`` by inclusive share.

    Frames under which most samples fall while doing little themselves (the thread's
    bootstrap, the worker's start-up chain) say nothing and are left out of the inclusive list.
    """
    total = profile.samples or 1
    lines = ["  self   function"]
    for name, count in profile.own.most_common(top):
        lines.append(f"  {100 * count / total:5.1f}% {name}")
    lines.append("  incl.  function")
    shown = 0
    for name, count in profile.within.most_common():
        if count / total >= 0.8 and profile.own[name] / total < 0.05:
            continue
        lines.append(f"  {100 * count / total:5.1f}% {name}")
        shown += 1
        if shown == top:
            break
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=4000.0, help="REQUEST/s (default 4,000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="sampling time (default 10)")
    parser.add_argument(
        "--samples", type=int, default=200, help="py-spy samples/s per worker (default 200)"
    )
    parser.add_argument("--top", type=int, default=20, help="functions per list (default 20)")
    parser.add_argument(
        "--native",
        action="store_true",
        help="sample C frames too (system calls, compiled drivers, the event loop's own code)",
    )
    parser.add_argument(
        "--postgres",
        nargs="?",
        const="",
        default=None,
        metavar="URL",
        help="pay on PostgreSQL: the server at URL, or a private cluster started for the run",
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.top <= 0 or args.samples <= 0:
        parser.error("--rate, --seconds, --samples and --top must be above zero")
    return args


def _profile(
    args: argparse.Namespace, spy: str, work: Path
) -> tuple[dict[str, ThreadProfile], openloop.OpenLoopResult, harness.CpuUse, int]:
    """Serve, load and sample; answer the profiles by role, the load's result and the CPU used."""
    count = max(1, round(args.rate * args.seconds))
    with database(args.postgres, work) as url:
        with paying_server("hotspots", url, work, count, "S") as (server, requests):
            pids = server.worker_pids()
            outputs = [work / f"spy-{pid}.txt" for pid in pids]
            log(f"{args.rate:,.0f} REQUEST/s for {args.seconds:g} s; py-spy on workers {pids}")
            spies = [
                subprocess.Popen(
                    [
                        spy, "record", "--pid", str(pid), "--threads", "--format", "raw",
                        "--rate", str(args.samples), "--duration", str(round(args.seconds)),
                        "--output", str(out),
                        # py-spy unwinds C frames only in a process it pauses for each sample.
                        *(["--native"] if args.native else ["--nonblocking"]),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for pid, out in zip(pids, outputs, strict=True)
            ]  # fmt: skip
            before = harness.cpu_snapshot()
            time.sleep(0.3)  # py-spy attaches
            result = openloop.run(
                HOST,
                server.port,
                requests,
                rate=args.rate,
                seconds=args.seconds,
                drain_seconds=5.0,
            )
            others = {os.getpid(): "load generator", **{spy.pid: "py-spy" for spy in spies}}
            classify = harness.classifier([*pids, server.process.pid], others)
            cpu = harness.cpu_use(before, harness.cpu_snapshot(), classify)
            for process in spies:
                _, errors = process.communicate(timeout=args.seconds + 60)
                if process.returncode != 0:
                    raise BenchError(f"py-spy failed ({process.returncode}): {errors.strip()}")
        profiles = read_profiles(
            line for out in outputs for line in out.read_text(encoding="utf-8").splitlines()
        )
    return profiles, result, cpu, len(outputs)


@contextlib.contextmanager
def database(postgres: str | None, work: Path) -> Iterator[str]:
    """The gateway's database: a fresh SQLite file, or a fresh database on a PostgreSQL server."""
    if postgres is None:
        yield f"sqlite:///{work / 'kessai.db'}"
        return
    with (
        harness.postgres_server(postgres or None) as server_url,
        harness.scratch_database(server_url, "kessai_hotspots") as url,
    ):
        yield url


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load, profile the workers, print the tables."""
    args = parse(sys.argv[1:] if argv is None else argv)
    spy = shutil.which("py-spy") or str(harness.BIN / "py-spy")
    if not Path(spy).exists():
        print("py-spy is missing: scripts/bootstrap --bench installs it", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kessai-hotspots-"))
    try:
        profiles, result, cpu, workers = _profile(args, spy, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    answered = result.statuses.get(200, 0)
    print(
        f"REQUEST at {args.rate:,.0f}/s for {args.seconds:g} s: {result.scheduled:,} sent, "
        f"{answered:,} answered with HTTP 200, "
        f"p50 {result.quantile(0.5) * 1000:.1f} ms, p99 {result.quantile(0.99) * 1000:.1f} ms"
    )
    print(cpu.text(answered, "payment"))
    for role in SHOWN:
        profile = profiles.get(role)
        if profile is None:
            continue
        print(f"\n== {role}: {profile.samples:,} samples over {workers} workers")
        print(table(profile, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
