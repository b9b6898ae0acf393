"""What a REQUEST costs the gateway's own code, without HTTP: CPU per payment, in one process.

    .venv/bin/python bench/units.py                 # SQLite, 20,000 payments a turn, 5 turns
    .venv/bin/python bench/units.py --profile 25    # and cProfile's top 25
    .venv/bin/python bench/units.py --postgres postgresql://kessai@127.0.0.1:55432/postgres

Builds the gateway as `kessai serve` does (``build_gateway``: the sandbox approving at once) on a
fresh database (with ``--postgres``, a new database on that server, dropped afterwards), logs 16
terminals of four merchants in through the service layer, issues fresh sandbox codes of the
bench's services (``harness.issue_codes``), then calls ``Gateway.request`` once per code,
``--concurrency`` at a time on one event loop (uvloop), as a worker's requests would. It prints the
process's CPU time per payment for each turn, and their median: the event loop's part
(validation, hashing, the answer's view) and the units' (SQL and the domain code; on SQLite on the
writer thread), without uvicorn, HTTP parsing or a load generator. A second line splits the
median by thread: the event loop, and on SQLite the writer thread and the checkpointer. One
process and no network make it steadier than the HTTP rows of bench/run.py, so it is the measure
for changes to the service code's own cost; it is not a throughput figure. PostgreSQL's own CPU
is not counted.

``--profile N`` runs the turns under cProfile, on the writer thread on SQLite and on the event
loop's on PostgreSQL (where the units run, in greenlets), and prints the functions with the most
time of their own and with their callees; profiling slows everything several times, so its
turns' figures are not comparable with unprofiled ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness
import uvloop
from sqlalchemy.engine import Connection

from kessai.adapters import db as db_module
from kessai.adapters.migrate import upgrade
from kessai.api.app import build_gateway, freeze_startup_objects
from kessai.config import Settings
from kessai.security import new_session_token, token_hash
from kessai.service import admin, sessions

TERMINALS = 16


def _terminals(gateway: Any, now: datetime) -> list[str]:
    """Log ``TERMINALS`` terminals of four merchants in: their session tokens."""
    tokens: list[str] = []
    settings = Settings()

    def unit(conn: Connection) -> None:
        os_value = admin.create_integration(conn, "Bench POS", now)
        merchants = [admin.create_merchant(conn, f"Shop {i}", now) for i in range(4)]
        for i in range(TERMINALS):
            issued = admin.create_terminal(conn, merchants[i % 4], now)
            subject = sessions.read_login_subject(conn, os_value, issued.mid)
            assert subject.terminal_id is not None
            token = new_session_token()
            outcome = sessions.finish_login(
                conn,
                terminal_id=subject.terminal_id,
                password_ok=True,
                device_key=f"AA:BB:CC:DD:EE:{i:02X}",
                os_value=os_value,
                token_digest=token_hash(token),
                now=now,
                settings=settings,
                request_id="bench",
            )
            assert outcome.error is None
            tokens.append(token)

    gateway.db.run_sync(unit)
    return tokens


@dataclass(frozen=True)
class Turn:
    """One turn's CPU seconds per payment: the process's, and each thread role's
    (``harness.THREAD_ROLES``: the event loop, the SQLite writer, its checkpointer)."""

    cpu: float
    by_role: dict[str, float]


async def _turn(gateway: Any, tokens: list[str], codes: list[str], concurrency: int) -> Turn:
    """Pay once with each code; the CPU seconds per payment it cost."""
    queue = iter(enumerate(codes))
    prefix = uuid.uuid4().hex[:8]

    async def payer() -> None:
        for index, code in queue:
            view = await gateway.request(
                tokens[index % len(tokens)],
                trans_key=f"{prefix}{index}",
                amount=100 + index % 900,
                code=code,
                service_id=None,  # identified from the code, as the bench's requests are
                request_id=f"r{index}",
            )
            assert view.payment.status.value == "COMPLETED", view.payment.status

    threads = _thread_cpu()
    started = time.process_time()
    await asyncio.gather(*(payer() for _ in range(concurrency)))
    cpu = time.process_time() - started
    used = harness.thread_use(threads, _thread_cpu())
    return Turn(cpu / len(codes), {role: seconds / len(codes) for role, seconds in used.items()})


def _thread_cpu() -> dict[tuple[int, int], tuple[str, float]]:
    """``harness.thread_snapshot`` of this process, read from each thread's own CPU clock.

    To the nanosecond: /proc counts in 10 ms ticks, too coarse for a short turn.
    """
    found = {}
    pid = os.getpid()
    for thread in threading.enumerate():
        if thread.ident is None or thread.native_id is None:
            continue
        try:
            name = Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip()
            seconds = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, ProcessLookupError):
            continue  # ended meanwhile
        found[pid, thread.native_id] = (harness.thread_role(pid, thread.native_id, name), seconds)
    return found


def _profiled_writer(profile: cProfile.Profile, measuring: list[bool]) -> None:
    """Run every SQLite group under ``profile``, on the writer thread, once ``measuring``."""
    run_group = db_module._SqliteWriter._run_group

    def profiled(self: Any, group: list[Any], lock_fd: int | None) -> Any:
        if not measuring:
            return run_group(self, group, lock_fd)
        profile.enable()
        try:
            return run_group(self, group, lock_fd)
        finally:
            profile.disable()

    db_module._SqliteWriter._run_group = profiled  # type: ignore[method-assign]


def _measure(
    url: str,
    args: argparse.Namespace,
    measuring: list[bool],
    now: datetime,
    loop_profile: cProfile.Profile | None,
    batched: list[db_module.Batched],
) -> list[Turn]:
    """The warm-up, then each turn's CPU per payment, on a fresh database at ``url``.

    ``batched`` receives the database's batch counts (``Database.batched``) before the measured
    turns and after them.
    """
    gateway = build_gateway(url, Settings(sandbox_enabled=True))
    upgrade(gateway.db)
    tokens = _terminals(gateway, now)
    warmup = min(2_000, args.payments)
    codes = harness.issue_codes(url, warmup + args.turns * args.payments)
    # As a serving worker does once started: without it, each full collection walks every
    # module's objects again, a cost the server does not pay (20-35 % more CPU per payment).
    freeze_startup_objects()

    async def run() -> list[Turn]:
        try:
            await _turn(gateway, tokens, codes[:warmup], args.concurrency)
            measuring.append(True)
            batched.append(gateway.db.batched())
            if loop_profile is not None:
                loop_profile.enable()
            figures = []
            for turn in range(args.turns):
                start = warmup + turn * args.payments
                chunk = codes[start : start + args.payments]
                figures.append(await _turn(gateway, tokens, chunk, args.concurrency))
            batched.append(gateway.db.batched())
            return figures
        finally:
            if loop_profile is not None:
                loop_profile.disable()
            await gateway.aclose()

    # uvloop, as under `kessai serve`.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run())


def main(argv: list[str] | None = None) -> int:
    """Measure, print, return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=20_000, help="per turn (20,000)")
    parser.add_argument("--turns", type=int, default=5, help="measured turns (5), after a warm-up")
    parser.add_argument("--concurrency", type=int, default=64, help="payments at once (64)")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="a PostgreSQL server: the run uses a new database on it, dropped afterwards",
    )
    parser.add_argument("--profile", type=int, metavar="N", help="print cProfile's top N")
    args = parser.parse_args(argv)
    profile = cProfile.Profile() if args.profile else None
    # Set once the warm-up is over: only the measured turns are profiled.
    measuring: list[bool] = []
    if profile is not None and not args.postgres:
        _profiled_writer(profile, measuring)
    now = datetime.now(UTC)
    with contextlib.ExitStack() as stack:
        if args.postgres:
            url = stack.enter_context(harness.scratch_database(args.postgres, "kessai_units"))
        else:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="kessai-units-"))
            url = f"sqlite:///{Path(folder) / 'kessai.db'}"
        # On PostgreSQL the units run on the event loop's thread: that thread is profiled.
        loop_profile = profile if args.postgres else None
        batched: list[db_module.Batched] = []
        figures = _measure(url, args, measuring, now, loop_profile, batched)
    kind = "PostgreSQL" if args.postgres else "SQLite"
    print(f"{gc.get_freeze_count():,} objects of the setup frozen out of the garbage collector")
    per_turn = ", ".join(f"{turn.cpu * 1e6:.0f}" for turn in figures)
    print(
        f"REQUEST without HTTP on {kind}, {args.payments:,} payments per turn, "
        f"{args.concurrency} at once: CPU per payment {per_turn} µs; "
        f"median {statistics.median(turn.cpu for turn in figures) * 1e6:.0f} µs"
    )
    # Where it went, thread by thread: on SQLite the writer's part is what every process waits
    # for at saturation, since the writers hold the write lock in turn.
    medians = {
        role: statistics.median(turn.by_role.get(role, 0.0) for turn in figures) * 1e6
        for role in harness.THREAD_ROLES
    }
    split = ", ".join(f"{role} {us:.0f}" for role, us in medians.items() if us >= 0.5)
    print(f"by thread, median µs per payment: {split}")
    before, after = batched
    if after.write_batches > before.write_batches:
        writes = (after.writes - before.writes) / (after.write_batches - before.write_batches)
        print(f"Payments' last statements sent to PostgreSQL {writes:.1f} at a time")
        # A read that found no other unit's to go with goes alone, uncounted.
        payments = args.turns * args.payments
        shared = after.reads - before.reads
        batches = max(1, after.read_batches - before.read_batches)
        print(
            f"Reads sent with others: {shared / batches:.1f} at a time, "
            f"{shared / payments:.2f} per payment"
        )
    if profile is not None:
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("tottime").print_stats(args.profile)
        stats.sort_stats("cumulative").print_stats(args.profile)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
