"""What the console's browser tests share: a `kessai serve` process, the CLI, a terminal client.

Everything talks to Kessai the way its users do: the server as a subprocess on 127.0.0.1, the
`kessai admin … --json` CLI as subprocesses, the terminal API over HTTP with httpx, and the pages
through Chromium. Nothing here imports the gateway's modules.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

CHROMIUM: Final = "/usr/bin/chromium"
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO: Final = Path(__file__).resolve().parents[2]
SCREENSHOTS: Final = REPO / "docs" / "screenshots"
OWNER_PASSWORD: Final = "owner-pass-1234"
STAFF_PASSWORD: Final = "staff-pass-1234"
# Short sandbox timings, so that a test can wait them out.
SERVER_ENV: Final = {
    # Small pages, so that a handful of payments shows the pager.
    "KESSAI_CONSOLE_PAGE_SIZE": "8",
    "KESSAI_SANDBOX_REVEAL_AFTER_SECONDS": "1",
    "KESSAI_PROVIDER_RECHECK_INTERVAL_MS": "50",
    "KESSAI_QR_TTL_MIN_SECONDS": "1",
}


def _kessai() -> str:
    beside = Path(sys.executable).with_name("kessai")
    if beside.exists():
        return str(beside)
    found = shutil.which("kessai")
    if found is None:
        raise RuntimeError("the `kessai` command is not installed next to this Python")
    return found


KESSAI: Final = _kessai()


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment without KESSAI_* (so nothing leaks in), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESSAI_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["KESSAI_SANDBOX_ENABLED"] = "true"  # the tests pay with the sandbox's codes
    env.update(extra or {})
    return env


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_key(prefix: str = "K") -> str:
    """A fresh alphanumeric transKey (at most 34 characters)."""
    return f"{prefix}{uuid.uuid4().hex}"[:34]


@dataclass
class Server:
    """A running `kessai serve` on a fresh SQLite file."""

    process: subprocess.Popen[bytes]
    base_url: str
    database_url: str
    database_path: Path
    log_path: Path

    def stop(self) -> None:
        """Terminate it (and kill it when it does not stop in time)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_server(folder: Path) -> Server:
    """Start `kessai serve` on 127.0.0.1 and wait until /healthz answers."""
    database_path = folder / "kessai.db"
    database_url = f"sqlite:///{database_path}"
    port = free_port()
    log_path = folder / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                KESSAI,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                database_url,
            ],
            env=clean_env(SERVER_ENV),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"kessai serve did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    return Server(process, base_url, database_url, database_path, log_path)


class CliError(AssertionError):
    """A CLI command failed or printed no JSON."""


