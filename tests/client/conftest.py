"""One real `kessai serve` for the whole client tier, provisioned with `kessai admin … --json`.

The gateway runs as a subprocess on a free port with a temporary SQLite database and fast
sandbox timings: timeout outcomes reveal themselves after 1 s, the provider is rechecked every
100 ms, and QR codes may live as little as 2 s.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from kessai.client import PollSchedule, RetryPolicy, TerminalConfig

from .proxy import Proxy

BIN = Path(sys.executable).parent
KESSAI = str(BIN / "kessai")
KESSAI_POS = str(BIN / "kessai-pos")

FAST_POLL = PollSchedule(
    first_delay_s=0.1, interval_s=0.2, slow_after_s=30, slow_interval_s=0.5, timeout_s=10
)
SPARE_TERMINALS = 2
# Every test that uses the shared terminal is the same register (device key) restarted: a second
# key would be another device, which the gateway refuses while the first one's session lives.
SHARED_KEY = "TEST-REGISTER-1"
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.05, max_delay_s=0.2, max_elapsed_s=10)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any KESSAI_* setting of the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESSAI_")}
    env["KESSAI_SANDBOX_ENABLED"] = "true"  # the tests pay with the sandbox's codes
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Credentials:
    mid: str
    password: str
    pass_code: str
    os: str


def _admin(database: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [KESSAI, *args, "--database", database, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def _answer(process: subprocess.Popen[str]) -> Any:
    out, err = process.communicate(timeout=120)
    if process.returncode != 0:
        raise AssertionError(f"{process.args} failed: {out} {err}")
    return json.loads(out)


@dataclass
class Gateway:
    url: str
    host: str
    port: int
    database: str
    workdir: Path
    merchant_id: int
    os: str
    spare: list[Credentials] = field(default_factory=list)
    # transId -> (sandbox status, refunded yen) that the wallets' ledger must show at the end.
    expected: dict[str, tuple[str, int]] = field(default_factory=dict)
    # amount -> [(sandbox status, refunded yen)]: every charge of that amount, for tests that
    # give each sale an amount of its own to count the charges it caused.
    expected_by_amount: dict[int, list[tuple[str, int]]] = field(default_factory=dict)

    def kessai(self, *args: str) -> Any:
        """Run `kessai ARGS --database … --json` and answer its JSON."""
        return _answer(_admin(self.database, *args))

    def new_terminal(self) -> Credentials:
        """A terminal of its own (provisioned ahead at start-up while there are some)."""
        if self.spare:
            return self.spare.pop()
        issued = self.kessai("admin", "terminal", "create", "--merchant", str(self.merchant_id))
        return Credentials(issued["mid"], issued["password"], issued["passCode"], self.os)

    def codes(self, outcome: str, service_id: str = "01", count: int = 1) -> list[str]:
        answer = httpx.post(
            f"{self.url}/sandbox/codes",
            json={"serviceId": service_id, "outcome": outcome, "count": count},
            timeout=10,
        )
        answer.raise_for_status()
        codes: list[str] = answer.json()["codes"]
        return codes

    def code(self, outcome: str, service_id: str = "01") -> str:
        return self.codes(outcome, service_id)[0]

    def ledger(self) -> list[dict[str, Any]]:
        """The sandbox wallets' own books (`kessai sandbox ledger --json`)."""
        rows: list[dict[str, Any]] = self.kessai("sandbox", "ledger")
        return rows

    def charges(self, *, amount: int) -> list[dict[str, Any]]:
        """Every charge of the wallets for ``amount`` yen (tests use amounts of their own)."""
        return [row for row in self.ledger() if row["amount"] == amount]

    def expect(self, trans_id: str, status: str, refunded: int = 0) -> None:
        """Check at the end of the session, in one ledger call, that the wallets agree."""
        self.expected[trans_id] = (status, refunded)

    def expect_charges(self, amount: int, *charges: tuple[str, int]) -> None:
        """Check at the end, in one ledger call, that ``amount`` has exactly these charges."""
        self.expected_by_amount[amount] = sorted(charges)

    def audit(self) -> None:
        """Compare every expectation with the wallets' ledger (one `kessai sandbox ledger`)."""
        if not self.expected and not self.expected_by_amount:
            return
        rows = self.ledger()
        books = {row["ref"]: row for row in rows}
        wrong: dict[object, object] = {
            trans_id: (books.get(trans_id), want)
            for trans_id, want in self.expected.items()
            if trans_id not in books
            or (books[trans_id]["status"], books[trans_id]["refundedAmount"]) != want
        }
        for amount, want_charges in self.expected_by_amount.items():
            found = sorted(
                (row["status"], row["refundedAmount"]) for row in rows if row["amount"] == amount
            )
            if found != want_charges:
                wrong[f"amount {amount}"] = (found, want_charges)
        assert not wrong, f"the wallets' ledger disagrees: {wrong}"

    def settle(self, trans_id: str, approve: bool) -> None:
        """The customer approves or declines in the wallet app (`kessai sandbox approve`)."""
        self.kessai("sandbox", "approve" if approve else "decline", trans_id)

    def customer_decides(self, qr_data: str, decision: str) -> None:
        """The customer scans a QR code and decides on the simulator page (its form's POST)."""
        answer = httpx.post(qr_data, data={"decision": decision}, timeout=10)
        assert answer.status_code in (200, 303), answer.text


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"kessai serve did not start: {log.read_text()}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("gateway")
    database = f"sqlite:///{workdir / 'kessai.db'}"
    port = free_port()
    # The first admin command creates the schema; everything after it runs side by side.
    merchant = _answer(_admin(database, "admin", "merchant", "create", "--name", "SDK shop"))
    env = clean_env(
        KESSAI_SANDBOX_REVEAL_AFTER_SECONDS="1.0",
        KESSAI_PROVIDER_RECHECK_INTERVAL_MS="100",
        KESSAI_QR_TTL_MIN_SECONDS="2",
        KESSAI_LOG_LEVEL="WARNING",
    )
    log_path = workdir / "serve.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [KESSAI, "serve", "--host", "127.0.0.1", "--port", str(port), "--database", database],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        integration = _admin(database, "admin", "integration", "create", "--name", "POS tests")
        merchant_id = str(merchant["merchantId"])
        terminals = [
            _admin(database, "admin", "terminal", "create", "--merchant", merchant_id)
            for _ in range(SPARE_TERMINALS)
        ]
        os_value = _answer(integration)["os"]
        spare = [
            Credentials(t["mid"], t["password"], t["passCode"], os_value)
            for t in map(_answer, terminals)
        ]
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, process, log_path)
        running = Gateway(
            url, "127.0.0.1", port, database, workdir, merchant["merchantId"], os_value, spare
        )
        yield running
        running.audit()
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def shared(gateway: Gateway) -> Credentials:
    """A terminal most tests share; each test logs in again with the same key (a restart)."""
    return gateway.new_terminal()


def make_config(
    gateway: Gateway,
    creds: Credentials,
    journal: Path,
    *,
    url: str | None = None,
    key: str = SHARED_KEY,
    **changes: Any,
) -> TerminalConfig:
    values: dict[str, Any] = {
        "base_url": url or gateway.url,
        "mid": creds.mid,
        "password": creds.password,
        "os": creds.os,
        "key": key,
        "pass_code": creds.pass_code,
        "journal_path": journal,
        "retry": FAST_RETRY,
        "poll": FAST_POLL,
        **changes,
    }
    return TerminalConfig(**values)


@pytest.fixture
def config(gateway: Gateway, shared: Credentials, tmp_path: Path) -> TerminalConfig:
    return make_config(gateway, shared, tmp_path / "journal.db")


@pytest.fixture
def proxy(gateway: Gateway) -> Iterator[Proxy]:
    running = Proxy(gateway.host, gateway.port).start()
    try:
        yield running
    finally:
        running.stop()
