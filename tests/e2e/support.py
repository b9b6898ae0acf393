"""What the end-to-end tests share: server processes, the CLI, provisioning and a terminal client.

Everything here talks to Kessai the way its users do: `kessai serve` and `kessai demo` as
subprocesses, `kessai admin … --json` and `kessai sandbox …` as subprocesses, and the terminal API
over real HTTP with httpx. Nothing imports the gateway's own modules.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import httpx

# --- the executable -------------------------------------------------------------------------------


def _kessai_executable() -> str:
    beside = Path(sys.executable).with_name("kessai")
    if beside.exists():
        return str(beside)
    found = shutil.which("kessai")
    if found is None:
        raise RuntimeError("the `kessai` command is not installed next to this Python")
    return found


KESSAI: Final = _kessai_executable()

# Settings of the shared server: timeouts short enough that a test can wait them out.
FAST_SETTINGS: Final[Mapping[str, str]] = {
    "KESSAI_SANDBOX_REVEAL_AFTER_SECONDS": "1",
    "KESSAI_PROVIDER_RECHECK_INTERVAL_MS": "50",
    "KESSAI_QR_TTL_MIN_SECONDS": "1",
}
REVEAL_AFTER_SECONDS: Final = 1.0
IDLE_TIMEOUT_SECONDS: Final = 2

# Every service of the catalog (the wire contract: ids and names never change).
SERVICE_NAMES: Final[Mapping[str, str]] = {
    "01": "PayPay",
    "02": "d払い",
    "03": "au PAY",
    "04": "楽天ペイ",
    "05": "メルペイ",
    "06": "LINE Pay",
    "07": "ゆうちょPay",
    "08": "pring",
    "20": "Alipay+",
    "21": "WeChat Pay",
    "22": "銀聯（UnionPay）",
}
# The services the flow tests pay with: PayPay, WeChat Pay, Alipay+, UnionPay, and Merpay (a
# wallet whose codes start 3158…).
FLOW_SERVICES: Final = ("01", "21", "20", "22", "05")
ENDED_SERVICE: Final = "06"  # LINE Pay: still recognised, no longer offered

ERROR_KEYS: Final = frozenset({"code", "message", "field", "retryable", "requestId"})
PRODUCT_BARCODE: Final = "4901234567894"  # a valid EAN-13, as printed on goods in Japan


def base_env() -> dict[str, str]:
    """The environment for subprocesses: ours, minus any KESSAI_* that could leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESSAI_")}
    env["PYTHONUNBUFFERED"] = "1"
    # The tests pay with the sandbox's codes, which production leaves off.
    env["KESSAI_SANDBOX_ENABLED"] = "true"
    return env


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server (its `postgres` database)."""
    given = os.environ.get("KESSAI_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    folder = tempfile.mkdtemp(prefix="kessai-pg-")
    script = str(Path(__file__).resolve().parents[2] / "scripts" / "pg-cluster")
    url = subprocess.run(
        [script, "start", folder, str(free_port())], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield url
    finally:
        subprocess.run([script, "stop", folder], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_key(prefix: str = "T") -> str:
    """A fresh alphanumeric transKey/refundKey/device key (at most 34 characters)."""
    return f"{prefix}{uuid.uuid4().hex}"[:34]


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file (absolute path, so four slashes)."""
    return f"sqlite:///{path.resolve()}"


