"""The real gateway API (REQUEST, GET-QR-CODE, PAYCHECK, CANCEL) through each connector.

`kessai serve` runs as a subprocess on a free port with a temporary SQLite database; merchants,
terminals and their provider accounts are provisioned with `kessai admin … --json`, each
account's --base-url pointing at a contract fake on 127.0.0.1. Terminals drive /v1 over httpx.

Each `kessai` process spends about three seconds importing, so most provisioning commands run
in-process through Typer's runner (the same command, arguments and JSON output); one
`kessai admin provider set` runs as a real subprocess to prove the installed command.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from kessai.cli.main import app as cli_app
from kessai.connectors.secrets import generate_key

from .fakes.alipayplus import AlipayPlusFake, private_pem, public_pem
from .fakes.paypay import SLOW_AMOUNT, PayPayFake
from .fakes.server import FakeServer
from .fakes.wechatpay import API_KEY, APP_ID, MCH_ID, WeChatPayFake

pytestmark = pytest.mark.e2e

KESSAI = str(Path(sys.executable).with_name("kessai"))
KEY = generate_key()
SETTINGS = {
    "KESSAI_SECRET_KEY": KEY,
    "KESSAI_PROVIDER_RECHECK_INTERVAL_MS": "50",
    # Shorter than the fakes' slow answers (1.5 s): those become unknown outcomes.
    "KESSAI_PROVIDER_TIMEOUT_SECONDS": "1",
    "KESSAI_QR_TTL_MIN_SECONDS": "1",
    "KESSAI_PROVIDER_GIVE_UP_SECONDS": "2",
    "KESSAI_PROVIDER_NOT_FOUND_GRACE_SECONDS": "1",
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESSAI_")}
    # The sandbox stays on: services without a provider account still pay there.
    return env | SETTINGS | {"PYTHONUNBUFFERED": "1", "KESSAI_SANDBOX_ENABLED": "true"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(database: str, *args: str) -> Any:
    """`kessai admin ARGS --database D --json`, in-process."""
    result = CliRunner().invoke(
        cli_app, ["admin", *args, "--database", database, "--json"], env=SETTINGS
    )
    assert result.exit_code == 0, f"kessai admin {' '.join(args)}: {result.output}"
    return json.loads(result.stdout)


def _cli_subprocess(database: str, *args: str) -> Any:
    """`kessai admin ARGS --database D --json`, as its own process."""
    done = subprocess.run(
        [KESSAI, "admin", *args, "--database", database, "--json"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kessai admin {' '.join(args)}: {done.stdout}{done.stderr}"
    return json.loads(done.stdout)


@dataclass
class Till:
    """A logged-in terminal of one merchant."""

    http: httpx.Client
    token: str
    passcode: str

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def request(self, code: str, amount: int = 1200) -> httpx.Response:
        body = {"transKey": f"T{uuid.uuid4().hex[:20]}", "amount": amount, "code": code}
        return self.http.post("/v1/payments", json=body, headers=self._auth())

    def qr(self, service_id: str, amount: int = 1200, ttl: int | None = None) -> httpx.Response:
        body: dict[str, Any] = {
            "transKey": f"Q{uuid.uuid4().hex[:20]}",
            "amount": amount,
            "serviceId": service_id,
        }
        if ttl is not None:
            body["ttlSeconds"] = ttl
        return self.http.post("/v1/qr-codes", json=body, headers=self._auth())

    def paycheck(self, trans_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/v1/payments/{trans_id}", headers=self._auth())
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def settle(self, trans_id: str, limit_seconds: float = 10.0) -> dict[str, Any]:
        """PAYCHECK until the payment is final."""
        deadline = time.monotonic() + limit_seconds
        while True:
            payment = self.paycheck(trans_id)
            if payment["status"] != "PENDING" or time.monotonic() > deadline:
                return payment
            time.sleep(0.1)

    def cancel(self, trans_id: str, amount: int | None = None) -> httpx.Response:
        body: dict[str, Any] = {"passCode": self.passcode}
        if amount is not None:
            body["amount"] = amount
        return self.http.post(f"/v1/payments/{trans_id}/refunds", json=body, headers=self._auth())


@dataclass
class World:
    base_url: str
    database: str
    paypay: PayPayFake
    alipay: AlipayPlusFake
    wechat: WeChatPayFake
    tills: dict[str, Till]


def _start_server(database: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [KESSAI, "serve", "--host", "127.0.0.1", "--port", str(port), "--database", database],
            env=_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"kessai serve did not start:\n{log.read_text()}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("providers")
    database = f"sqlite:///{workdir / 'k.db'}"
    fakes = PayPayFake(), AlipayPlusFake(), WeChatPayFake()
    servers = [FakeServer(fake).start() for fake in fakes]
    paypay, alipay, wechat = fakes
    (workdir / "alipay-private.pem").write_text(private_pem(alipay.acquirer_key))
    (workdir / "alipay-public.pem").write_text(public_pem(alipay.alipay_key))
    (workdir / "paypay.secret").write_text("APIKeySecretGenerated")
    (workdir / "wechat.key").write_text(API_KEY)
    (workdir / "wrong.key").write_text("0" * 32)
    os_value = _cli(database, "integration", "create", "--name", "POS")["os"]
    accounts: dict[str, list[str]] = {
        "paypay": [
            "--service",
            "01",
            "--provider",
            "paypay",
            "--api-key",
            "APIKeyGenerated",
            "--api-secret-file",
            str(workdir / "paypay.secret"),
            "--provider-merchant-id",
            paypay.merchant_id,
            "--base-url",
            servers[0].base_url,
        ],
        "alipayplus": [
            "--service",
            "20",
            "--provider",
            "alipayplus",
            "--api-key",
            alipay.client_id,
            "--api-secret-file",
            str(workdir / "alipay-private.pem"),
            "--provider-public-key-file",
            str(workdir / "alipay-public.pem"),
            "--provider-merchant-id",
            "M0001",
            "--base-url",
            servers[1].base_url,
        ],
        "wechatpay": [
            "--service",
            "21",
            "--provider",
            "wechatpay",
            "--api-key",
            APP_ID,
            "--api-secret-file",
            str(workdir / "wechat.key"),
            "--provider-merchant-id",
            MCH_ID,
            "--base-url",
            servers[2].base_url,
        ],
        "wechatpay-wrong-key": [
            "--service",
            "21",
            "--provider",
            "wechatpay",
            "--api-key",
            APP_ID,
            "--api-secret-file",
            str(workdir / "wrong.key"),
            "--provider-merchant-id",
            MCH_ID,
            "--base-url",
            servers[2].base_url,
        ],
    }

    terminals: dict[str, dict[str, Any]] = {}
    for name, settings in accounts.items():
        merchant = _cli(database, "merchant", "create", "--name", f"Shop {name}")["merchantId"]
        terminals[name] = _cli(database, "terminal", "create", "--merchant", str(merchant))
        run = _cli_subprocess if name == "paypay" else _cli
        view = run(database, "provider", "set", "--merchant", str(merchant), *settings)
        assert view["hasSecret"] and "secret" not in json.dumps(view).lower().replace(
            "hassecret", ""
        ).replace("secretkeyid", "")
    process, base_url = _start_server(database, workdir / "server.log")
    clients: list[httpx.Client] = []
    try:
        tills = {}
        for name, terminal in terminals.items():
            http = httpx.Client(base_url=base_url, timeout=30)
            clients.append(http)
            login = http.post(
                "/v1/login",
                json={
                    "mid": terminal["mid"],
                    "key": "REG-1",
                    "password": terminal["password"],
                    "os": os_value,
                },
            )
            assert login.status_code == 200, login.text
            tills[name] = Till(http, login.json()["sessionToken"], terminal["passCode"])
        yield World(base_url, database, paypay, alipay, wechat, tills)
    finally:
        for http in clients:
            http.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        for server in servers:
            server.stop()


# -- PayPay ------------------------------------------------------------------------------------


def test_paypay_qr_paid_then_refunded(world: World) -> None:
    till = world.tills["paypay"]
    answer = till.qr("01", 1500)
    assert answer.status_code == 200, answer.text
    payment = answer.json()
    assert (payment["status"], payment["pendingReason"]) == ("PENDING", "WAITING_FOR_CUSTOMER")
    code = world.paypay.codes[payment["transId"]]
    assert payment["qrData"] == code.url
    assert till.paycheck(payment["transId"])["status"] == "PENDING"
    world.paypay.customer_pays(payment["transId"])
    assert till.settle(payment["transId"])["status"] == "COMPLETED"
    partly = till.cancel(payment["transId"], 500)
    assert partly.status_code == 200, partly.text
    assert (partly.json()["status"], partly.json()["refundedAmount"]) == ("PARTIALLY_REFUNDED", 500)
    rest = till.cancel(payment["transId"])
    assert (rest.json()["status"], rest.json()["refundedAmount"]) == ("REFUNDED", 1500)
    assert sum(r["amount"]["amount"] for r in code.refunds.values()) == 1500


def _status_in_books(world: World, trans_id: str) -> str:
    """The payment's status as stored, read without asking the gateway (no provider check)."""
    with sqlite3.connect(world.database.removeprefix("sqlite:///")) as conn:
        row = conn.execute("SELECT status FROM payments WHERE trans_id = ?", (trans_id,)).fetchone()
    return str(row[0])


