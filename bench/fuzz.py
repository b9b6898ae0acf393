"""The long API fuzzing run of the terminal API (schemathesis), with its figures.

    .venv/bin/python bench/fuzz.py [--requests 5000] [--seed N] [--postgres URL]

Starts `kessai serve` with a fresh database (SQLite, or a new database on the PostgreSQL server
at --postgres), provisions two merchants and their terminals, makes real payments, and fuzzes every
operation of /openapi.json under /v1 as tests/reliability/test_fuzz.py does, with a budget of
--requests generated requests. Prints the requests per operation (positive and negative cases,
answers past authentication, the commonest answers), every failure found with an example, and the
elapsed time. Exits 1 when a failure was found or fewer requests than asked for were sent.
The same run inside pytest:

    KESSAI_FUZZ_REQUESTS=5000 .venv/bin/pytest tests/reliability/test_fuzz.py
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from e2e.support import start_server, tail
from reliability.fuzzing import FUZZ_SETTINGS, prepare_world, run_fuzz
from scale.support import create_database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="generated requests to send")
    parser.add_argument("--seed", type=int, default=None, help="replay the draws of a run")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the operations")
    parser.add_argument("--postgres", default=None, help="a PostgreSQL server URL (else SQLite)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    database_url = create_database(args.postgres) if args.postgres else None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kessai-fuzz-") as workdir:
        server = start_server(Path(workdir), FUZZ_SETTINGS, database_url)
        try:
            world = prepare_world(server.base_url, server.database_url)
            ready = time.monotonic()
            report = run_fuzz(world, args.requests, seed, rounds=args.rounds)
            alive = server.process.poll() is None
            log = Path(server.log).read_text(errors="replace")
        except BaseException:
            print(f"the server's log ends:\n{tail(server.log, 60)}", file=sys.stderr)
            raise
        finally:
            server.stop()
    tracebacks = log.count("Traceback")
    print(f"database: {'postgresql' if args.postgres else 'sqlite'}   seed: {seed}")
    print(report.table())
    print()
    print(
        f"generated requests: {report.total} (asked for {args.requests}); other requests "
        f"(sweeps, LOGINs for LOGOUT cases): {report.helper_requests}"
    )
    print(
        f"fuzzing: {report.elapsed:.1f} s ({report.total / max(report.elapsed, 1e-9):.0f} "
        f"requests/s); setup: {ready - started:.1f} s"
    )
    print(f"server alive at the end: {alive}; tracebacks in its log: {tracebacks}")
    print(f"failures: {len(report.failures)}")
    if report.failures:
        print()
        print(report.describe_failures())
    if tracebacks:
        first = log.index("Traceback")
        print(f"\nthe first traceback in the server's log:\n{log[first : first + 3000]}")
    ok = not report.failures and report.total >= args.requests and alive and not tracebacks
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
