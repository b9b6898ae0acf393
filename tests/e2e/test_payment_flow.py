"""Flow 1 of the guide: LOGIN → REQUEST → (PAYCHECK) → LOGOUT, with every sandbox outcome.

Each outcome is paid with codes of several services (PayPay, WeChat Pay, Alipay+, UnionPay and
two 3158… wallets). Also STATUS by transKey, IDENTIFY-SCANNED-QR-CODE, one-time codes and the
integer-yen contract.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from .support import (
    FLOW_SERVICES,
    PRODUCT_BARCODE,
    REVEAL_AFTER_SECONDS,
    SERVICE_NAMES,
    Cli,
    CliBatch,
    Pos,
    assert_error,
    new_key,
    sandbox_code,
)

pytestmark = pytest.mark.e2e


def _request_each(
    pos: Pos, outcome: str, amount: int = 1500
) -> list[tuple[str, str, dict[str, Any]]]:
    """REQUEST one code of each flow service paying with ``outcome``: (service, code, answer)."""
    made = []
    for service_id in FLOW_SERVICES:
        code = sandbox_code(pos.http, service_id, outcome)
        response = pos.request(new_key(), amount, code)
        assert response.status_code == 200, (service_id, response.text)
        made.append((service_id, code, dict(response.json())))
    return made


def _check_common(service_id: str, code: str, payment: dict[str, Any], amount: int) -> None:
    assert payment["kind"] == "CUSTOMER_CODE"
    assert payment["serviceId"] == service_id
    assert payment["serviceName"] == SERVICE_NAMES[service_id]
    assert payment["amount"] == amount
    assert payment["currency"] == "JPY"
    assert len(payment["transId"]) == 10
    assert payment["transId"].isdigit()
    # The customer's code is a one-time secret: only a masked form comes back.
    assert code not in str(payment)
    assert payment["codeMasked"]
    assert "*" in payment["codeMasked"]
    assert payment["qrData"] is None
    assert payment["qrImage"] is None


def test_success_completes_at_once_and_logout_ends_the_session(pos: Pos) -> None:
    for service_id, code, payment in _request_each(pos, "success"):
        _check_common(service_id, code, payment, 1500)
        assert payment["status"] == "COMPLETED", payment
        assert payment["pendingReason"] is None
        assert payment["failureCode"] is None
        assert payment["refundedAmount"] == 0
        assert payment["refundableAmount"] == 1500
        checked = pos.paycheck(payment["transId"])
        assert checked.status_code == 200
        assert checked.json() == payment
        by_key = pos.status(payment["transKey"])
        assert by_key.status_code == 200
        assert by_key.json() == payment
        replay = pos.request(payment["transKey"], 1500, code)
        assert replay.status_code == 200
        assert replay.headers.get("idempotent-replayed") == "true"
        assert replay.json()["transId"] == payment["transId"]
        assert replay.json()["status"] == "COMPLETED"
    token = pos.token
    logout = pos.logout()
    assert logout.status_code == 200
    assert logout.json() == {}
    assert_error(pos.paycheck(payment["transId"], token=token), 401, "SESSION_INVALID")
    assert_error(pos.logout(token), 401, "SESSION_INVALID")


def test_password_pending_until_the_customer_approves(pos: Pos, cli: Cli) -> None:
    made = _request_each(pos, "password")
    for service_id, code, payment in made:
        _check_common(service_id, code, payment, 1500)
        assert payment["status"] == "PENDING", payment
        assert payment["pendingReason"] == "WAITING_FOR_CUSTOMER"
        assert payment["refundableAmount"] == 0
        still = pos.paycheck(payment["transId"]).json()
        assert (still["status"], still["pendingReason"]) == ("PENDING", "WAITING_FOR_CUSTOMER")
    approved = cli.json_many([["sandbox", "approve", p["transId"]] for _, _, p in made])
    assert [a["sandboxStatus"] for a in approved] == ["SUCCEEDED"] * len(made)
    for _, _, payment in made:
        final = pos.wait_final(payment["transId"])
        assert final["status"] == "COMPLETED", final
        assert final["pendingReason"] is None
        assert final["refundableAmount"] == 1500
    assert pos.logout().status_code == 200


def test_password_declined_by_the_customer_fails(pos: Pos, cli: Cli) -> None:
    made = _request_each(pos, "password")
    assert {p["status"] for _, _, p in made} == {"PENDING"}
    declined = cli.json_many([["sandbox", "decline", p["transId"]] for _, _, p in made])
    assert [d["sandboxStatus"] for d in declined] == ["FAILED"] * len(made)
    for _, _, payment in made:
        final = pos.wait_final(payment["transId"])
        assert final["status"] == "FAILED", final
        assert final["failureCode"] == "CUSTOMER_DECLINED"
        assert final["refundableAmount"] == 0
    # Approving after the decline changes nothing: FAILED is final.
    late = cli.json("sandbox", "approve", made[0][2]["transId"])
    assert late["sandboxStatus"] == "FAILED"
    assert pos.paycheck(made[0][2]["transId"]).json()["status"] == "FAILED"


def test_declined_fails_at_once(pos: Pos) -> None:
    for service_id, code, payment in _request_each(pos, "declined"):
        _check_common(service_id, code, payment, 1500)
        assert payment["status"] == "FAILED", payment
        assert payment["failureCode"] == "DECLINED"
        assert payment["failureMessage"]
        assert payment["pendingReason"] is None
        assert pos.paycheck(payment["transId"]).json()["status"] == "FAILED"


def _final(pos: Pos, payment: dict[str, Any], *, by_trans_key: bool) -> dict[str, Any]:
    """Poll until final through PAYCHECK (by transId) or STATUS (by transKey)."""
    if by_trans_key:
        return pos.wait_final(payment["transId"], by=lambda: pos.status(payment["transKey"]))
    return pos.wait_final(payment["transId"])


def _still_unknown_before_the_reveal(pos: Pos) -> dict[str, Any]:
    """A timeout payment that PAYCHECK and STATUS, asked at once, still call unknown."""
    for _ in range(5):  # on a loaded machine the reveal can come first; try again
        code = sandbox_code(pos.http, "01", "timeout-success")
        started = time.monotonic()
        payment = pos.pay(code)
        early = pos.paycheck(payment["transId"]).json()
        by_key = pos.status(payment["transKey"]).json()
        if time.monotonic() - started < REVEAL_AFTER_SECONDS * 0.9:
            for seen in (payment, early, by_key):
                assert (seen["status"], seen["pendingReason"]) == ("PENDING", "OUTCOME_UNKNOWN")
            return payment
    pytest.fail("could not ask within the reveal delay five times")


def test_timeout_success_is_unknown_until_revealed_then_completed(pos: Pos) -> None:
    made = _request_each(pos, "timeout-success")
    for service_id, code, payment in made:
        _check_common(service_id, code, payment, 1500)
        # The wallet charged, but its answer was lost: unknown, never "failed".
        assert (payment["status"], payment["pendingReason"]) == ("PENDING", "OUTCOME_UNKNOWN")
    # Before the provider reveals the outcome, PAYCHECK and STATUS still say unknown.
    early = _still_unknown_before_the_reveal(pos)
    time.sleep(REVEAL_AFTER_SECONDS + 0.1)
    assert pos.wait_final(early["transId"])["status"] == "COMPLETED"
    for index, (_, _, payment) in enumerate(made):
        # Half through PAYCHECK (by transId), half through STATUS (by transKey).
        final = _final(pos, payment, by_trans_key=bool(index % 2))
        assert final["status"] == "COMPLETED", final
        assert final["transId"] == payment["transId"]
        assert final["refundableAmount"] == 1500
    # The terminal's retry of the REQUEST now answers the known outcome, and charges nothing.
    _, code, payment = made[0]
    retry = pos.request(payment["transKey"], 1500, code)
    assert retry.headers.get("idempotent-replayed") == "true"
    assert (retry.json()["transId"], retry.json()["status"]) == (payment["transId"], "COMPLETED")


def test_timeout_failure_is_unknown_until_revealed_then_failed(pos: Pos) -> None:
    made = _request_each(pos, "timeout-failure")
    for _, _, payment in made:
        assert (payment["status"], payment["pendingReason"]) == ("PENDING", "OUTCOME_UNKNOWN")
    time.sleep(REVEAL_AFTER_SECONDS + 0.1)
    for index, (_, _, payment) in enumerate(made):
        final = _final(pos, payment, by_trans_key=bool(index % 2))
        assert final["status"] == "FAILED", final
        assert final["failureCode"]
        assert final["refundableAmount"] == 0


def test_provider_error_fails_and_a_retry_replays_it(pos: Pos, admin: CliBatch) -> None:
    made = _request_each(pos, "error")
    for service_id, code, payment in made:
        _check_common(service_id, code, payment, 1500)
        assert payment["status"] == "FAILED", payment
        assert payment["failureCode"] == "PROVIDER_ERROR"
        retry = pos.request(payment["transKey"], 1500, code)
        assert retry.status_code == 200
        assert retry.headers.get("idempotent-replayed") == "true"
        assert retry.json()["transId"] == payment["transId"]
        assert retry.json()["failureCode"] == "PROVIDER_ERROR"
    charge = admin.charge(made[0][2]["transId"])
    assert charge["status"] == "FAILED"


def test_a_customer_code_pays_only_once(pos: Pos) -> None:
    code = sandbox_code(pos.http, "01")
    first = pos.pay(code)
    assert first["status"] == "COMPLETED"
    second = pos.pay(code)  # another transKey, same code
    assert second["transId"] != first["transId"]
    assert second["status"] == "FAILED", second
    assert second["failureCode"] == "CODE_ALREADY_USED"
    assert pos.paycheck(first["transId"]).json()["status"] == "COMPLETED"


def test_status_finds_a_payment_by_transkey(pos: Pos) -> None:
    trans_key = new_key()
    payment = pos.pay(sandbox_code(pos.http, "21"), 480, trans_key)
    found = pos.status(trans_key)
    assert found.status_code == 200
    assert found.json()["transId"] == payment["transId"]
    assert found.json()["transKey"] == trans_key
    assert found.json()["amount"] == 480
    missing = assert_error(pos.status(new_key()), 404, "PAYMENT_NOT_FOUND", "transKey")
    # "Not found" may mean "not arrived yet": the answer says what is safe to do next.
    assert "send that REQUEST again with the same transKey" in missing["message"]
    assert_error(pos.paycheck("1000000000"), 404, "PAYMENT_NOT_FOUND", "transId")


def test_identify_every_service_and_refuse_a_product_barcode(pos: Pos) -> None:
    for service_id, name in SERVICE_NAMES.items():
        code = sandbox_code(pos.http, service_id)
        answer = pos.identify(code)
        assert answer.status_code == 200, (service_id, answer.text)
        assert answer.json()["serviceId"] == service_id
        assert answer.json()["serviceName"] == name
        assert answer.json()["serviceNameEn"]
    for barcode in (PRODUCT_BARCODE, "036000291452"):  # EAN-13 and UPC-A
        assert_error(pos.identify(barcode), 422, "NOT_A_PAYMENT_CODE", "code")
    # Identifying reads the code without using it: it still pays afterwards.
    code = sandbox_code(pos.http, "22")
    assert pos.identify(code).json()["serviceId"] == "22"
    assert pos.pay(code)["status"] == "COMPLETED"


def test_money_is_integer_yen_end_to_end(pos: Pos, admin: CliBatch, http: httpx.Client) -> None:
    payment = pos.pay(sandbox_code(http, "01"), 1234)
    assert payment["amount"] == 1234
    assert isinstance(payment["amount"], int)
    checked = pos.paycheck(payment["transId"])
    assert '"amount":1234,' in checked.text.replace(" ", "")
    refunded = pos.refund(payment["transId"], amount=234)
    assert refunded.status_code == 200, refunded.text
    assert refunded.json()["refundedAmount"] == 234
    assert refunded.json()["refundableAmount"] == 1000
    assert refunded.json()["refunds"][0]["amount"] == 234
    charge = admin.charge(payment["transId"])
    assert charge["amount"] == 1234  # not 123400: no ×100 anywhere
    assert charge["refundedAmount"] == 234
    # The smallest and the largest amounts are accepted as they are.
    for amount in (1, 9_999_999):
        paid = pos.pay(sandbox_code(http, "21"), amount)
        assert (paid["status"], paid["amount"]) == ("COMPLETED", amount)


def test_the_customer_can_approve_or_decline_over_http(pos: Pos) -> None:
    approve_code, decline_code = pos.http.post(
        "/sandbox/codes", json={"serviceId": "21", "outcome": "password", "count": 2}
    ).json()["codes"]
    approved = pos.pay(approve_code, amount=800)
    declined = pos.pay(decline_code, amount=900)
    answer = pos.http.post(f"/sandbox/charges/{approved['transId']}/approve")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"transId": approved["transId"], "sandboxStatus": "SUCCEEDED"}
    pos.http.post(f"/sandbox/charges/{declined['transId']}/decline")
    assert pos.wait_final(approved["transId"])["status"] == "COMPLETED"
    assert pos.wait_final(declined["transId"])["failureCode"] == "CUSTOMER_DECLINED"
    wrong = pos.http.post(f"/sandbox/charges/{approved['transId']}/maybe")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (400, "INVALID_FIELD")
    missing = pos.http.post("/sandbox/charges/9999999999/approve")
    assert missing.status_code == 404
