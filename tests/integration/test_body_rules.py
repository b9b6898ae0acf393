"""Repeated JSON keys, bodies that are not UTF-8 and STATUS's query, on both lanes.

Each request goes through what ``kessai serve`` serves (``serving_app``): once with the express
lane serving REQUEST, PAYCHECK and STATUS, once with everything left to the framework. A refused
request must leave every table of the database as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from litestar.testing import TestClient

from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.adapters.migrate import upgrade
from kessai.api import express
from kessai.api.app import serving_app
from kessai.config import Settings
from kessai.connectors.sandbox import wallets
from kessai.service import admin

PASSCODE = "4321"
JSON = {"content-type": "application/json"}


@dataclass
class Till:
    """A logged-in terminal on a gateway served as ``kessai serve`` serves it."""

    client: TestClient[Any]
    db: Database
    login: dict[str, str]
    auth: dict[str, str]

    def post(self, path: str, body: bytes, method: str = "POST") -> httpx.Response:
        return self.client.request(method, path, content=body, headers=self.auth | JSON)

    def code(self, service_id: str = "01") -> str:
        now = datetime.now(UTC)
        return self.db.run_sync(lambda c: wallets.issue_codes(c, service_id, "success", 1, now))[0]

    def pay(self, trans_key: str, amount: int = 1000) -> dict[str, Any]:
        body = {"transKey": trans_key, "amount": amount, "code": self.code()}
        answer = self.client.post("/v1/payments", json=body, headers=self.auth)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "COMPLETED"
        return dict(answer.json())

    def books(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table."""

        def read(conn: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
            return {
                name: [tuple(row) for row in conn.execute(sa.select(table)).all()]
                for name, table in t.metadata.tables.items()
            }

        return self.db.run_sync(read, write=False)


@pytest.fixture(params=["express", "framework"])
def lane(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which lane serves REQUEST, PAYCHECK and STATUS."""
    if request.param == "framework":
        monkeypatch.setattr(express, "OPERATIONS", {})
    return str(request.param)


@pytest.fixture
def till(tmp_path: Path, lane: str) -> Iterator[Till]:
    url = f"sqlite:///{tmp_path / 'kessai.db'}"
    db = Database(url)
    upgrade(db)
    now = datetime.now(UTC)

    def seed(conn: sa.Connection) -> dict[str, str]:
        merchant = admin.create_merchant(conn, "Body Shop", now)
        os_value = admin.create_integration(conn, "Body POS", now)
        terminal = admin.create_terminal(conn, merchant, now, passcode=PASSCODE)
        return {"mid": terminal.mid, "password": terminal.password, "os": os_value}

    login = db.run_sync(seed)
    with TestClient(serving_app(url, Settings(sandbox_enabled=True))) as client:
        answer = client.post("/v1/login", json={**login, "key": "AA:BB:CC:00:11:22"})
        assert answer.status_code == 200, answer.text
        auth = {"Authorization": f"Bearer {answer.json()['sessionToken']}"}
        yield Till(client, db, login, auth)
    db.close()


def _refused(answer: httpx.Response, code: str, field: str | None) -> dict[str, Any]:
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert (error["code"], error["field"], error["retryable"]) == (code, field, False)
    assert error["requestId"] == answer.headers["x-request-id"]
    return dict(error)


def _repeat_refused(answer: httpx.Response, key: str) -> None:
    error = _refused(answer, "MALFORMED_JSON", key)
    assert key in error["message"]


# --- repeated keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "key"),
    [
        ('{"transKey":"DK1","amount":100,"amount":5000,"code":"CODE"}', "amount"),
        ('{"transKey":"DK1","amount":5000,"code":"CODE","amount":100}', "amount"),
        ('{"transKey":"DK1","\\u0061mount":100,"amount":5000,"code":"CODE"}', "amount"),
        ('{"transKey":"DK1","amount":100,"code":"CODE","\\u0063ode":"CODE"}', "code"),
        ('{"transKey":"DK1","transKey":"DK2","amount":100,"code":"CODE"}', "transKey"),
        (
            '{"transKey":"DK1","amount":100,"code":"CODE","serviceId":"01","serviceId":"01"}',
            "serviceId",
        ),
    ],
)
def test_request_with_a_repeated_key_charges_nothing(till: Till, template: str, key: str) -> None:
    code = till.code()
    before = till.books()
    _repeat_refused(till.post("/v1/payments", template.replace("CODE", code).encode()), key)
    assert till.books() == before
    for trans_key in ("DK1", "DK2"):
        missing = till.client.get(f"/v1/payments?transKey={trans_key}", headers=till.auth)
        assert missing.status_code == 404, missing.text
    # The code was never charged: it still pays, and the amount is the one sent alone.
    body = {"transKey": "DK1", "amount": 100, "code": code}
    paid = till.client.post("/v1/payments", json=body, headers=till.auth)
    assert paid.status_code == 200 and paid.json()["status"] == "COMPLETED", paid.text
    assert paid.json()["amount"] == 100


def test_refund_with_a_repeated_key_refunds_nothing(till: Till) -> None:
    payment = till.pay("RF1", 1000)
    path = f"/v1/payments/{payment['transId']}/refunds"
    before = till.books()
    for body in (
        '{"passCode":"%s","amount":100,"amount":900,"refundKey":"R1"}',
        '{"passCode":"%s","amount":100,"refundKey":"R1","\\u0061mount":900}',
    ):
        _repeat_refused(till.post(path, (body % PASSCODE).encode()), "amount")
    passcodes = b'{"passCode":"0000","passCode":"%s"}' % PASSCODE.encode()
    _repeat_refused(till.post(path, passcodes), "passCode")
    keys = b'{"passCode":"%s","refundKey":"A","refundKey":"B"}' % PASSCODE.encode()
    _repeat_refused(till.post(path, keys), "refundKey")
    assert till.books() == before
    now = till.client.get(f"/v1/payments/{payment['transId']}", headers=till.auth).json()
    assert (now["refunds"], now["refundedAmount"], now["refundableAmount"]) == ([], 0, 1000)


def test_login_with_a_repeated_key_opens_no_session(till: Till) -> None:
    good = {**till.login, "key": "AA:BB:CC:00:11:22"}
    other = {"mid": "1234567890123456", "key": "DD:EE", "password": "x" * 12, "os": "999999"}
    before = till.books()
    for repeated in good:
        # The right value comes last: the one a decoder that keeps the last would log in with.
        pairs = [(repeated, other[repeated]), *good.items()]
        body = "{" + ",".join(f'"{name}":"{value}"' for name, value in pairs) + "}"
        answer = till.client.post("/v1/login", content=body.encode(), headers=JSON)
        _repeat_refused(answer, repeated)
    assert till.books() == before
    # The session that was open still is.
    assert till.client.get("/v1/payments?transKey=NONE", headers=till.auth).status_code == 404


def test_qr_code_with_a_repeated_key_creates_no_payment(till: Till) -> None:
    before = till.books()
    for body, key in (
        ('{"transKey":"QR1","amount":100,"amount":5000,"serviceId":"01"}', "amount"),
        ('{"transKey":"QR1","amount":100,"serviceId":"01","\\u0061mount":5000}', "amount"),
        (
            '{"transKey":"QR1","amount":100,"serviceId":"01","ttlSeconds":60,"ttlSeconds":900}',
            "ttlSeconds",
        ),
    ):
        _repeat_refused(till.post("/v1/qr-codes", body.encode()), key)
    assert till.books() == before
    assert till.client.get("/v1/payments?transKey=QR1", headers=till.auth).status_code == 404


def test_voucher_with_a_repeated_key_changes_nothing(till: Till) -> None:
    payment = till.pay("VC1")
    path = f"/v1/payments/{payment['transId']}/voucher"
    before = till.books()
    for body in (
        '{"voucherNo":"SLIP-1","voucherNo":"SLIP-2"}',
        '{"voucherNo":"SLIP-1","\\u0076oucherNo":"SLIP-2"}',
    ):
        _repeat_refused(till.post(path, body.encode(), method="PUT"), "voucherNo")
    assert till.books() == before
    now = till.client.get(f"/v1/payments/{payment['transId']}", headers=till.auth).json()
    assert now["voucherNo"] is None


def test_identify_with_a_repeated_key_is_refused(till: Till) -> None:
    code = till.code()
    before = till.books()
    for body in (
        '{"code":"%s","code":"4901234567894"}',
        '{"code":"4901234567894","\\u0063ode":"%s"}',
    ):
        _repeat_refused(till.post("/v1/identify", (body % code).encode()), "code")
    assert till.books() == before


def test_the_sandbox_bodies_refuse_repeated_keys_too(till: Till) -> None:
    code = till.code()
    before = till.books()
    answer = till.client.post(
        "/sandbox/codes", content=b'{"serviceId":"01","count":1,"count":5}', headers=JSON
    )
    _repeat_refused(answer, "count")
    answer = till.client.post(
        "/sandbox/phone/status", content=b'{"code":"%s","code":"1"}' % code.encode(), headers=JSON
    )
    _repeat_refused(answer, "code")
    assert till.books() == before


# --- bodies that are not UTF-8 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/login", b'{"mid":"\xff"}'),
        ("/v1/login", b'{"mid":"1234567890123456","key":"A\xc3","password":"x","os":"1"}'),
        ("/v1/payments", b'{"transKey":"\xff","amount":100,"code":"1"}'),
        ("/v1/payments", b'{"transKey":"U1","amount":100,"code":"\xed\xa0\x80"}'),
        ("/v1/qr-codes", b'{"transKey":"U1","amount":100,"serviceId":"0\xff"}'),
        ("/v1/identify", b'{"code":"\xfe"}'),
    ],
)
def test_a_body_that_is_not_utf8_is_malformed_json(till: Till, path: str, body: bytes) -> None:
    before = till.books()
    error = _refused(till.post(path, body), "MALFORMED_JSON", None)
    assert "UTF-8" in error["message"]
    assert till.books() == before


# --- STATUS's query --------------------------------------------------------------------------


def test_status_refuses_an_unknown_or_repeated_parameter(till: Till) -> None:
    payment = till.pay("ST1")
    found = till.client.get("/v1/payments?transKey=ST1", headers=till.auth)
    assert found.status_code == 200 and found.json()["transId"] == payment["transId"]
    cases = [
        ("transKey=ST1&foo=1", "UNKNOWN_FIELD", "foo"),
        ("foo=&transKey=ST1", "UNKNOWN_FIELD", "foo"),
        ("transKey=ST1&transId=" + payment["transId"], "UNKNOWN_FIELD", "transId"),
        ("transKey=ST1&transKey=ST1", "INVALID_FIELD", "transKey"),
        ("transKey=NOPE&transKey=ST1", "INVALID_FIELD", "transKey"),
        ("transKey=ST1&transKey=NOPE", "INVALID_FIELD", "transKey"),
    ]
    for query, code, field in cases:
        error = _refused(till.client.get(f"/v1/payments?{query}", headers=till.auth), code, field)
        assert field in error["message"], query