# --- processes ------------------------------------------------------------------------------------


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate, wait, and kill when it does not stop in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_healthy(
    base_url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30.0
) -> None:
    """Poll /healthz until it answers 200; fail early (with the log) if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}:\n{tail(log)}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{base_url}/healthz did not answer within {timeout}s:\n{tail(log)}")


@dataclass
class KessaiServer:
    """A running `kessai serve` on 127.0.0.1 with its own SQLite database."""

    base_url: str
    database_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """Stop the server process."""
        stop_process(self.process)


def start_server(
    workdir: Path, settings: Mapping[str, str], database_url: str | None = None
) -> KessaiServer:
    """Start `kessai serve` on a free port with ``settings`` (KESSAI_* variables).

    The database is a fresh SQLite file in ``workdir`` unless ``database_url`` names another.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    database_url = database_url or sqlite_url(workdir / "k.db")
    env = base_env() | dict(settings)
    last_error: Exception | None = None
    for attempt in range(3):  # the free port can be taken between probe and bind
        port = free_port()
        log = workdir / f"server-{attempt}.log"
        command = [KESSAI, "serve", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--database", database_url]
        if not Path(KESSAI).exists():
            _wait_for_script()
        with log.open("wb") as sink:
            process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(base_url, process, log)
        except RuntimeError as exc:
            stop_process(process)
            last_error = exc
            continue
        return KessaiServer(base_url, database_url, process, log)
    raise RuntimeError(f"kessai serve did not start: {last_error}")


# --- the CLI --------------------------------------------------------------------------------------


class CliError(AssertionError):
    """A CLI command that exited with an error."""


@dataclass(frozen=True)
class Cli:
    """`kessai …` subprocesses against one database (every command gets --database and --json)."""

    database_url: str

    def _command(self, args: Sequence[str]) -> list[str]:
        return [KESSAI, *args, "--database", self.database_url, "--json"]

    def json(self, *args: str) -> Any:
        """Run one command and answer its JSON output; raise CliError when it fails."""
        return self.json_many([args])[0]

    def json_many(self, commands: Sequence[Sequence[str]]) -> list[Any]:
        """Run several commands at the same time (each spends a second or more starting up)."""
        running = [(args, self._start(args)) for args in commands]
        results = []
        for args, process in running:
            stdout, stderr = process.communicate(timeout=60)
            returncode = process.returncode
            if returncode != 0 and _script_missing(stderr):
                # Another engineer's `pip install -e` was rewriting the script: run it again.
                _wait_for_script()
                again = self._start(args)
                stdout, stderr = again.communicate(timeout=60)
                returncode = again.returncode
            results.append(_parse_cli(args, returncode, stdout, stderr))
        return results

    def _start(self, args: Sequence[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self._command(args),
            env=base_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ledger(self) -> list[dict[str, Any]]:
        """The sandbox wallets' own books."""
        rows = self.json("sandbox", "ledger")
        assert isinstance(rows, list)
        return rows

    def charge(self, trans_id: str) -> dict[str, Any]:
        """The sandbox's one charge for a transId (fails unless there is exactly one)."""
        rows = [row for row in self.ledger() if row["ref"] == trans_id]
        assert len(rows) == 1, f"sandbox charges for {trans_id}: {rows}"
        return rows[0]


def _script_missing(stderr: str) -> bool:
    return "can't open file" in stderr and "kessai" in stderr


def _wait_for_script(timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not Path(KESSAI).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)


def _parse_cli(args: Sequence[str], returncode: int, stdout: str, stderr: str) -> Any:
    if returncode != 0:
        raise CliError(f"kessai {' '.join(args)} exited {returncode}:\n{stdout}\n{stderr}")
    try:
        return json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise CliError(f"kessai {' '.join(args)} printed no JSON:\n{stdout}\n{stderr}") from exc


# The driver of CliBatch: the `kessai` Typer app, run once per line of JSON argv on stdin.
_BATCH_DRIVER: Final = """
import contextlib, io, json, sys
from kessai.cli.main import app
for line in sys.stdin:
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result = app(json.loads(line), prog_name="kessai", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:
        code = 1
        err.write(repr(exc))
    answer = {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
    sys.__stdout__.write(json.dumps(answer) + "\\n")
    sys.__stdout__.flush()
"""


class CliBatch:
    """`kessai` CLI commands run one after another by one long-lived interpreter.

    Each command is the installed CLI's own Typer app called with the same argv (`admin merchant
    create … --database URL --json`), so parsing, provisioning and JSON output are the real ones;
    only the interpreter start-up (well over a second per `kessai` process) is paid once. Tests
    use it to provision and to read the sandbox ledger; the commands a test is about (approve,
    decline, unlock, disable, logout) run as real `kessai` processes through ``Cli``.
    """

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BATCH_DRIVER],
            env=base_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # only start-up failures reach it: commands' stderr is kept
            text=True,
        )

    def json(self, *args: str) -> Any:
        """Run one command and answer its JSON output; raise CliError when it fails."""
        line = json.dumps([*args, "--database", self.database_url, "--json"])
        with self._lock:
            stdin, stdout = self._process.stdin, self._process.stdout
            assert stdin is not None
            assert stdout is not None
            stdin.write(line + "\n")
            stdin.flush()
            reply = stdout.readline()
        if not reply:
            self._process.wait(timeout=10)
            why = self._process.stderr.read() if self._process.stderr is not None else ""
            raise CliError(f"the CLI batch interpreter died ({self._process.returncode}):\n{why}")
        done = json.loads(reply)
        return _parse_cli(args, done["returncode"], done["stdout"], done["stderr"])

    def json_many(self, commands: Sequence[Sequence[str]]) -> list[Any]:
        """Run several commands, one after another."""
        return [self.json(*args) for args in commands]

    def ledger(self) -> list[dict[str, Any]]:
        """The sandbox wallets' own books (`kessai sandbox ledger --json`)."""
        rows = self.json("sandbox", "ledger")
        assert isinstance(rows, list)
        return rows

    def charge(self, trans_id: str) -> dict[str, Any]:
        """The sandbox's one charge for a transId (fails unless there is exactly one)."""
        rows = [row for row in self.ledger() if row["ref"] == trans_id]
        assert len(rows) == 1, f"sandbox charges for {trans_id}: {rows}"
        return rows[0]

    def close(self) -> None:
        """End the interpreter."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        if self._process.stderr is not None:
            self._process.stderr.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)


class RunsCli(Protocol):
    """What provisioning needs: Cli (a process per command) or CliBatch."""

    def json(self, *args: str) -> Any:
        """Run one command and answer its JSON output."""
        ...


# --- provisioning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Terminal:
    """A provisioned terminal: the master data a POS keeps, and the integration's os."""

    mid: str
    password: str
    pass_code: str
    merchant_id: int
    os: str


class Provisioner:
    """Merchants and terminals through `kessai admin … --json`.

    One integration (os) per server: the os identifies the POS software, which all tests share.
    Each test gets its own merchant and terminal. With a ``Cli`` (a process per command), ``ahead``
    terminals are made in advance on background threads so that start-up time overlaps with tests;
    with a ``CliBatch`` there is nothing to hide and ``ahead=0`` makes them on demand.
    """

    def __init__(self, cli: RunsCli, *, ahead: int = 2, workers: int = 2) -> None:
        self.cli = cli
        self.os = str(cli.json("admin", "integration", "create", "--name", "e2e POS")["os"])
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="provision")
        self._ready: collections.deque[Future[Terminal]] = collections.deque(
            self._pool.submit(self.make) for _ in range(ahead)
        )

    def merchant(self, name: str | None = None) -> int:
        """Create a merchant; answers its id."""
        made = self.cli.json("admin", "merchant", "create", "--name", name or new_key("shop"))
        return int(made["merchantId"])

    def terminal_of(self, merchant_id: int, passcode: str | None = None) -> Terminal:
        """Create a terminal of ``merchant_id``."""
        args = ["admin", "terminal", "create", "--merchant", str(merchant_id)]
        if passcode is not None:
            args += ["--passcode", passcode]
        made = self.cli.json(*args)
        return Terminal(
            mid=str(made["mid"]),
            password=str(made["password"]),
            pass_code=str(made["passCode"]),
            merchant_id=int(made["merchantId"]),
            os=self.os,
        )

    def make(self) -> Terminal:
        """A new merchant with one new terminal."""
        return self.terminal_of(self.merchant())

    def fresh(self) -> Terminal:
        """A terminal of a merchant of its own, nobody else has used."""
        if not self._ready:
            return self.make()
        ready = self._ready.popleft()
        self._ready.append(self._pool.submit(self.make))
        return ready.result(timeout=120)

    def close(self) -> None:
        """Stop making terminals ahead."""
        self._pool.shutdown(wait=True, cancel_futures=True)


