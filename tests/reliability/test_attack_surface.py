"""What a stranger can reach without any credentials: forged provider notifications, and the
sandbox's routes on a gateway that has turned them off.

- Forged notifications. /notifications/* is open to the Internet (providers call it). A PayPay
  Transaction webhook is unsigned, so the gateway takes it only as a hint and asks PayPay: a
  forged "COMPLETED" for a QR code nobody paid leaves the payment PENDING, and the genuine
  notification afterwards completes it. An Alipay+ notifyPayment is signed: one whose body was
  altered, whose signature is missing, or that is signed with another key is refused (400
  NOTIFICATION_REJECTED) and changes nothing.
- The sandbox. Its routes let anyone issue customer codes and approve payments: that is what a
  sandbox is for, and why production turns it off (KESSAI_SANDBOX_ENABLED=false). Then every
  sandbox route is a 404, like a route that never existed, and the terminal API works as before.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from connectors.fakes.alipayplus import AlipayPlusFake, private_pem, public_pem
from connectors.fakes.paypay import PayPayFake
from connectors.fakes.server import FakeServer
from e2e.support import FAST_SETTINGS, Pos, Terminal, assert_error, new_key, start_server
from kessai.connectors.secrets import generate_key

from .attack_support import Admin, sqlite_file

pytestmark = pytest.mark.e2e


@dataclass
class Production:
    """A gateway without its sandbox, one merchant on PayPay (01) and Alipay+ (20)."""

    base_url: str
    database: Path
    pos: Pos
    paypay: PayPayFake
    alipay: AlipayPlusFake


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    workdir = tmp_path_factory.mktemp("production")
    master_key = generate_key()
    paypay, alipay = PayPayFake(), AlipayPlusFake()
    fakes = [FakeServer(paypay).start(), FakeServer(alipay).start()]
    settings = {**FAST_SETTINGS, "KESSAI_SECRET_KEY": master_key, "KESSAI_SANDBOX_ENABLED": "false"}
    server = start_server(workdir, settings)
    admin = Admin(server.database_url, master_key)
    (workdir / "paypay.secret").write_text(paypay.api_secret)
    (workdir / "alipay.pem").write_text(private_pem(alipay.acquirer_key))
    (workdir / "alipay-public.pem").write_text(public_pem(alipay.alipay_key))
    try:
        os_value = admin("admin", "integration", "create", "--name", "POS")["os"]
        merchant = admin("admin", "merchant", "create", "--name", "Shop")["merchantId"]
        made = admin("admin", "terminal", "create", "--merchant", str(merchant))
        admin(
            "admin", "provider", "set", "--merchant", str(merchant), "--service", "01",
            "--provider", "paypay", "--api-key", paypay.api_key, "--api-secret-file",
            str(workdir / "paypay.secret"), "--provider-merchant-id", paypay.merchant_id,
            "--base-url", fakes[0].base_url,
        )  # fmt: skip
        admin(
            "admin", "provider", "set", "--merchant", str(merchant), "--service", "20",
            "--provider", "alipayplus", "--api-key", alipay.client_id, "--api-secret-file",
            str(workdir / "alipay.pem"), "--provider-public-key-file",
            str(workdir / "alipay-public.pem"), "--provider-merchant-id", "M0001", "--base-url",
            fakes[1].base_url,
        )  # fmt: skip
        terminal = Terminal(made["mid"], made["password"], made["passCode"], merchant, os_value)
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            pos = Pos(http, terminal)
            pos.login_ok()
            yield Production(server.base_url, sqlite_file(server.database_url), pos, paypay, alipay)
    finally:
        server.stop()
        for fake in fakes:
            fake.stop()


def _in_books(database: Path, trans_id: str) -> tuple[str, int]:
    """(status, version) as stored: read without asking the gateway, which would ask PayPay."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT status, version FROM payments WHERE trans_id = ?", (trans_id,)
        ).fetchone()
    return str(row[0]), int(row[1])


