"""The sandbox wallet simulator, the customer's side, in a real browser.

QR flow: GET-QR-CODE through the API, open its qrData, approve (or enter the wallet password, or
decline), and PAYCHECK reports the outcome. Customer-code flow: the phone shows a one-time code as
a barcode and a QR code — both read back with zxing-cpp, as a scanner would — and once a register
charges it the phone shows the result, or asks for the password.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import pytest
import zxingcpp
from PIL import Image
from playwright.sync_api import Page, expect

from .support import Register, Shop, new_key

pytestmark = pytest.mark.e2e


def _read(page: Page, selector: str) -> list[tuple[object, str]]:
    """Decode the barcodes in an element's pixels, as a POS scanner would."""
    element = page.locator(selector)
    # An <img> may still be decoding when the page is otherwise ready; a scanner sees it drawn.
    element.evaluate(
        "el => el.tagName !== 'IMG' || (el.complete && el.naturalWidth > 0) ? null :"
        " new Promise(ok => el.addEventListener('load', ok, {once: true}))"
    )
    found: list[tuple[object, str]] = []
    # A scanner keeps looking for a moment: a frame caught mid-paint on a busy machine is
    # looked at again.
    for _ in range(5):
        shot = Image.open(io.BytesIO(element.screenshot())).convert("L")
        for scale in (1, 2, 3):
            # As a scanner held nearer: a few sizes, each drawn with sharp (nearest) edges.
            image = shot
            if scale > 1:
                image = shot.resize((shot.width * scale, shot.height * scale), Image.NEAREST)
            found = [(code.format, code.text) for code in zxingcpp.read_barcodes(image)]
            if found:
                return found
        page.wait_for_timeout(300)
    return found


def _drawn_at_own_size(page: Page, selector: str) -> bool:
    """Whether an image is laid out at its intrinsic size (so no module is resampled)."""
    return bool(
        page.locator(selector).evaluate(
            "el => el.complete && el.naturalWidth > 0 && el.width === el.naturalWidth"
            " && el.height === el.naturalHeight"
        )
    )


def test_qr_payment_approved_on_the_wallet_page(
    page: Page, register: Register, shop: Shop, screenshot: Callable[[Page, str], None]
) -> None:
    payment = register.qr(1200)
    assert (payment["status"], payment["pendingReason"]) == ("PENDING", "WAITING_FOR_CUSTOMER")
    page.goto(payment["qrData"])
    expect(page.locator("#sandbox-banner")).to_contain_text("SANDBOX")
    expect(page.locator("#merchant")).to_have_text(shop.name)
    expect(page.locator("#amount")).to_have_text("¥1,200")
    expect(page.locator("#service")).to_have_text("PayPay")
    # The countdown runs: 5 minutes at first, then less.
    expect(page.locator("#left")).to_have_text(re.compile(r"^[45]:\d\d$"))
    screenshot(page, "wallet-qr")
    page.click("#approve")
    expect(page.locator("#status")).to_have_text("お支払いが完了しました")
    final = register.wait_status(payment["transId"], "COMPLETED")
    assert (final["status"], final["amount"]) == ("COMPLETED", 1200)


def test_the_password_step_keeps_the_payment_waiting_until_confirmed(
    page: Page, register: Register, screenshot: Callable[[Page, str], None]
) -> None:
    payment = register.qr(2200, service_id="21")
    page.goto(payment["qrData"])
    page.click("#password")
    expect(page.locator("#wallet-password")).to_be_visible()
    screenshot(page, "wallet-password")
    waiting = register.paycheck(payment["transId"])
    assert (waiting["status"], waiting["pendingReason"]) == ("PENDING", "WAITING_FOR_CUSTOMER")
    page.click("#confirm")  # no password typed
    expect(page.locator("#sim-error")).to_be_visible()
    assert register.paycheck(payment["transId"])["status"] == "PENDING"
    page.fill("#wallet-password", "1234")
    page.click("#confirm")
    expect(page.locator("#status")).to_have_text("お支払いが完了しました")
    assert register.wait_status(payment["transId"], "COMPLETED")["status"] == "COMPLETED"


def test_the_customer_declines_on_the_wallet_page(page: Page, register: Register) -> None:
    payment = register.qr(900, service_id="20")
    page.goto(payment["qrData"] + "?lang=en")
    expect(page.locator("#decline")).to_have_text("Decline")
    page.click("#decline")
    expect(page.locator("#status")).to_have_text("Payment declined")
    final = register.wait_status(payment["transId"], "FAILED")
    assert (final["status"], final["failureCode"]) == ("FAILED", "CUSTOMER_DECLINED")


def test_the_phone_shows_a_code_a_register_can_scan(
    page: Page, register: Register, shop: Shop, screenshot: Callable[[Page, str], None]
) -> None:
    page.goto("/sandbox/phone")
    page.select_option("#phone-service", "01")
    page.check("input[name=outcome][value=success]")
    screenshot(page, "phone-pick")
    page.click("#show-code")
    code = page.locator("#code").inner_text()
    assert code.isdigit() and len(code) == 24
    expect(page.locator("#cli-hint")).to_have_text(f"kessai-pos pay {code}")
    # Drawn at their own size, every module a whole number of pixels: a code scaled to a
    # fractional size rounds its bar edges unevenly, and about one code in fifteen stops decoding.
    for selector in ("#barcode", "#qr"):
        assert _drawn_at_own_size(page, selector), selector
    assert _read(page, "#barcode") == [(zxingcpp.BarcodeFormat.Code128, code)]
    assert _read(page, "#qr") == [(zxingcpp.BarcodeFormat.QRCode, code)]
    screenshot(page, "phone-code")

    paid = register.request(new_key("PHONE"), 700, code)
    assert paid["status"] == "COMPLETED"
    # The phone notices that its code was used and shows the result.
    expect(page.locator("#status")).to_have_text("お支払いが完了しました")
    expect(page.locator("#amount")).to_have_text("¥700")
    expect(page.locator("#merchant")).to_have_text(shop.name)
    screenshot(page, "phone-paid")


def test_the_phone_asks_for_the_password_of_a_waiting_payment(
    page: Page, register: Register
) -> None:
    page.goto("/sandbox/phone")
    page.select_option("#phone-service", "21")
    page.check("input[name=outcome][value=password]")
    page.click("#show-code")
    first = page.locator("#code").inner_text()
    page.click("#refresh")  # a new code replaces the old one, as a real wallet's does
    code = page.locator("#code").inner_text()
    assert code != first

    payment = register.request(new_key("PHONE"), 1800, code)
    assert (payment["status"], payment["pendingReason"]) == ("PENDING", "WAITING_FOR_CUSTOMER")
    expect(page.locator("#phone-decide")).to_be_visible()
    expect(page.locator("#amount")).to_have_text("¥1,800")
    page.fill("#wallet-password", "0000")
    page.click("#approve")
    expect(page.locator("#status")).to_have_text("お支払いが完了しました")
    assert register.wait_status(payment["transId"], "COMPLETED")["status"] == "COMPLETED"