def test_paypay_webhook_settles_the_payment_without_polling(world: World) -> None:
    till = world.tills["paypay"]
    payment = till.qr("01", 1800).json()
    trans_id = payment["transId"]
    world.paypay.customer_pays(trans_id)
    assert _status_in_books(world, trans_id) == "PENDING"
    hook = httpx.post(
        f"{world.base_url}/notifications/paypay",
        content=world.paypay.webhook(trans_id),
        headers={"Content-Type": "application/json"},
    )
    assert hook.status_code == 200, hook.text
    # The webhook was a hint; the gateway asked PayPay and recorded its answer at once.
    assert _status_in_books(world, trans_id) == "COMPLETED"
    forged = httpx.post(
        f"{world.base_url}/notifications/paypay",
        content=b"{}",
        headers={"Content-Type": "application/json"},
    )
    assert forged.status_code == 400
    assert forged.json()["error"]["code"] == "NOTIFICATION_REJECTED"
    unknown = httpx.post(f"{world.base_url}/notifications/nosuchpay", content=b"{}")
    assert unknown.status_code == 404


def test_paypay_expired_qr_is_withdrawn_at_paypay(world: World) -> None:
    till = world.tills["paypay"]
    payment = till.qr("01", 800, ttl=1).json()
    time.sleep(1.2)
    expired = till.settle(payment["transId"])
    assert (expired["status"], expired["failureCode"]) == ("EXPIRED", "QR_EXPIRED")
    assert world.paypay.codes[payment["transId"]].deleted


