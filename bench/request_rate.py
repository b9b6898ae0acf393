"""REQUEST throughput and latency of `kessai serve` on this machine (a first, simple bench).

    .venv/bin/python bench/request_rate.py [--workers 2] [--payments 4000] [--concurrency 64]
                                           [--database sqlite|postgresql://…]

Starts `kessai serve` on 127.0.0.1 with a fresh database, provisions four terminals, issues one
fresh sandbox code per payment before the run, then sends every REQUEST with a fresh transKey
from an asyncio httpx client (closed loop: at most --concurrency in flight) and prints one table.
The load generator is Python too, so it shares the two cores with the gateway: the figures are a
floor, not the gateway's ceiling. It stops by itself when the payments are sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

KESSAI = str(Path(sys.executable).with_name("kessai"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(database: str, *args: str) -> dict:
    out = subprocess.run(
        [KESSAI, *args, "--database", database, "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


async def run(
    base: str, tokens: list[str], codes: list[str], concurrency: int
) -> tuple[list[float], dict[str, int]]:
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    limit = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def one(i: int) -> None:
            async with limit:
                started = time.perf_counter()
                response = await client.post(
                    "/v1/payments",
                    headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"},
                    json={"transKey": f"B{i}", "amount": 100, "code": codes[i]},
                )
                latencies.append(time.perf_counter() - started)
                body = response.json()
                status = body["status"] if response.status_code == 200 else body["error"]["code"]
                outcomes[status] = outcomes.get(status, 0) + 1

        await asyncio.gather(*(one(i) for i in range(len(codes))))
    return latencies, outcomes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--payments", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database", default="sqlite")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="kessai-bench-"))
    database = f"sqlite:///{folder / 'k.db'}" if args.database == "sqlite" else args.database
    subprocess.run([KESSAI, "migrate", "--database", database], check=True, capture_output=True)
    merchant = cli(database, "admin", "merchant", "create", "--name", "Bench")["merchantId"]
    os_value = cli(database, "admin", "integration", "create", "--name", "Bench POS")["os"]
    terminals = [
        cli(database, "admin", "terminal", "create", "--merchant", str(merchant)) for _ in range(4)
    ]
    codes = cli(database, "sandbox", "code", "01", "--count", str(args.payments))["codes"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESSAI_")}
    server = subprocess.Popen(
        [
            KESSAI,
            "serve",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--database",
            database,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        tokens = [
            httpx.post(
                f"{base}/v1/login",
                json={
                    "mid": t["mid"],
                    "key": f"BENCH{i}",
                    "password": t["password"],
                    "os": os_value,
                },
                timeout=30,
            ).json()["sessionToken"]
            for i, t in enumerate(terminals)
        ]
        started = time.perf_counter()
        latencies, outcomes = asyncio.run(run(base, tokens, codes, args.concurrency))
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    latencies.sort()
    quantiles = statistics.quantiles(latencies, n=1000)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine  {machine}")
    print(f"database {args.database}, gateway workers {args.workers}, in flight {args.concurrency}")
    print("| measure | value |")
    print("|---|---|")
    completed = outcomes.get("COMPLETED", 0)
    print(f"| answers | {', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))} |")
    print(f"| completed REQUEST/s | {completed / elapsed:.0f} |")
    print(f"| p50 latency | {quantiles[499] * 1000:.1f} ms |")
    print(f"| p99 latency | {quantiles[989] * 1000:.1f} ms |")
    print(f"| max latency | {latencies[-1] * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
