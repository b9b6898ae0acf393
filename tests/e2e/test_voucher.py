"""Flow 4 of the guide: LOGIN → VOUCHERNO → LOGOUT (the shop's slip number on a payment)."""

from __future__ import annotations

from typing import Any

import pytest

from .support import Pos, assert_error, sandbox_code, unchanged

pytestmark = pytest.mark.e2e


def test_voucher_number_is_set_and_replaced(pos: Pos) -> None:
    payment = pos.pay(sandbox_code(pos.http, "01"), 1000)
    assert payment["voucherNo"] is None
    first = pos.voucher(payment["transId"], "SLIP-0001")
    assert first.status_code == 200, first.text
    assert first.json()["voucherNo"] == "SLIP-0001"
    assert first.json()["status"] == "COMPLETED"
    replaced = pos.voucher(payment["transId"], "SLIP-0002")
    assert replaced.status_code == 200
    assert replaced.json()["voucherNo"] == "SLIP-0002"
    assert pos.paycheck(payment["transId"]).json()["voucherNo"] == "SLIP-0002"
    assert pos.status(payment["transKey"]).json()["voucherNo"] == "SLIP-0002"
    # Setting the same number again is harmless.
    same = pos.voucher(payment["transId"], "SLIP-0002")
    assert same.status_code == 200
    assert same.json()["voucherNo"] == "SLIP-0002"
    # A refunded payment keeps taking voucher numbers: money moved under it.
    assert pos.refund(payment["transId"]).json()["status"] == "REFUNDED"
    assert pos.voucher(payment["transId"], "SLIP-0003").json()["voucherNo"] == "SLIP-0003"


def test_invalid_voucher_numbers_are_refused_and_change_nothing(pos: Pos) -> None:
    payment = pos.pay(sandbox_code(pos.http, "21"), 1000)
    assert pos.voucher(payment["transId"], "KEEP-1").status_code == 200
    before = pos.paycheck(payment["transId"]).json()
    bad: list[Any] = ["", "X" * 21, "SLIP 1", "伝票1", "A_B", "A/B", 12345, None]
    for value in bad:
        assert_error(pos.voucher(payment["transId"], value), 400, "INVALID_FIELD", "voucherNo")
    missing = pos.http.put(
        f"/v1/payments/{payment['transId']}/voucher", json={}, headers=pos.auth()
    )
    assert_error(missing, 400, "INVALID_FIELD", "voucherNo")
    unchanged(before, pos.paycheck(payment["transId"]).json())
    # The longest allowed value is accepted.
    assert pos.voucher(payment["transId"], "V" * 20).json()["voucherNo"] == "V" * 20


def test_a_pending_payment_takes_a_voucher_number(pos: Pos) -> None:
    pending = pos.pay(sandbox_code(pos.http, "05", "password"))
    assert pending["status"] == "PENDING"
    response = pos.voucher(pending["transId"], "SLIP-7")
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["voucherNo"]) == ("PENDING", "SLIP-7")


def test_a_failed_payment_takes_no_voucher_number(pos: Pos) -> None:
    failed = pos.pay(sandbox_code(pos.http, "20", "declined"))
    assert failed["status"] == "FAILED"
    response = pos.voucher(failed["transId"], "SLIP-9")
    assert_error(response, 409, "PAYMENT_NOT_EDITABLE", "transId")
    assert pos.paycheck(failed["transId"]).json()["voucherNo"] is None
    assert_error(pos.voucher("1000000000", "SLIP-9"), 404, "PAYMENT_NOT_FOUND", "transId")
