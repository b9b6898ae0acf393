"""A stolen session token, after its session ended, on every endpoint of the terminal API.

The thief copied the bearer token (from a log, a proxy, a backup of the register). Once the
session has ended — LOGOUT, the same mid logging in again from the same device, an
administrator's logout, a password reset, a disabled (and re-enabled) terminal — the token must
be refused by every operation with 401 SESSION_INVALID, and nothing may change: no payment, no
refund, no voucher number, no wallet charge (the customer code the thief sent still pays for the
shop afterwards), and the shop's new session keeps working. Forms of the token that are not the
token (altered, padded, in a cookie or the query string) are refused too.

tests/e2e/test_sessions.py checks that an ended token no longer reads a payment; this sends the
token to all eleven operations after each way a session ends, and checks the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from e2e.support import PRODUCT_BARCODE, Pos, assert_error, new_key, sandbox_code

from .attack_support import (
    GHOST_TRANS_ID,
    Gateway,
    assert_same_state,
    client_at,
    database_state,
    fresh_address,
    running_gateway,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("tokens")) as running:
        yield running


def _every_operation(
    http: httpx.Client, token: str, sale: dict[str, Any], qr: dict[str, Any], code: str, pos: Pos
) -> dict[str, httpx.Response]:
    """Each of the eleven operations, as the holder of ``token`` would send it."""
    auth = {"Authorization": f"Bearer {token}"}
    tid = sale["transId"]
    return {
        "LOGOUT": http.post("/v1/logout", headers=auth),
        "REQUEST": http.post(
            "/v1/payments", headers=auth, json={"transKey": new_key(), "amount": 5000, "code": code}
        ),
        "PAYCHECK": http.get(f"/v1/payments/{tid}", headers=auth),
        "PAYCHECK unknown": http.get(f"/v1/payments/{GHOST_TRANS_ID}", headers=auth),
        "STATUS": http.get("/v1/payments", params={"transKey": sale["transKey"]}, headers=auth),
        "CANCEL": http.post(
            f"/v1/payments/{tid}/refunds",
            headers=auth,
            json={"passCode": pos.terminal.pass_code, "amount": 100, "refundKey": new_key("R")},
        ),
        "VOUCHERNO": http.put(
            f"/v1/payments/{tid}/voucher", headers=auth, json={"voucherNo": "STOLEN-1"}
        ),
        "GET-QR-CODE": http.post(
            "/v1/qr-codes",
            headers=auth,
            json={"transKey": new_key(), "amount": 5000, "serviceId": "01"},
        ),
        "qr.png": http.get(f"/v1/payments/{qr['transId']}/qr.png", headers=auth),
        "qr.svg": http.get(f"/v1/payments/{qr['transId']}/qr.svg", headers=auth),
        "IDENTIFY": http.post("/v1/identify", headers=auth, json={"code": PRODUCT_BARCODE}),
    }


def _end_by_logout(gw: Gateway, pos: Pos) -> None:
    assert pos.logout().status_code == 200
    pos.login_ok()


def _end_by_logging_in_again(gw: Gateway, pos: Pos) -> None:
    pos.login_ok()  # the same key: a register after a restart


def _end_by_admin_logout(gw: Gateway, pos: Pos) -> None:
    assert gw.cli.json("admin", "terminal", "logout", pos.terminal.mid)["sessionEnded"] is True
    pos.login_ok()


def _end_by_password_reset(gw: Gateway, pos: Pos) -> None:
    made = gw.cli.json("admin", "terminal", "reset-password", pos.terminal.mid)
    pos.terminal = type(pos.terminal)(
        mid=pos.terminal.mid,
        password=str(made["password"]),
        pass_code=pos.terminal.pass_code,
        merchant_id=pos.terminal.merchant_id,
        os=pos.terminal.os,
    )
    pos.login_ok()


def _end_by_disabling(gw: Gateway, pos: Pos) -> None:
    assert gw.cli.json("admin", "terminal", "disable", pos.terminal.mid)["enabled"] is False
    assert gw.cli.json("admin", "terminal", "enable", pos.terminal.mid)["enabled"] is True
    pos.login_ok()


ENDINGS: dict[str, Callable[[Gateway, Pos], None]] = {
    "LOGOUT": _end_by_logout,
    "LOGIN again from the same device": _end_by_logging_in_again,
    "administrator's logout": _end_by_admin_logout,
    "password reset": _end_by_password_reset,
    "disabled and enabled again": _end_by_disabling,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_an_ended_sessions_token_opens_nothing(gw: Gateway, ending: str) -> None:
    pos = Pos(client_at(gw.base_url, fresh_address()), gw.provisioner.fresh())
    stolen = pos.login_ok()
    sale = pos.pay(sandbox_code(pos.http, "01"), 3000)
    shown = pos.qr(new_key(), 800, "01")
    assert shown.status_code == 200, shown.text
    qr = shown.json()
    code = sandbox_code(pos.http, "21")  # a customer's code the thief tries to charge

    ENDINGS[ending](gw, pos)
    current = pos.token
    assert current is not None and current != stolen
    before = database_state(gw.database_url)
    with client_at(gw.base_url, fresh_address()) as thief:
        answers = _every_operation(thief, stolen, sale, qr, code, pos)
    for operation, answer in answers.items():
        assert answer.status_code == 401, (operation, answer.text)
        assert_error(answer, 401, "SESSION_INVALID", None)
    assert_same_state(before, database_state(gw.database_url))

    # The shop's own session was not ended by the thief's LOGOUT, and the code still pays.
    seen = pos.paycheck(sale["transId"]).json()
    assert (seen["voucherNo"], seen["refundedAmount"], seen["refunds"]) == (None, 0, [])
    paid = pos.pay(code, 700)
    assert paid["status"] == "COMPLETED", paid


def test_forms_of_a_live_token_that_are_not_the_token_are_refused(gw: Gateway) -> None:
    pos = Pos(client_at(gw.base_url, fresh_address()), gw.provisioner.fresh())
    token = pos.login_ok()
    path = f"/v1/payments/{GHOST_TRANS_ID}"
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    invalid: list[dict[str, str]] = [
        {"Authorization": f"Bearer {altered}"},
        {"Authorization": f"Bearer {token.upper() if token.upper() != token else token.lower()}"},
        {"Authorization": f"Bearer {token}="},
        {"Authorization": f"Bearer {token[:20]}"},
        {"Authorization": f"Bearer {token} {token}"},
        {"Authorization": f"Bearer {token}x"},
    ]
    for headers in invalid:
        assert_error(pos.http.get(path, headers=headers), 401, "SESSION_INVALID")
    required: list[dict[str, str]] = [
        {},
        {"Authorization": token},
        {"Authorization": f"Basic {token}"},
        {"Authorization": f"Token {token}"},
        {"Authorization": "Bearer " + "A" * 5000},
        {"Cookie": f"sessionToken={token}"},
    ]
    for headers in required:
        assert_error(pos.http.get(path, headers=headers), 401, "SESSION_REQUIRED")
    in_query = pos.http.get(path, params={"sessionToken": token, "access_token": token})
    assert_error(in_query, 401, "SESSION_REQUIRED")
    # The real token still works, after all that.
    assert_error(pos.paycheck(GHOST_TRANS_ID), 404, "PAYMENT_NOT_FOUND")