# --- the terminal API -----------------------------------------------------------------------------


@dataclass
class Pos:
    """A terminal's side of the API: one httpx client, one terminal, its session token."""

    http: httpx.Client
    terminal: Terminal
    key: str = field(default_factory=lambda: new_key("DEV"))
    token: str | None = None

    # -- session
    def login_body(self, **overrides: Any) -> dict[str, Any]:
        """LOGIN's body for this terminal, with ``overrides``."""
        body: dict[str, Any] = {
            "mid": self.terminal.mid,
            "key": self.key,
            "password": self.terminal.password,
            "os": self.terminal.os,
        }
        body.update(overrides)
        return body

    def login(self, **overrides: Any) -> httpx.Response:
        """LOGIN; keeps the token when it succeeds."""
        response = self.http.post("/v1/login", json=self.login_body(**overrides))
        if response.status_code == 200:
            self.token = response.json()["sessionToken"]
        return response

    def login_ok(self, **overrides: Any) -> str:
        """LOGIN that must succeed; answers the token."""
        response = self.login(**overrides)
        assert response.status_code == 200, response.text
        assert self.token is not None
        return self.token

    def auth(self, token: str | None = None) -> dict[str, str]:
        """The Authorization header of ``token`` (the current one by default)."""
        return {"Authorization": f"Bearer {token or self.token}"}

    def logout(self, token: str | None = None) -> httpx.Response:
        """LOGOUT."""
        return self.http.post("/v1/logout", headers=self.auth(token))

    # -- operations
    def request(
        self,
        trans_key: str,
        amount: int,
        code: str,
        service_id: str | None = None,
        token: str | None = None,
    ) -> httpx.Response:
        """REQUEST."""
        body: dict[str, Any] = {"transKey": trans_key, "amount": amount, "code": code}
        if service_id is not None:
            body["serviceId"] = service_id
        return self.http.post("/v1/payments", json=body, headers=self.auth(token))

    def pay(self, code: str, amount: int = 1000, trans_key: str | None = None) -> dict[str, Any]:
        """REQUEST that must be answered 200; answers the payment."""
        response = self.request(trans_key or new_key(), amount, code)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def paycheck(self, trans_id: str, token: str | None = None) -> httpx.Response:
        """PAYCHECK."""
        return self.http.get(f"/v1/payments/{trans_id}", headers=self.auth(token))

    def status(self, trans_key: str) -> httpx.Response:
        """STATUS."""
        return self.http.get("/v1/payments", params={"transKey": trans_key}, headers=self.auth())

    def refund(self, trans_id: str, **body: Any) -> httpx.Response:
        """CANCEL; ``passCode`` defaults to the terminal's."""
        body.setdefault("passCode", self.terminal.pass_code)
        return self.http.post(f"/v1/payments/{trans_id}/refunds", json=body, headers=self.auth())

    def voucher(self, trans_id: str, voucher_no: Any) -> httpx.Response:
        """VOUCHERNO."""
        return self.http.put(
            f"/v1/payments/{trans_id}/voucher", json={"voucherNo": voucher_no}, headers=self.auth()
        )

    def qr(
        self, trans_key: str, amount: int, service_id: str, ttl_seconds: int | None = None
    ) -> httpx.Response:
        """GET-QR-CODE."""
        body: dict[str, Any] = {"transKey": trans_key, "amount": amount, "serviceId": service_id}
        if ttl_seconds is not None:
            body["ttlSeconds"] = ttl_seconds
        return self.http.post("/v1/qr-codes", json=body, headers=self.auth())

    def identify(self, code: str) -> httpx.Response:
        """IDENTIFY-SCANNED-QR-CODE."""
        return self.http.post("/v1/identify", json={"code": code}, headers=self.auth())

    def raw(self, method: str, path: str, content: bytes | str, **headers: str) -> httpx.Response:
        """A request with a body sent byte for byte (for malformed input)."""
        sent = {"content-type": "application/json", **self.auth(), **headers}
        return self.http.request(method, path, content=content, headers=sent)

    # -- waiting
    def wait_final(
        self,
        trans_id: str,
        timeout: float = 15.0,
        *,
        by: Callable[[], httpx.Response] | None = None,
    ) -> dict[str, Any]:
        """Poll PAYCHECK (or ``by``) until the payment is no longer PENDING; answers it."""
        ask = by or (lambda: self.paycheck(trans_id))
        deadline = time.monotonic() + timeout
        while True:
            response = ask()
            assert response.status_code == 200, response.text
            payment = dict(response.json())
            if payment["status"] != "PENDING" or time.monotonic() > deadline:
                return payment
            time.sleep(0.06)


