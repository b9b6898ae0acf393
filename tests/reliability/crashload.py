"""Continuous load on `kessai serve` while the whole server is SIGKILLed and restarted, often.

Shared by tests/reliability/test_crash.py (a short run) and bench/crash.py (a long one).

- ``GatewayProcess`` runs `kessai serve` in a process group of its own on one fixed port and one
  database, and kills the whole group (the uvicorn supervisor, its workers, the in-process
  background jobs) with SIGKILL, checking that no member survives before it starts again.
- ``Client`` threads are shop terminals. Each logs in once and loops over scenarios that use every
  operation: REQUEST with sandbox codes of every outcome, the customer approving or declining a
  password payment, GET-QR-CODE with the customer scanning the code (or letting it expire),
  PAYCHECK and STATUS polling, CANCEL (full and partial refunds), VOUCHERNO, IDENTIFY, LOGOUT.
  Like a real terminal, a request whose answer was lost is sent again with the same transKey or
  refundKey (or the payment is first looked up with STATUS). Every answer is recorded.
- ``run_crash`` drives the load and kills the gateway ``kills`` times at random moments; the last
  kill also switches the terminals off wherever they are. Then `kessai worker` runs until nothing
  is unknown, and the books are checked against every answer (``books.check``).
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from e2e.support import KESSAI, CliBatch, Provisioner, Terminal, base_env, free_port, tail

from .books import (
    PAID,
    Books,
    SeenPayment,
    Violation,
    check,
    ledger_totals,
    read_books,
    seen_from_answer,
    worker_actions,
)

OUTCOMES: Final = ("success", "password", "declined", "timeout-success", "timeout-failure", "error")
# Active services whose sandbox wallet takes customer codes and shows QR codes.
SERVICES: Final = ("01", "02", "03", "04", "05", "20", "21", "22")

# The gateway's timings for the run. The grace period and the give-up time stay well above the
# longest time a provider call can spend queued on a loaded machine: below that, "not found"
# would be taken for "never arrived" while the call is still on its way.
CRASH_SETTINGS: Final[Mapping[str, str]] = {
    "KESSAI_SANDBOX_ENABLED": "true",
    "KESSAI_SANDBOX_REVEAL_AFTER_SECONDS": "1",
    "KESSAI_PROVIDER_RECHECK_INTERVAL_MS": "200",
    "KESSAI_WORKER_RECHECK_INTERVAL_MS": "500",
    "KESSAI_WORKER_IDLE_SLEEP_MS": "200",
    "KESSAI_PROVIDER_NOT_FOUND_GRACE_SECONDS": "8",
    "KESSAI_PROVIDER_GIVE_UP_SECONDS": "10",
    "KESSAI_QR_TTL_MIN_SECONDS": "1",
    "KESSAI_LOG_LEVEL": "WARNING",
}

# Error answers a terminal can get in these scenarios without anything being wrong.
EXPECTED_ERRORS: Final[Mapping[str, frozenset[str]]] = {
    # STATUS after a lost REQUEST: the request never arrived, so it is sent again.
    "STATUS?": frozenset({"PAYMENT_NOT_FOUND"}),
    # VOUCHERNO on a payment that ended unpaid.
    "VOUCHERNO": frozenset({"PAYMENT_NOT_EDITABLE"}),
}


@dataclass(frozen=True)
class CrashConfig:
    """One run: how hard, how long, and on what."""

    seed: int
    kills: int = 20
    clients: int = 4
    merchants: int = 2
    # Seconds a healthy gateway serves before it is killed (uniform in this range).
    uptime: tuple[float, float] = (0.2, 0.8)
    # The chance, before each restart, of an extra kill while the gateway is still starting.
    startup_kill_rate: float = 0.1
    # The chance that a kill waits for a terminal to send a request that changes something
    # (REQUEST, GET-QR-CODE, CANCEL, …) and strikes within ``strike_within`` seconds of it
    # (waiting ``target_wait`` seconds at most for one).
    targeted_kill_rate: float = 0.6
    strike_within: float = 0.15
    target_wait: float = 0.5
    http_workers: int = 1
    # Run the background jobs inside `kessai serve` too (they are killed with it).
    worker_in_serve: bool = True
    # The kind of database, for the report ("sqlite" or "postgresql").
    database: str = "sqlite"
    settings: Mapping[str, str] = field(default_factory=lambda: dict(CRASH_SETTINGS))
    # How long a terminal keeps polling one payment, and keeps re-sending one request.
    poll_seconds: float = 40.0
    send_seconds: float = 90.0
    # How long reconciliation may take before the books are checked as they are.
    settle_seconds: float = 60.0
    log: Callable[[str], None] = lambda line: None


# --- the gateway process -------------------------------------------------------------------------


class GatewayProcess:
    """`kessai serve` in a process group of its own, on a fixed port, killed as a whole."""

    def __init__(
        self, workdir: Path, database_url: str, settings: Mapping[str, str], config: CrashConfig
    ) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        self.env = base_env() | dict(settings)
        # Several uvicorn workers share metrics through files; keep them inside the run.
        self.env["PROMETHEUS_MULTIPROC_DIR"] = str(workdir / "metrics")
        (workdir / "metrics").mkdir(exist_ok=True)
        self.command = [
            KESSAI, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--database",
            database_url, "--workers", str(config.http_workers),
        ]  # fmt: skip
        if config.worker_in_serve:
            self.command.append("--worker")
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # Seconds from spawning to a healthy /healthz, per start.
        self.start_seconds: list[float] = []
        # One client for every health probe: a new client per probe costs more CPU than the
        # probe itself, taken from the gateway that is starting.
        self.probe = httpx.Client(timeout=2.0)

    def spawn(self) -> None:
        """Start the process group (without waiting for it to serve)."""
        self.starts += 1
        with self.log.open("ab") as sink:
            sink.write(f"\n=== start {self.starts} at {time.time():.3f}\n".encode())
            sink.flush()
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self, timeout: float = 90.0) -> None:
        """Start and wait until /healthz answers 200."""
        for _ in range(3):
            began = time.monotonic()
            self.spawn()
            if self.wait_healthy(timeout):
                self.start_seconds.append(time.monotonic() - began)
                return
            self.kill()
        raise RuntimeError(f"kessai serve did not start:\n{tail(self.log)}")

    def wait_healthy(self, timeout: float) -> bool:
        """Poll /healthz; False when the process died or the time ran out."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if self.probe.get(f"{self.base_url}/healthz").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        return False

    def close(self) -> None:
        """Kill the gateway and release the probe."""
        self.kill()
        self.probe.close()

    def kill(self) -> None:
        """SIGKILL every process of the group; return once none of them runs any more."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the leader's pid is the group's id
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while (alive := group_members(pgid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        if alive:
            raise RuntimeError(f"processes {alive} of group {pgid} survived SIGKILL")
        self.process = None


def group_members(pgid: int) -> list[int]:
    """Processes of a process group that still run (zombies, already dead, are not counted)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which may itself hold spaces or parentheses.
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


