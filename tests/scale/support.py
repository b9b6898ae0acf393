"""Processes of the scale-out tests: several `kessai serve`, `kessai worker`, PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from e2e.support import KESSAI, base_env, free_port, stop_process, wait_healthy


def create_database(server_url: str) -> str:
    """Create an empty database on the PostgreSQL server; answers its URL."""
    name = "k" + uuid.uuid4().hex[:16]

    async def create() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return server_url.rsplit("/", 1)[0] + "/" + name


@dataclass
class Process:
    """A running kessai subprocess and its log."""

    process: subprocess.Popen[bytes]
    log: Path
    base_url: str = ""

    def stop(self) -> None:
        """Terminate it (and wait)."""
        stop_process(self.process)

    def kill(self) -> None:
        """SIGKILL it, as a crash would."""
        self.process.kill()
        self.process.wait(timeout=10)


def migrate(database_url: str) -> None:
    """Create the schema (so that several servers do not race to do it)."""
    subprocess.run(
        [KESSAI, "migrate", "--database", database_url],
        check=True,
        env=base_env(),
        capture_output=True,
    )


def serve(
    workdir: Path,
    database_url: str,
    settings: Mapping[str, str],
    extra: Sequence[str] = (),
    name: str = "server",
) -> Process:
    """Start `kessai serve` on a free port and wait until it is healthy."""
    port = free_port()
    log = workdir / f"{name}-{port}.log"
    command = [
        KESSAI, "serve", "--host", "127.0.0.1", "--port", str(port), "--database", database_url,
        *extra,
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env=base_env() | dict(settings), stdout=sink, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    wait_healthy(base_url, process, log)
    return Process(process, log, base_url)


def worker(workdir: Path, database_url: str, settings: Mapping[str, str]) -> Process:
    """Start `kessai worker`."""
    log = workdir / f"worker-{uuid.uuid4().hex[:6]}.log"
    command = [KESSAI, "worker", "--database", database_url]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env=base_env() | dict(settings), stdout=sink, stderr=subprocess.STDOUT
        )
    return Process(process, log)