def sandbox_codes(
    http: httpx.Client, service_id: str, outcome: str = "success", count: int = 1
) -> list[str]:
    """Fresh one-time customer codes from `POST /sandbox/codes`."""
    response = http.post(
        "/sandbox/codes", json={"serviceId": service_id, "outcome": outcome, "count": count}
    )
    assert response.status_code == 200, response.text
    codes = response.json()["codes"]
    assert len(codes) == count
    return [str(code) for code in codes]


def sandbox_code(http: httpx.Client, service_id: str, outcome: str = "success") -> str:
    """One fresh customer code."""
    return sandbox_codes(http, service_id, outcome)[0]


# --- assertions -----------------------------------------------------------------------------------

_ANY: Final = object()


def assert_error(
    response: httpx.Response, status: int, code: str, field: object = _ANY
) -> dict[str, Any]:
    """The one error shape: exactly {"error": {code, message, field, retryable, requestId}}.

    Also checks that requestId is the X-Request-Id header of the same answer. Answers the error.
    """
    assert response.status_code == status, (status, code, response.status_code, response.text)
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str), error
    assert error["message"].strip(), error
    assert error["field"] is None or isinstance(error["field"], str), error
    assert isinstance(error["retryable"], bool), error
    assert isinstance(error["requestId"], str), error
    assert error["requestId"], error
    assert error["requestId"] == response.headers.get("x-request-id"), (error, response.headers)
    if field is not _ANY:
        assert error["field"] == field, error
    return dict(error)


def assert_not_found(pos: Pos, trans_key: str) -> None:
    """STATUS of ``trans_key`` answers PAYMENT_NOT_FOUND: no payment was made under it."""
    assert_error(pos.status(trans_key), 404, "PAYMENT_NOT_FOUND", "transKey")


def unchanged(before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """Two views of one payment are the same (what a refused request must leave behind)."""
    assert dict(after) == dict(before), {"before": before, "after": after}