def test_paypay_lost_answer_is_recovered_by_paycheck(world: World) -> None:
    till = world.tills["paypay"]
    payment = till.qr("01", SLOW_AMOUNT).json()
    assert payment["status"] == "PENDING" and payment["qrData"] is None
    time.sleep(0.6)  # the fake finishes its slow answer meanwhile
    recovered = till.paycheck(payment["transId"])
    assert recovered["qrData"] == world.paypay.codes[payment["transId"]].url


def test_paypay_customer_codes_are_refused_before_any_payment(world: World) -> None:
    till = world.tills["paypay"]
    answer = till.request("900081818802468013579246")
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "SERVICE_NOT_SUPPORTED"
    assert "store scan" in error["message"]


# -- Alipay+ -----------------------------------------------------------------------------------


def test_alipay_code_payment_and_refund(world: World) -> None:
    till = world.tills["alipayplus"]
    paid = till.request("281234567890123401", 2000)
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "COMPLETED"
    refunded = till.cancel(paid.json()["transId"], 700)
    assert (refunded.json()["status"], refunded.json()["refundedAmount"]) == (
        "PARTIALLY_REFUNDED",
        700,
    )
    assert world.alipay.payments[paid.json()["transId"]].amount == "2000"


def test_alipay_in_process_and_timeout_resolve_by_paycheck(world: World) -> None:
    till = world.tills["alipayplus"]
    in_process = till.request("281234567890123402").json()
    assert (in_process["status"], in_process["pendingReason"]) == ("PENDING", "OUTCOME_UNKNOWN")
    assert till.settle(in_process["transId"])["status"] == "COMPLETED"
    slow = till.request("281234567890123404").json()
    assert (slow["status"], slow["pendingReason"]) == ("PENDING", "OUTCOME_UNKNOWN")
    assert till.settle(slow["transId"])["status"] == "COMPLETED"


def test_alipay_decline_fails_at_once(world: World) -> None:
    declined = world.tills["alipayplus"].request("281234567890123403").json()
    assert (declined["status"], declined["failureCode"]) == ("FAILED", "DECLINED")


def test_alipay_endless_in_process_is_cancelled_then_failed(world: World) -> None:
    till = world.tills["alipayplus"]
    stuck = till.request("281234567890123405").json()
    assert stuck["status"] == "PENDING"
    ended = till.settle(stuck["transId"], limit_seconds=15)
    # Failed only once Alipay+ confirmed the cancel (the gateway's give-up rule).
    assert ended["status"] == "FAILED"
    assert world.alipay.payments[stuck["transId"]].status == "CLOSED"


def test_alipay_qr_is_not_supported(world: World) -> None:
    answer = world.tills["alipayplus"].qr("20")
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "SERVICE_NOT_SUPPORTED"


# -- WeChat Pay --------------------------------------------------------------------------------


def test_wechat_password_payment_then_full_refund(world: World) -> None:
    till = world.tills["wechatpay"]
    waiting = till.request("134567890123456702", 3000).json()
    assert (waiting["status"], waiting["pendingReason"]) == ("PENDING", "WAITING_FOR_CUSTOMER")
    assert till.paycheck(waiting["transId"])["status"] == "PENDING"
    world.wechat.confirm(waiting["transId"])
    assert till.settle(waiting["transId"])["status"] == "COMPLETED"
    refunded = till.cancel(waiting["transId"])
    assert (refunded.json()["status"], refunded.json()["refundedAmount"]) == ("REFUNDED", 3000)


def test_wechat_success_decline_and_wrong_key(world: World) -> None:
    paid = world.tills["wechatpay"].request("134567890123456701").json()
    assert paid["status"] == "COMPLETED"
    poor = world.tills["wechatpay"].request("134567890123456703").json()
    assert (poor["status"], poor["failureCode"]) == ("FAILED", "DECLINED")
    refused = world.tills["wechatpay-wrong-key"].request("134567890123456701").json()
    assert (refused["status"], refused["failureCode"]) == ("FAILED", "PROVIDER_ERROR")


def test_wechat_system_error_resolves_by_paycheck(world: World) -> None:
    till = world.tills["wechatpay"]
    unknown = till.request("134567890123456704").json()
    assert (unknown["status"], unknown["pendingReason"]) == ("PENDING", "OUTCOME_UNKNOWN")
    assert till.settle(unknown["transId"])["status"] == "COMPLETED"
