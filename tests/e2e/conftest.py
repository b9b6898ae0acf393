"""Fixtures of the end-to-end tier: `kessai serve` subprocesses and terminals provisioned per test.

One server runs for the whole session with short sandbox timings (reveal after 1 s, provider
recheck every 50 ms, QR codes that may live 1 s). A second server with a 2-second idle timeout is
started only if a test asks for it. Every test provisions its own merchant and terminal through
`kessai admin … --json`, so tests do not depend on each other. Provisioning runs the CLI's
commands in one long-lived interpreter (``CliBatch``), because a `kessai` process spends over a
second starting; the commands under test run as real `kessai` processes (``Cli``).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from scale.support import create_database

from .support import (
    FAST_SETTINGS,
    IDLE_TIMEOUT_SECONDS,
    Cli,
    CliBatch,
    KessaiServer,
    Pos,
    Provisioner,
    Terminal,
    postgres_server,
    start_server,
)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KessaiServer]:
    """The shared gateway."""
    # The whole tier runs once on each database the gateway supports.
    database_url = None
    if request.param == "postgresql":
        database_url = create_database(request.getfixturevalue("postgres_url"))
    running = start_server(
        tmp_path_factory.mktemp(f"kessai-{request.param}"), FAST_SETTINGS, database_url
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def cli(server: KessaiServer) -> Cli:
    """The installed `kessai` command on the shared gateway's database (one process a call)."""
    return Cli(server.database_url)


@pytest.fixture(scope="session")
def admin(server: KessaiServer) -> Iterator[CliBatch]:
    """The same CLI commands through one long-lived interpreter: provisioning and the ledger."""
    batch = CliBatch(server.database_url)
    try:
        yield batch
    finally:
        batch.close()


@pytest.fixture(scope="session")
def provisioner(admin: CliBatch) -> Iterator[Provisioner]:
    """Merchants and terminals of the shared gateway."""
    made = Provisioner(admin, ahead=0)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def http(server: KessaiServer) -> Iterator[httpx.Client]:
    """An HTTP client on the shared gateway."""
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        yield client


@pytest.fixture
def terminal(provisioner: Provisioner) -> Terminal:
    """A terminal of a merchant of its own."""
    return provisioner.fresh()


@pytest.fixture
def pos(http: httpx.Client, terminal: Terminal) -> Pos:
    """A terminal that has logged in."""
    client = Pos(http, terminal)
    client.login_ok()
    return client


@pytest.fixture(scope="session")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KessaiServer]:
    """A second gateway whose sessions end after 2 idle seconds (touched on every call)."""
    settings = {
        "KESSAI_SESSION_IDLE_TIMEOUT_SECONDS": str(IDLE_TIMEOUT_SECONDS),
        "KESSAI_SESSION_TOUCH_INTERVAL_SECONDS": "0",
    }
    running = start_server(tmp_path_factory.mktemp("kessai-idle"), settings)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def idle_provisioner(idle_server: KessaiServer) -> Iterator[Provisioner]:
    """Merchants and terminals of the idle-timeout gateway."""
    batch = CliBatch(idle_server.database_url)
    try:
        yield Provisioner(batch, ahead=0)
    finally:
        batch.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL server (scripts/test starts one; alone, the tier starts its own)."""
    with postgres_server() as url:
        yield url
