"""Flow 2 of the guide: LOGIN → GET-QR-CODE → the customer scans and decides → PAYCHECK.

The customer's side is the sandbox wallet page behind qrData, driven over HTTP as a phone's
browser would (GET shows it, POST decision=approve|decline|password records the choice).
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
import zxingcpp
from PIL import Image

from .support import CliBatch, Pos, assert_error, new_key, sandbox_code

pytestmark = pytest.mark.e2e

QR_SERVICES = ("01", "21", "20", "22", "05")


def _qr(pos: Pos, service_id: str = "01", amount: int = 1500, ttl: int | None = None) -> Any:
    response = pos.qr(new_key(), amount, service_id, ttl)
    assert response.status_code == 200, response.text
    payment = response.json()
    assert payment["kind"] == "MERCHANT_QR"
    assert (payment["status"], payment["pendingReason"]) == ("PENDING", "WAITING_FOR_CUSTOMER")
    assert payment["qrData"]
    assert payment["qrExpiresAt"]
    return payment


def _decide(qr_data: str, decision: str, **extra: str) -> httpx.Response:
    """The customer presses a button on the sandbox wallet page."""
    response = httpx.post(qr_data, data={"decision": decision, **extra}, timeout=10)
    assert response.status_code == 303, response.text
    return response


def _page(qr_data: str, query: str = "") -> str:
    response = httpx.get(qr_data + query, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def _wallet_state(page: str) -> str:
    """What the wallet page offers: OPEN (buttons to decide), or the final state it shows."""
    if 'value="approve"' in page:
        return "OPEN"
    shown = re.search(r'class="result result-([a-z]+)"', page)
    assert shown is not None, page
    return shown.group(1).upper()


def test_customer_approves_on_the_wallet_page(pos: Pos) -> None:
    made = [_qr(pos, service_id, 1500) for service_id in QR_SERVICES]
    for payment in made:
        page = _page(payment["qrData"])
        assert "¥1,500" in page
        assert payment["transId"] in page
        assert _wallet_state(page) == "OPEN"
        _decide(payment["qrData"], "approve")
        assert _wallet_state(_page(payment["qrData"])) == "SUCCEEDED"
    for payment in made:
        final = pos.wait_final(payment["transId"])
        assert final["status"] == "COMPLETED", final
        assert final["refundableAmount"] == 1500
        assert final["qrData"] == payment["qrData"]
    # STATUS finds it by transKey, and a paid QR payment refunds like any other.
    assert pos.status(made[0]["transKey"]).json()["status"] == "COMPLETED"
    refunded = pos.refund(made[0]["transId"])
    assert refunded.status_code == 200, refunded.text
    assert (refunded.json()["status"], refunded.json()["refundedAmount"]) == ("REFUNDED", 1500)


def test_customer_confirms_with_the_wallet_password(pos: Pos) -> None:
    payment = _qr(pos, "21", 2200)
    redirect = _decide(payment["qrData"], "password")
    assert redirect.headers["location"].endswith("?step=password")
    page = _page(payment["qrData"], "?step=password")
    assert 'type="password"' in page
    # Asking for the password step decides nothing yet.
    assert pos.paycheck(payment["transId"]).json()["status"] == "PENDING"
    _decide(payment["qrData"], "approve", step="password", password="1234")
    final = pos.wait_final(payment["transId"])
    assert final["status"] == "COMPLETED", final


def test_customer_declines_on_the_wallet_page(pos: Pos, admin: CliBatch) -> None:
    payment = _qr(pos, "20", 900)
    _decide(payment["qrData"], "decline")
    assert _wallet_state(_page(payment["qrData"])) == "FAILED"
    final = pos.wait_final(payment["transId"])
    assert final["status"] == "FAILED", final
    assert final["failureCode"] == "CUSTOMER_DECLINED"
    assert admin.charge(payment["transId"])["status"] == "FAILED"
    # A later approval on the page does not turn it around.
    _decide(payment["qrData"], "approve")
    time.sleep(0.1)
    assert pos.paycheck(payment["transId"]).json()["status"] == "FAILED"


def test_an_expired_qr_code_can_no_longer_be_paid(pos: Pos, admin: CliBatch) -> None:
    checked_first = _qr(pos, "01", 700, ttl=1)
    approved_first = _qr(pos, "21", 700, ttl=1)
    paid_in_time = _qr(pos, "22", 700, ttl=2)
    _decide(paid_in_time["qrData"], "approve")
    # The wallet took it before the deadline.
    assert _wallet_state(_page(paid_in_time["qrData"])) == "SUCCEEDED"
    time.sleep(2.3)
    # Paid before the deadline and checked after it: paid, not expired.
    assert pos.wait_final(paid_in_time["transId"])["status"] == "COMPLETED"
    # One the terminal checks before the customer tries to pay...
    expired = pos.wait_final(checked_first["transId"])
    assert expired["status"] == "EXPIRED", expired
    assert expired["failureCode"] == "QR_EXPIRED"
    assert _wallet_state(_page(checked_first["qrData"])) == "EXPIRED"
    _decide(checked_first["qrData"], "approve")
    # ...and one the customer tries to pay before the terminal checks.
    _decide(approved_first["qrData"], "approve")
    time.sleep(0.1)
    for payment in (checked_first, approved_first):
        final = pos.wait_final(payment["transId"])
        assert final["status"] == "EXPIRED", final
        assert final["refundableAmount"] == 0
    books = {row["ref"]: row["status"] for row in admin.ledger()}
    assert books[checked_first["transId"]] == "EXPIRED"
    assert books[approved_first["transId"]] == "EXPIRED"
    assert_error(pos.refund(checked_first["transId"]), 409, "PAYMENT_NOT_REFUNDABLE", "transId")
    assert_error(pos.voucher(checked_first["transId"], "V1"), 409, "PAYMENT_NOT_EDITABLE")


def test_png_and_svg_images_hold_exactly_qr_data(pos: Pos) -> None:
    payment = _qr(pos, "01", 1000)
    links = payment["qrImage"]
    assert links == {
        "png": f"/v1/payments/{payment['transId']}/qr.png",
        "svg": f"/v1/payments/{payment['transId']}/qr.svg",
    }
    png = pos.http.get(links["png"], headers=pos.auth())
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png.content)))
    assert [(barcode.format, barcode.text) for barcode in found] == [
        (zxingcpp.BarcodeFormat.QRCode, payment["qrData"])
    ]
    svg = pos.http.get(links["svg"], headers=pos.auth())
    assert svg.status_code == 200
    assert svg.headers["content-type"].startswith("image/svg+xml")
    root = ElementTree.fromstring(svg.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    # The images are the terminal's: no session, no image.
    assert_error(pos.http.get(links["png"]), 401, "SESSION_REQUIRED")
    # A customer-code payment has no QR image.
    paid = pos.pay(sandbox_code(pos.http, "01"))
    no_image = pos.http.get(f"/v1/payments/{paid['transId']}/qr.png", headers=pos.auth())
    assert_error(no_image, 404, "PAYMENT_NOT_FOUND", "transId")


def test_get_qr_code_is_idempotent_by_transkey(pos: Pos) -> None:
    trans_key = new_key()
    first = pos.qr(trans_key, 1200, "22")
    assert first.status_code == 200
    again = pos.qr(trans_key, 1200, "22")
    assert again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["transId"] == first.json()["transId"]
    assert again.json()["qrData"] == first.json()["qrData"]
    assert_error(pos.qr(trans_key, 1300, "22"), 409, "IDEMPOTENCY_CONFLICT", "transKey")
    assert_error(pos.qr(trans_key, 1200, "01"), 409, "IDEMPOTENCY_CONFLICT", "transKey")


def test_racing_get_qr_code_retries_all_carry_the_code(pos: Pos) -> None:
    body = {"transKey": new_key(), "amount": 990, "serviceId": "21"}

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=str(pos.http.base_url), timeout=60) as client:
            sends = [client.post("/v1/qr-codes", json=body, headers=pos.auth()) for _ in range(20)]
            return list(await asyncio.gather(*sends))

    answers = asyncio.run(race())
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    assert len({a.json()["transId"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") != "true" for a in answers) == 1
    # Every answer is one the terminal can show: the same code, with its images.
    assert len({a.json()["qrData"] for a in answers}) == 1
    assert all(a.json()["qrData"] and a.json()["qrImage"] for a in answers)


def test_qr_lifetime_bounds(pos: Pos) -> None:
    for ttl in (0, -5, 1801):
        trans_key = new_key()
        response = pos.qr(trans_key, 1000, "01", ttl)
        assert_error(response, 400, "INVALID_FIELD", "ttlSeconds")
        assert_error(pos.status(trans_key), 404, "PAYMENT_NOT_FOUND")