def run_cli(database_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `kessai ARGS --database URL`."""
    done = subprocess.run(
        [KESSAI, *args, "--database", database_url],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and done.returncode != 0:
        raise CliError(
            f"kessai {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def cli_json(database_url: str, *args: str) -> Any:
    """Run a `--json` command and parse what it printed."""
    done = run_cli(database_url, *args, "--json")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise CliError(f"kessai {' '.join(args)} printed no JSON:\n{done.stdout}") from exc


@dataclass(frozen=True)
class Terminal:
    """A terminal's master data, and the integration's os it logs in with."""

    mid: str
    password: str
    pass_code: str
    os: str


@dataclass(frozen=True)
class Shop:
    """A merchant with one terminal, an owner and a staff member of its console."""

    merchant_id: int
    name: str
    terminal: Terminal
    owner: str
    staff: str

    @property
    def mid(self) -> str:
        """The mid of the shop's first terminal."""
        return self.terminal.mid


class Provisioner:
    """Merchants, terminals and console users through `kessai admin … --json`.

    Each CLI call costs a couple of seconds of interpreter start-up, so spare terminals and
    users are made ahead on background threads while the browser works.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="provision")
        self._spares: list[Future[Terminal]] = []
        # One integration (os) for every terminal: it names the POS software, shared by all.
        self._os = self._pool.submit(
            cli_json, database_url, "admin", "integration", "create", "--name", "console tests"
        )

    @property
    def os(self) -> str:
        """The integration's os."""
        return str(self._os.result(60)["os"])

    def merchant(self, name: str) -> int:
        """Create a merchant; answers its id."""
        made = cli_json(self.database_url, "admin", "merchant", "create", "--name", name)
        return int(made["merchantId"])

    def terminal(self, merchant_id: int) -> Terminal:
        """Create a terminal of ``merchant_id``."""
        made = cli_json(
            self.database_url,
            "admin",
            "terminal",
            "create",
            "--merchant",
            str(merchant_id),
            "--name",
            "レジ1",
        )
        return Terminal(str(made["mid"]), str(made["password"]), str(made["passCode"]), self.os)

    def user(self, merchant_id: int, role: str, password: str = OWNER_PASSWORD) -> str:
        """Create a console user; answers the e-mail address."""
        email = f"{role}-{uuid.uuid4().hex[:8]}@shop.example"
        cli_json(
            self.database_url,
            "admin",
            "user",
            "create",
            "--merchant",
            str(merchant_id),
            "--email",
            email,
            "--role",
            role,
            "--password",
            password,
        )
        return email

    def shop(self, name: str | None = None) -> Shop:
        """A fresh merchant with a terminal, an owner and a staff member."""
        merchant_name = name or f"テスト商店 {uuid.uuid4().hex[:6]}"
        merchant_id = self.merchant(merchant_name)
        terminal = self._pool.submit(self.terminal, merchant_id)
        owner = self._pool.submit(self.user, merchant_id, "owner", OWNER_PASSWORD)
        staff = self.user(merchant_id, "staff", STAFF_PASSWORD)
        return Shop(merchant_id, merchant_name, terminal.result(60), owner.result(60), staff)

    def prepare_terminals(self, merchant_id: int, count: int) -> None:
        """Start making ``count`` spare terminals of ``merchant_id``."""
        self._spares += [self._pool.submit(self.terminal, merchant_id) for _ in range(count)]

    def spare_terminal(self, merchant_id: int) -> Terminal:
        """A terminal nobody has used (made ahead when possible)."""
        if self._spares:
            return self._spares.pop(0).result(60)
        return self.terminal(merchant_id)

    def close(self) -> None:
        """Stop making spares."""
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Register:
    """The shop's terminal on the terminal API."""

    http: httpx.Client
    terminal: Terminal
    key: str = field(default_factory=lambda: new_key("REG"))
    token: str = ""

    def login(self) -> Register:
        """LOGIN (must succeed)."""
        response = self.http.post(
            "/v1/login",
            json={
                "mid": self.terminal.mid,
                "key": self.key,
                "password": self.terminal.password,
                "os": self.terminal.os,
            },
        )
        assert response.status_code == 200, response.text
        self.token = response.json()["sessionToken"]
        return self

    @property
    def auth(self) -> dict[str, str]:
        """The bearer header."""
        return {"Authorization": f"Bearer {self.token}"}

    def code(self, service_id: str = "01", outcome: str = "success") -> str:
        """A fresh sandbox customer code."""
        response = self.http.post(
            "/sandbox/codes", json={"serviceId": service_id, "outcome": outcome}
        )
        assert response.status_code == 200, response.text
        return str(response.json()["codes"][0])

    def pay(
        self,
        amount: int,
        *,
        service_id: str = "01",
        trans_key: str | None = None,
        outcome: str = "success",
    ) -> dict[str, Any]:
        """REQUEST with a fresh sandbox code; answers the payment."""
        return self.request(trans_key or new_key(), amount, self.code(service_id, outcome))

    def request(self, trans_key: str, amount: int, code: str) -> dict[str, Any]:
        """REQUEST with a given code."""
        response = self.http.post(
            "/v1/payments",
            json={"transKey": trans_key, "amount": amount, "code": code},
            headers=self.auth,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def paycheck(self, trans_id: str) -> dict[str, Any]:
        """PAYCHECK."""
        response = self.http.get(f"/v1/payments/{trans_id}", headers=self.auth)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def status(self, trans_key: str) -> dict[str, Any]:
        """STATUS."""
        response = self.http.get("/v1/payments", params={"transKey": trans_key}, headers=self.auth)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def qr(self, amount: int, service_id: str = "01") -> dict[str, Any]:
        """GET-QR-CODE."""
        response = self.http.post(
            "/v1/qr-codes",
            json={"transKey": new_key("QR"), "amount": amount, "serviceId": service_id},
            headers=self.auth,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def refund(self, trans_id: str, amount: int) -> httpx.Response:
        """CANCEL with the passCode."""
        return self.http.post(
            f"/v1/payments/{trans_id}/refunds",
            json={"passCode": self.terminal.pass_code, "amount": amount, "refundKey": new_key("R")},
            headers=self.auth,
        )

    def wait_status(self, trans_id: str, wanted: str, timeout: float = 6.0) -> dict[str, Any]:
        """Poll PAYCHECK until the payment is ``wanted`` (or the time is up)."""
        deadline = time.monotonic() + timeout
        while True:
            payment = self.paycheck(trans_id)
            if payment["status"] == wanted or time.monotonic() > deadline:
                return payment
            time.sleep(0.1)


def login(page: Any, email: str, password: str) -> None:
    """Log in through the login form and land on the payment list."""
    page.goto("/console/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("#login")
    page.wait_for_url("**/console/payments**")


def csrf_of(page: Any) -> str:
    """The CSRF token the current page's forms carry."""
    return str(page.locator("#lang-switch input[name=_csrf]").get_attribute("value"))