def test_a_forged_paypay_notification_is_only_a_hint(production: Production) -> None:
    pos, paypay = production.pos, production.paypay
    shown = pos.qr(new_key(), 2400, "01")
    assert shown.status_code == 200, shown.text
    trans_id = shown.json()["transId"]
    before = _in_books(production.database, trans_id)
    assert before[0] == "PENDING"
    # Well-formed, naming the right merchant and order, claiming it was paid. Nobody paid.
    forged = {
        "notification_type": "Transaction",
        "merchant_id": paypay.merchant_id,
        "store_id": "",
        "pos_id": "",
        "order_id": "PAY-FORGED-1",
        "merchant_order_id": trans_id,
        "authorized_at": None,
        "expires_at": None,
        "paid_at": "2026-01-05T09:00:00Z",
        "order_amount": "2400",
        "state": "COMPLETED",
    }
    with httpx.Client(base_url=production.base_url, timeout=60) as stranger:
        answer = stranger.post("/notifications/paypay", json=forged)
        assert answer.status_code < 500, answer.text
        assert _in_books(production.database, trans_id)[0] == "PENDING"
        assert pos.paycheck(trans_id).json()["status"] == "PENDING"
        # Another PayPay merchant's notification is refused outright.
        other = stranger.post("/notifications/paypay", json=forged | {"merchant_id": "OTHER"})
        assert_error(other, 400, "NOTIFICATION_REJECTED")
        # The genuine one, once the customer has paid, completes it.
        paypay.customer_pays(trans_id)
        genuine = stranger.post(
            "/notifications/paypay",
            content=paypay.webhook(trans_id),
            headers={"content-type": "application/json"},
        )
        assert genuine.status_code == 200, genuine.text
    assert _in_books(production.database, trans_id)[0] == "COMPLETED"


def test_an_alipay_notification_must_carry_alipays_signature(production: Production) -> None:
    pos, alipay = production.pos, production.alipay
    # The last two digits 05: Alipay+ keeps it "in process" until it is cancelled.
    waiting = pos.pay("28" + "7" * 14 + "05", 1800)
    assert (waiting["status"], waiting["pendingReason"]) == ("PENDING", "OUTCOME_UNKNOWN")
    trans_id = waiting["transId"]
    path = "/notifications/alipayplus"
    with alipay.lock:
        alipay.payments[trans_id].status = "S"  # what the forger wants the gateway to believe
        alipay.payments[trans_id].result_code = "SUCCESS"
        headers, body = alipay.notification(trans_id, path)
        alipay.payments[trans_id].status = "U"  # the truth at Alipay+: still in process
        alipay.payments[trans_id].result_code = "PAYMENT_IN_PROCESS"
    altered = json.loads(body)
    altered["paymentAmount"]["value"] = "1"
    stranger_key = AlipayPlusFake()  # another key pair: a signature Alipay+ never made
    with stranger_key.lock:
        stranger_key.payments[trans_id] = alipay.payments[trans_id]
        stranger_key.client_id = alipay.client_id
        _, signed_by_another = stranger_key.notification(trans_id, path)
        other_headers, _ = stranger_key.notification(trans_id, path)
    forgeries = {
        "altered body": (headers, json.dumps(altered).encode()),
        "no signature": ({k: v for k, v in headers.items() if k != "Signature"}, body),
        "another key": (other_headers, signed_by_another),
    }
    before = _in_books(production.database, trans_id)
    with httpx.Client(base_url=production.base_url, timeout=60) as stranger:
        for name, (sent_headers, sent_body) in forgeries.items():
            answer = stranger.post(path, content=sent_body, headers=sent_headers)
            assert answer.status_code == 400, (name, answer.text)
            assert answer.json()["error"]["code"] == "NOTIFICATION_REJECTED", name
    assert _in_books(production.database, trans_id) == before
    # The control: the same notification as Alipay+ signed it is accepted (and acknowledged).
    with httpx.Client(base_url=production.base_url, timeout=60) as provider:
        genuine = provider.post(path, content=body, headers=headers)
        assert genuine.status_code == 200, genuine.text


SANDBOX_ROUTES = [
    ("POST", "/sandbox/codes", {"serviceId": "01", "outcome": "success"}),
    ("POST", "/sandbox/charges/1234567890/approve", None),
    ("POST", "/sandbox/charges/1234567890/decline", None),
    ("GET", "/sandbox/pay/abcdef", None),
    ("POST", "/sandbox/pay/abcdef", None),
    ("GET", "/sandbox/phone", None),
    ("POST", "/sandbox/phone", None),
    ("POST", "/sandbox/phone/status", {"code": "1"}),
    ("POST", "/sandbox/phone/watch", None),
    ("POST", "/sandbox/phone/decide", None),
]


def test_with_the_sandbox_off_its_routes_do_not_exist(production: Production) -> None:
    with httpx.Client(base_url=production.base_url, timeout=60) as stranger:
        for method, path, body in SANDBOX_ROUTES:
            answer = stranger.request(method, path, json=body)
            assert answer.status_code == 404, (method, path, answer.status_code)
            assert_error(answer, 404, "NOT_FOUND")
        # Nothing in the answers says which software or version answers.
        assert "server" not in stranger.get("/healthz").headers
    # The terminal API is unaffected.
    assert_error(production.pos.paycheck("1000000000"), 404, "PAYMENT_NOT_FOUND")
