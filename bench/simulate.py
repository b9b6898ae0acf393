"""The seeded fault simulation's long mode: the service layer under faults, checked at every step.

    .venv/bin/python bench/simulate.py [--ops 100000] [--seed N | --replay N]
                                       [--quiesce-every 2500] [--trace FILE]
                                       [--reversing-cancel] [--late-max SECONDS]

The simulator is tests/reliability/sim/, the same as the CI test's
(tests/reliability/test_simulation.py): the real Gateway and Worker on a SQLite file under
/dev/shm, a fake clock, a simulated wallet provider and a database that fail by seed, terminals
and customers driven by one random.Random(seed). Without --seed a random seed is drawn and printed
first. --replay N runs seed N again and must reproduce its trace exactly (same digest), given the
same --ops and flags; --trace FILE writes every step of the trace.

It prints operations, operations per second, faults injected per kind, invariant checks made,
quiescent points reached and the result; on a violation the seed, the step, the last steps of the
trace and the command that replays it. The exit status is 1 when an invariant broke.

--reversing-cancel gives the wallet the cancel of Alipay+ and WeChat Pay (a paid payment is
reversed too); --late-max lets a delayed request reach the wallet later than the gateway's "not
found" grace period. Both explore beyond the connector contract the default run holds to.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reliability.sim import FaultRates, SimConfig, SimResult, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=100_000, help="simulation steps")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None)
    seeds.add_argument(
        "--replay",
        type=int,
        default=None,
        metavar="SEED",
        help="run SEED again; with the same --ops and flags, the same trace",
    )
    parser.add_argument(
        "--quiesce-every",
        type=int,
        default=2_500,
        help="steps between quiescent points (books compared)",
    )
    parser.add_argument("--trace", type=Path, default=None, help="write the whole trace here")
    parser.add_argument(
        "--reversing-cancel",
        action="store_true",
        help="the wallet's cancel reverses paid payments too",
    )
    parser.add_argument(
        "--late-max",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how late a delayed request may reach the wallet (default 20)",
    )
    args = parser.parse_args()

    seed = args.replay if args.replay is not None else args.seed
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    print(f"seed {seed}", flush=True)
    rates = FaultRates()
    if args.late_max is not None:
        rates = replace(rates, late_arrival_max_seconds=args.late_max)
    config = SimConfig(
        seed=seed,
        ops=args.ops,
        quiesce_every=args.quiesce_every,
        rates=rates,
        reversing_cancel=args.reversing_cancel,
        trace_tail=None if args.trace else 30,
        progress=_progress,
        progress_every=max(1_000, args.ops // 20),
    )
    result = simulate(config)
    if args.trace:
        args.trace.write_text("\n".join(result.tail) + "\n")
    _report(result, _replay_command(seed, args))
    sys.exit(0 if result.ok else 1)


def _progress(steps: int, seconds: float) -> None:
    print(
        f"  {steps:>9,} steps  {seconds:7.1f} s  {steps / seconds:7.0f} ops/s",
        file=sys.stderr,
        flush=True,
    )


def _replay_command(seed: int, args: argparse.Namespace) -> str:
    parts = [".venv/bin/python bench/simulate.py", f"--replay {seed}", f"--ops {args.ops}"]
    if args.quiesce_every != 2_500:
        parts.append(f"--quiesce-every {args.quiesce_every}")
    if args.reversing_cancel:
        parts.append("--reversing-cancel")
    if args.late_max is not None:
        parts.append(f"--late-max {args.late_max:g}")
    return " ".join(parts)


def _report(r: SimResult, replay: str) -> None:
    seconds = r.seconds
    rows = [
        ("seed", f"{r.seed}"),
        ("operations", f"{r.steps:,} of {r.ops:,}"),
        ("wall time", f"{seconds:.1f} s"),
        ("operations/s", f"{r.ops_per_second:,.0f}"),
        ("gateway calls", f"{r.gateway_calls:,} ({r.gateway_calls / seconds:,.0f}/s)"),
        ("units of work", f"{r.units_of_work:,} ({r.units_of_work / seconds:,.0f}/s)"),
        ("wallet calls", f"{r.wallet_calls:,}"),
        ("invariant checks", f"{r.checks:,}"),
        ("quiescent points", f"{r.quiescent_points}"),
        ("timings drawn", ", ".join(f"{k}={v}" for k, v in r.settings.items())),
        ("trace digest", r.digest),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"faults injected ({sum(r.faults.values()):,}):")
    for kind, count in sorted(r.faults.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {kind:<28} {count:>8,}")
    print("operations:")
    for kind, count in sorted(r.op_counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {kind:<28} {count:>8,}")
    if r.ok:
        print("result: every invariant held")
        return
    print(f"result: VIOLATION at step {r.failed_step}: {r.failure}")
    print("last steps:")
    for line in r.tail[-30:]:
        print(f"  {line}")
    print(f"replay: {replay}")


if __name__ == "__main__":
    main()
