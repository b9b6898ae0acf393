"""The crash test's long mode: `kessai serve` SIGKILLed hundreds of times under continuous load.

    .venv/bin/python bench/crash.py [--kills 200] [--seed N] [--clients 4] [--workers 1]
                                    [--database sqlite|postgresql://user@host:port/postgres]

The driver is tests/reliability/crashload.py, the same as the CI test's
(tests/reliability/test_crash.py): terminals pay with sandbox codes of every outcome, show QR
codes, poll, refund and set slip numbers while the whole `kessai serve` process group is killed
at random moments (or just after a terminal sent a request that changes something) and restarted
on the same database. At the end `kessai worker` reconciles, and the books are checked against
every answer the terminals got and against the sandbox wallets' own ledger. It prints the kills
survived, operations attempted/answered per kind, payments, refunds, and anything lost or
doubled; the exit status is 1 when an invariant broke.

With a PostgreSQL server URL, a fresh database is created on it for the run.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reliability.crashload import CrashConfig, run_crash
from scale.support import create_database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--merchants", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--uptime",
        type=float,
        nargs=2,
        default=(0.2, 2.0),
        metavar=("MIN", "MAX"),
        help="seconds served before a kill",
    )
    parser.add_argument("--database", default="sqlite")
    parser.add_argument("--workdir", default=None, help="keep the database and logs here")
    args = parser.parse_args()

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kessai-crash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.database == "sqlite":
        database_url, kind = f"sqlite:///{workdir / 'k.db'}", "sqlite"
    else:
        database_url, kind = create_database(args.database), "postgresql"
    config = CrashConfig(
        seed=seed,
        kills=args.kills,
        clients=args.clients,
        merchants=args.merchants,
        http_workers=args.workers,
        uptime=(args.uptime[0], args.uptime[1]),
        database=kind,
        log=lambda line: print(line, flush=True),
    )
    print(
        f"seed {seed}; {args.kills} kills; {args.clients} terminals; {args.workers} uvicorn "
        f"worker(s); database {database_url}; logs in {workdir}",
        flush=True,
    )
    report = run_crash(config, workdir, database_url)
    print(report.summary())
    broken = report.violations or report.anomalies or report.client_failures
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
