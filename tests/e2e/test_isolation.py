"""A terminal sees only its own merchant's payments.

Merchant B's terminal asking about merchant A's payment must get exactly the answer it gets for a
payment that does not exist (same status, code, field, retryable flag and wording), so that it
cannot even learn that the transId or transKey is in use. A's payment stays as it was.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .support import Pos, Provisioner, assert_error, new_key, sandbox_code

pytestmark = pytest.mark.e2e


def _shape(response: httpx.Response, secret: str, stand_in: str) -> dict[str, Any]:
    """An answer with the asked-for id replaced by a placeholder, to compare two answers."""
    error = assert_error(response, response.status_code, response.json()["error"]["code"])
    return {
        "status": response.status_code,
        "content-type": response.headers.get("content-type"),
        "code": error["code"],
        "field": error["field"],
        "retryable": error["retryable"],
        "message": error["message"].replace(secret, "<id>").replace(stand_in, "<id>"),
    }


def test_another_merchants_payment_looks_like_no_payment(
    http: httpx.Client, provisioner: Provisioner
) -> None:
    shop_a = Pos(http, provisioner.fresh())
    shop_b = Pos(http, provisioner.fresh())
    assert shop_a.terminal.merchant_id != shop_b.terminal.merchant_id
    shop_a.login_ok()
    shop_b.login_ok()
    paid = shop_a.pay(sandbox_code(http, "01"), 3000)
    shown = shop_a.qr(new_key(), 800, "21")
    assert shown.status_code == 200
    qr = shown.json()
    before = {p["transId"]: shop_a.paycheck(p["transId"]).json() for p in (paid, qr)}
    # Ids nobody has: checked from A's side too.
    ghost_id = "1000000000" if paid["transId"] != "1000000000" else "1000000001"
    ghost_key = new_key()
    assert shop_a.paycheck(ghost_id).status_code == 404

    def asks(trans_id: str, trans_key: str) -> dict[str, httpx.Response]:
        auth = shop_b.auth()
        return {
            "PAYCHECK": shop_b.paycheck(trans_id),
            "STATUS": shop_b.status(trans_key),
            "CANCEL": shop_b.refund(trans_id, amount=100),
            "CANCEL-all": shop_b.refund(trans_id),
            "VOUCHERNO": shop_b.voucher(trans_id, "STOLEN-1"),
            "qr.png": http.get(f"/v1/payments/{trans_id}/qr.png", headers=auth),
            "qr.svg": http.get(f"/v1/payments/{trans_id}/qr.svg", headers=auth),
        }

    for target in (paid, qr):
        foreign = asks(target["transId"], target["transKey"])
        missing = asks(ghost_id, ghost_key)
        for operation, answer in foreign.items():
            secret = target["transKey"] if operation == "STATUS" else target["transId"]
            stand_in = ghost_key if operation == "STATUS" else ghost_id
            assert answer.status_code == 404, (operation, answer.text)
            assert _shape(answer, secret, stand_in) == _shape(
                missing[operation], secret, stand_in
            ), operation
    # A's payments are exactly as they were: no refund, no voucher number, same version.
    for trans_id, was in before.items():
        assert shop_a.paycheck(trans_id).json() == was
    # B's own transKeys are its own: B may use A's transKey for a payment of its own.
    mine = shop_b.pay(sandbox_code(http, "01"), 50, trans_key=paid["transKey"])
    assert mine["transId"] != paid["transId"]
    assert shop_a.status(paid["transKey"]).json()["transId"] == paid["transId"]