# --- what the terminals saw ----------------------------------------------------------------------


@dataclass
class OpCount:
    """One kind of operation: logical operations, how many got an answer, and what went wrong."""

    attempted: int = 0
    answered: int = 0
    sends: int = 0
    lost: int = 0  # sends whose answer never came (connection refused, reset, timed out)
    unanswered: int = 0  # operations given up on without any answer
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


# Operations that change the books (PAYCHECK may too, when it asks the wallet).
CHANGING: Final = frozenset(
    {
        "REQUEST",
        "GET-QR-CODE",
        "CANCEL",
        "VOUCHERNO",
        "PAYCHECK",
        "STATUS",
        "LOGIN",
        "LOGOUT",
        "sandbox-decide",
        "sandbox-scan",
    }
)


class Recorder:
    """Every answer the terminals received, thread-safe and in the order received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self.seen: list[SeenPayment] = []
        self.ops: dict[str, OpCount] = collections.defaultdict(OpCount)
        self.anomalies: list[str] = []
        # What each terminal is sending right now, and a signal for the killer.
        self.in_flight: dict[int, str] = {}
        self.sending = threading.Event()
        self.cut_off: collections.Counter[str] = collections.Counter()

    def flying(self, client: int, op: str | None) -> None:
        """Note the operation a terminal is sending (None: it has its answer)."""
        with self._lock:
            if op is None:
                self.in_flight.pop(client, None)
                return
            self.in_flight[client] = op
        if op in CHANGING:
            self.sending.set()

    def killed(self) -> None:
        """Count what the kill cut off."""
        with self._lock:
            self.cut_off.update(self.in_flight.values())

    def payment(
        self, op: str, client: int, body: Mapping[str, Any], asked_refund_key: str | None = None
    ) -> SeenPayment:
        """Record a Payment answer."""
        with self._lock:
            seen = seen_from_answer(next(self._seq), op, client, body, asked_refund_key)
            self.seen.append(seen)
            return seen

    def count(self, op: str, what: str) -> None:
        """Count an event of an operation kind (``attempted``, ``lost``, …)."""
        with self._lock:
            ops = self.ops[op]
            setattr(ops, what, getattr(ops, what) + 1)

    def error(self, op: str, code: str) -> None:
        """Count an error answer of an operation kind by its code."""
        with self._lock:
            self.ops[op].errors[code] += 1

    def anomaly(self, text: str) -> None:
        """An answer no correct gateway gives in these scenarios."""
        with self._lock:
            self.anomalies.append(text)


class Unanswered(Exception):
    """An operation that got no answer before its deadline (or the run was ending)."""


class LostAnswer(Exception):
    """One send whose answer never came."""


class Abandoned(Exception):
    """The terminal was switched off (the run's last kill): it stops wherever it is."""


def new_key(prefix: str) -> str:
    """A fresh transKey/refundKey/voucherNo-safe key of letters and digits."""
    return f"{prefix}{uuid.uuid4().hex}"[:34]


class Client(threading.Thread):
    """One shop terminal under crash load; runs scenarios until switched off."""

    def __init__(
        self,
        index: int,
        base_url: str,
        terminal: Terminal,
        recorder: Recorder,
        off: threading.Event,
        config: CrashConfig,
    ) -> None:
        super().__init__(name=f"terminal-{index}", daemon=True)
        self.index = index
        self.terminal = terminal
        self.recorder = recorder
        self.off = off
        self.config = config
        self.rng = random.Random(config.seed * 1000 + index)
        self.device_key = new_key("DEV")
        self.token: str | None = None
        self.http = httpx.Client(
            base_url=base_url, timeout=httpx.Timeout(20.0, connect=3.0), follow_redirects=False
        )
        self.scenarios = 0
        self.failure: BaseException | None = None

    # -- sending ------------------------------------------------------------------------------

    def _once(self, op: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One send; LostAnswer when no answer came back."""
        self.recorder.count(op, "sends")
        headers = kwargs.pop("headers", {})
        if self.token is not None and path.startswith("/v1/") and path != "/v1/login":
            headers = {"Authorization": f"Bearer {self.token}", **headers}
        self.recorder.flying(self.index, op)
        try:
            return self.http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            self.recorder.count(op, "lost")
            raise LostAnswer(str(exc)) from exc
        finally:
            self.recorder.flying(self.index, None)

    def send(
        self,
        op: str,
        method: str,
        path: str,
        *,
        on_lost: Callable[[], httpx.Response | None] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send until an answer comes, exactly as first sent (same transKey, same refundKey).

        ``on_lost`` may answer instead of sending again (a STATUS lookup after a lost REQUEST).
        A 5xx is recorded as an anomaly and sent again; an ended session logs in again.
        """
        self.recorder.count(op, "attempted")
        deadline = time.monotonic() + self.config.send_seconds
        delay = 0.05
        while time.monotonic() < deadline:
            if self.off.is_set():
                raise Abandoned(op)
            try:
                response = self._once(op, method, path, **kwargs)
            except LostAnswer:
                time.sleep(delay)
                delay = min(delay * 2, 0.4)
                if on_lost is not None:
                    instead = on_lost()
                    if instead is not None:
                        self.recorder.count(op, "answered")
                        return instead
                continue
            if response.status_code >= 500:
                self.recorder.anomaly(f"{op} {path}: {response.status_code} {response.text[:300]}")
                self.recorder.error(op, f"HTTP{response.status_code}")
                time.sleep(delay)
                continue
            if response.status_code == 401 and op != "LOGIN":
                self.recorder.error(op, _error_code(response))
                self.login()
                continue
            self.recorder.count(op, "answered")
            if response.status_code >= 400:
                code = _error_code(response)
                self.recorder.error(op, code)
                if code not in EXPECTED_ERRORS.get(op, frozenset()):
                    self.recorder.anomaly(f"{op} {path}: {response.status_code} {response.text}")
            return response
        self.recorder.count(op, "unanswered")
        raise Unanswered(f"{op} {path}")

    def login(self) -> None:
        """LOGIN (again): the same device key replaces any earlier session."""
        body = {
            "mid": self.terminal.mid,
            "key": self.device_key,
            "password": self.terminal.password,
            "os": self.terminal.os,
        }
        self.token = None
        response = self.send("LOGIN", "POST", "/v1/login", json=body)
        if response.status_code != 200:
            raise Unanswered(f"LOGIN refused: {response.text}")
        self.token = str(response.json()["sessionToken"])

    def payment_answer(
        self, op: str, response: httpx.Response, asked_refund_key: str | None = None
    ) -> dict[str, Any] | None:
        """Record a 200 Payment answer and answer its JSON; None for an error answer."""
        if response.status_code != 200:
            return None
        body = dict(response.json())
        self.recorder.payment(op, self.index, body, asked_refund_key)
        return body

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.login()
            while True:
                self.scenarios += 1
                try:
                    self.one_scenario()
                except Unanswered as exc:
                    self.recorder.anomaly(f"terminal {self.index}: no answer to {exc}")
        except Abandoned:
            pass
        except BaseException as exc:  # reported by run_crash, not swallowed
            self.failure = exc
        finally:
            self.http.close()

    def one_scenario(self) -> None:
        if self.scenarios % 10 == 5:
            # A register closed for the night and opened again.
            self.send("LOGOUT", "POST", "/v1/logout")
            self.login()
        if self.rng.random() < 0.62:
            self.pay_with_code()
        else:
            self.pay_with_qr()

    # -- scenarios ----------------------------------------------------------------------------

    def issue_code(self, service: str, outcome: str) -> str:
        response = self.send(
            "sandbox-codes",
            "POST",
            "/sandbox/codes",
            json={"serviceId": service, "outcome": outcome},
        )
        if response.status_code != 200:
            raise Unanswered(f"sandbox codes refused: {response.text}")
        return str(response.json()["codes"][0])

    def create(self, op: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """REQUEST or GET-QR-CODE, made safe against lost answers by its transKey."""
        trans_key = str(body["transKey"])
        # Half the terminals ask STATUS after a lost answer, as the SDK does; the others simply
        # send the same request again. Both must end with one payment.
        probe_first = self.index % 2 == 0

        def lookup() -> httpx.Response | None:
            if not probe_first:
                return None
            found = self.send("STATUS?", "GET", "/v1/payments", params={"transKey": trans_key})
            return found if found.status_code == 200 else None

        response = self.send(op, "POST", path, json=body, on_lost=lookup)
        return self.payment_answer("STATUS" if response.request.method == "GET" else op, response)

    def pay_with_code(self) -> None:
        rng = self.rng
        outcome = rng.choice(OUTCOMES)
        service = rng.choice(SERVICES)
        code = self.issue_code(service, outcome)
        if rng.random() < 0.15:
            self.send("IDENTIFY", "POST", "/v1/identify", json={"code": code})
        body: dict[str, Any] = {
            "transKey": new_key("P"),
            "amount": rng.randint(1, 30_000),
            "code": code,
        }
        if rng.random() < 0.5:
            body["serviceId"] = service
        payment = self.create("REQUEST", "/v1/payments", body)
        if payment is None:
            return
        if payment["status"] == "PENDING" and rng.random() < 0.2:
            self.voucher(payment)
        payment = self.until_final(payment, approve=rng.random() < 0.75)
        if payment["status"] in PAID:
            self.after_paid(payment)

    def pay_with_qr(self) -> None:
        rng = self.rng
        body = {
            "transKey": new_key("Q"),
            "amount": rng.randint(1, 30_000),
            "serviceId": rng.choice(SERVICES),
            "ttlSeconds": rng.randint(2, 6),
        }
        payment = self.create("GET-QR-CODE", "/v1/qr-codes", body)
        if payment is None:
            return
        decision = rng.choices(("approve", "decline", "expire"), (0.6, 0.15, 0.25))[0]
        payment = self.until_final(
            payment, approve=decision == "approve", scan=decision != "expire"
        )
        if payment["status"] in PAID:
            self.after_paid(payment)

    def until_final(
        self, payment: dict[str, Any], *, approve: bool, scan: bool = True
    ) -> dict[str, Any]:
        """Poll PAYCHECK/STATUS until the payment ends; play the customer when it waits."""
        decided = False
        deadline = time.monotonic() + self.config.poll_seconds
        turn = 0
        while payment["status"] == "PENDING" and time.monotonic() < deadline:
            if not decided and scan and payment.get("pendingReason") == "WAITING_FOR_CUSTOMER":
                if payment["kind"] == "MERCHANT_QR" and payment.get("qrData"):
                    self.scan(payment["qrData"], approve)
                    decided = True
                elif payment["kind"] == "CUSTOMER_CODE":
                    decision = "approve" if approve else "decline"
                    self.send(
                        "sandbox-decide",
                        "POST",
                        f"/sandbox/charges/{payment['transId']}/{decision}",
                    )
                    decided = True
            time.sleep(0.15)
            turn += 1
            payment = self.lookup(payment, by_key=turn % 3 == 0)
        return payment

    def lookup(self, payment: dict[str, Any], *, by_key: bool = False) -> dict[str, Any]:
        """PAYCHECK, or STATUS by transKey."""
        if by_key:
            response = self.send(
                "STATUS", "GET", "/v1/payments", params={"transKey": payment["transKey"]}
            )
            op = "STATUS"
        else:
            response = self.send("PAYCHECK", "GET", f"/v1/payments/{payment['transId']}")
            op = "PAYCHECK"
        answered = self.payment_answer(op, response)
        return payment if answered is None else answered

    def scan(self, qr_data: str, approve: bool) -> None:
        """The customer opens the QR code's page and approves or declines."""
        path = urlsplit(qr_data).path
        decision = "approve" if approve else "decline"
        response = self.send("sandbox-scan", "POST", path, data={"decision": decision})
        if response.status_code != 303:
            self.recorder.anomaly(f"scanning {path}: {response.status_code} {response.text}")

    def voucher(self, payment: dict[str, Any]) -> None:
        slip = f"S-{self.rng.randrange(10**8):08d}"
        response = self.send(
            "VOUCHERNO",
            "PUT",
            f"/v1/payments/{payment['transId']}/voucher",
            json={"voucherNo": slip},
        )
        answered = self.payment_answer("VOUCHERNO", response)
        if answered is not None and answered.get("voucherNo") != slip:
            self.recorder.anomaly(f"VOUCHERNO {payment['transId']}: answered {answered}")

    def after_paid(self, payment: dict[str, Any]) -> None:
        """A slip number, then no refund, one full refund, or partial ones."""
        rng = self.rng
        if rng.random() < 0.4:
            self.voucher(payment)
        plan = rng.random()
        if plan < 0.35:
            return
        if plan < 0.6:
            self.refund(payment, None)
            return
        for _ in range(rng.randint(1, 3)):
            left = int(payment["refundableAmount"])
            if left < 1:
                return
            amount = left if rng.random() < 0.2 else rng.randint(1, left)
            payment = self.refund(payment, amount)

    def refund(self, payment: dict[str, Any], amount: int | None) -> dict[str, Any]:
        """CANCEL with a refundKey, sent again with the same key until answered."""
        refund_key = new_key("R")
        body: dict[str, Any] = {"passCode": self.terminal.pass_code, "refundKey": refund_key}
        if amount is not None:
            body["amount"] = amount
        path = f"/v1/payments/{payment['transId']}/refunds"
        response = self.send("CANCEL", "POST", path, json=body)
        answered = self.payment_answer("CANCEL", response, refund_key)
        if answered is None:
            return payment
        mine = next((r for r in answered["refunds"] if r["refundKey"] == refund_key), None)
        if mine is None:
            self.recorder.anomaly(f"CANCEL {refund_key} answered without its refund")
            return answered
        if self.rng.random() < 0.1:
            # The same refundKey again, deliberately: the same refund must come back.
            again = self.payment_answer(
                "CANCEL", self.send("CANCEL", "POST", path, json=body), refund_key
            )
            if again is not None:
                same = [r for r in again["refunds"] if r["refundKey"] == refund_key]
                if [r["refundId"] for r in same] != [mine["refundId"]]:
                    self.recorder.anomaly(f"CANCEL {refund_key} replayed as {same}")
                answered = again
        deadline = time.monotonic() + self.config.poll_seconds
        while time.monotonic() < deadline and any(
            r["status"] == "PENDING" for r in answered["refunds"]
        ):
            # The wallet's answer was lost in a crash: the workers find out; watch them do it.
            time.sleep(0.3)
            answered = self.lookup(answered)
        return answered


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP{response.status_code}"


# --- reconciliation ------------------------------------------------------------------------------


@contextmanager
def worker_process(
    workdir: Path, database_url: str, settings: Mapping[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """`kessai worker` in its own process group, killed with it on the way out."""
    log = workdir / "worker.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [KESSAI, "worker", "--database", database_url],
            env=base_env() | dict(settings),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def reconcile(
    workdir: Path, database_url: str, settings: Mapping[str, str], timeout: float
) -> tuple[Books, float]:
    """Run `kessai worker` until no payment and no refund is PENDING (or time runs out)."""
    started = time.monotonic()
    books = read_books(database_url)
    if books.unsettled() == (0, 0):
        return books, 0.0
    with worker_process(workdir, database_url, settings) as process:
        while time.monotonic() - started < timeout:
            time.sleep(0.5)
            books = read_books(database_url)
            if books.unsettled() == (0, 0):
                break
            if process.poll() is not None:
                raise RuntimeError(f"kessai worker exited:\n{tail(workdir / 'worker.log')}")
    return books, time.monotonic() - started


# --- the run -------------------------------------------------------------------------------------


@dataclass
class CrashReport:
    """What a run did and what it found."""

    seed: int
    database: str
    kills: int = 0
    startup_kills: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0
    settle_seconds: float = 0.0
    scenarios: int = 0
    ops: dict[str, OpCount] = field(default_factory=dict)
    seen: list[SeenPayment] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    books: Books | None = None
    violations: list[Violation] = field(default_factory=list)
    client_failures: list[str] = field(default_factory=list)
    start_seconds: list[float] = field(default_factory=list)
    # What the background jobs (in serve, then `kessai worker`) settled, by audit action.
    worker_actions: dict[str, int] = field(default_factory=dict)
    # Requests in flight at the moments of the kills, by operation.
    cut_off: dict[str, int] = field(default_factory=dict)
    workdir: Path | None = None
    database_url: str = ""

    def summary(self) -> str:
        """The figures of the run, for people."""
        lines = [
            f"seed {self.seed} on {self.database}: {self.kills} kills while serving "
            f"+ {self.startup_kills} while starting, survived; {self.scenarios} scenarios; "
            f"load {self.load_seconds:.0f} s, reconciliation {self.settle_seconds:.1f} s, "
            f"total {self.seconds:.0f} s; restarts took {_spread(self.start_seconds)}",
            "operation         attempted  answered     sends      lost  unanswered  errors",
        ]
        for op in sorted(self.ops):
            c = self.ops[op]
            errors = ", ".join(f"{k} {v}" for k, v in sorted(c.errors.items()))
            lines.append(
                f"{op:16s} {c.attempted:10d} {c.answered:9d} {c.sends:9d} "
                f"{c.lost:9d} {c.unanswered:11d}  {errors}"
            )
        if self.books is not None:
            books = self.books
            statuses = collections.Counter(p.status for p in books.payments)
            kinds = collections.Counter(p.kind for p in books.payments)
            refunds = collections.Counter(r.status for r in books.refunds)
            lines.append(f"payments {len(books.payments)} ({dict(kinds)}): {dict(statuses)}")
            failures = collections.Counter(p.failure_code for p in books.payments if p.failure_code)
            lines.append(
                f"failure codes: {dict(failures)} (NOT_RECEIVED: killed before the "
                "wallet was asked; REVERSED: unknown too long, cancelled)"
            )
            lines.append(f"refunds {len(books.refunds)}: {dict(refunds)}")
            lines.append(f"settled by the background jobs: {self.worker_actions}")
            lines.append(
                f"wallet charges {len(books.charges)}, wallet refunds "
                f"{len(books.wallet_refunds)}; money {ledger_totals(books)}"
            )
        cut = ", ".join(f"{k} {v}" for k, v in sorted(self.cut_off.items()))
        lines.append(f"in flight when killed: {cut or 'nothing'}")
        told_paid = {s.trans_id for s in self.seen if s.status in PAID}
        lines.append(f"answers recorded {len(self.seen)}; payments told paid {len(told_paid)}")
        lines.append(
            f"anomalies {len(self.anomalies)}; violations {len(self.violations)} "
            "(lost or doubled payments/refunds, ledger mismatches)"
        )
        lines += [f"  ANOMALY {a}" for a in self.anomalies[:20]]
        lines += [f"  VIOLATION {v}" for v in self.violations[:40]]
        lines += [f"  CLIENT FAILURE {f}" for f in self.client_failures]
        return "\n".join(lines)


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return (
        f"median {ordered[len(ordered) // 2]:.1f} s, max {ordered[-1]:.1f} s "
        f"({len(ordered)} starts)"
    )


def provision(database_url: str, merchants: int, clients: int) -> list[Terminal]:
    """Merchants and one terminal per client, through `kessai admin … --json`."""
    batch = CliBatch(database_url)
    try:
        provisioner = Provisioner(batch, ahead=0)
        try:
            owners = [provisioner.merchant(f"crash shop {i}") for i in range(merchants)]
            return [provisioner.terminal_of(owners[i % merchants]) for i in range(clients)]
        finally:
            provisioner.close()
    finally:
        batch.close()


def strike(
    gateway: GatewayProcess, recorder: Recorder, rng: random.Random, config: CrashConfig
) -> None:
    """Wait a random uptime (and maybe for a changing request to be sent), then kill."""
    if rng.random() < config.targeted_kill_rate:
        # A random uptime first: right after a restart the terminals re-send what was cut off,
        # and striking at once would cut the same request off again and again.
        time.sleep(rng.uniform(*config.uptime))
        recorder.sending.clear()
        recorder.sending.wait(config.target_wait)
        time.sleep(rng.uniform(0.0, config.strike_within))
    else:
        time.sleep(rng.uniform(*config.uptime))
    recorder.killed()
    gateway.kill()


def run_crash(config: CrashConfig, workdir: Path, database_url: str) -> CrashReport:
    """Load, kill and restart ``config.kills`` times, reconcile, and check the books.

    The last kill also switches the terminals off wherever they are, as a power cut would: what
    they never heard back about is left for `kessai worker` to find out.
    """
    began = time.monotonic()
    log = config.log
    rng = random.Random(config.seed)
    report = CrashReport(config.seed, config.database, workdir=workdir, database_url=database_url)
    terminals = provision(database_url, config.merchants, config.clients)
    gateway = GatewayProcess(workdir, database_url, config.settings, config)
    recorder = Recorder()
    off = threading.Event()
    gateway.start()
    clients = [
        Client(i, gateway.base_url, terminal, recorder, off, config)
        for i, terminal in enumerate(terminals)
    ]
    load_began = time.monotonic()
    try:
        for client in clients:
            client.start()
        while report.kills < config.kills - 1:
            strike(gateway, recorder, rng, config)
            report.kills += 1
            if rng.random() < config.startup_kill_rate:
                # Killed while importing, migrating or binding: the next start must not care.
                gateway.spawn()
                time.sleep(rng.uniform(0.0, 1.5))
                gateway.kill()
                report.startup_kills += 1
            gateway.start()
            if report.kills % 10 == 0:
                log(
                    f"{report.kills} kills, {len(recorder.seen)} answers, "
                    f"{time.monotonic() - began:.0f} s"
                )
            if any(c.failure is not None for c in clients):
                break
        strike(gateway, recorder, rng, config)
        report.kills += 1
    finally:
        off.set()
        gateway.close()
    for client in clients:
        client.join(timeout=30)
    report.load_seconds = time.monotonic() - load_began
    report.client_failures = [f"{c.name}: {c.failure!r}" for c in clients if c.failure]
    report.client_failures += [f"{c.name}: still running" for c in clients if c.is_alive()]
    report.scenarios = sum(c.scenarios for c in clients)
    books, report.settle_seconds = reconcile(
        workdir, database_url, config.settings, config.settle_seconds
    )
    report.books = books
    report.seen = list(recorder.seen)
    report.ops = dict(recorder.ops)
    report.anomalies = list(recorder.anomalies)
    report.start_seconds = list(gateway.start_seconds)
    report.cut_off = dict(recorder.cut_off)
    report.violations = check(books, report.seen)
    report.worker_actions = worker_actions(database_url)
    report.seconds = time.monotonic() - began
    return report
