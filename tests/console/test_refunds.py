"""Refunds from the console: find a payment, refund part of it, and who may do so.

A payment is made through the terminal API; the owner finds it in the browser by its transKey,
refunds part of it with a confirmation step, and the terminal API then reports it
PARTIALLY_REFUNDED. Staff see no refund form, and the server refuses their forged posts too.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from .support import (
    OWNER_PASSWORD,
    STAFF_PASSWORD,
    Register,
    Shop,
    csrf_of,
    login,
    new_key,
)

pytestmark = pytest.mark.e2e


def test_owner_finds_a_payment_by_trans_key_and_refunds_part_of_it(
    page: Page, register: Register, shop: Shop, screenshot: Callable[[Page, str], None]
) -> None:
    trans_key = new_key("SALE")
    paid = register.pay(1500, trans_key=trans_key)
    assert paid["status"] == "COMPLETED"
    for amount, service in ((880, "21"), (3200, "05"), (450, "01")):
        register.pay(amount, service_id=service)
    register.pay(990, outcome="declined")

    login(page, shop.owner, OWNER_PASSWORD)
    expect(page.locator("#merchant-name")).to_have_text(shop.name)
    screenshot(page, "payments")

    page.fill("#search", trans_key)
    page.click("#apply-filters")
    rows = page.locator("#payments tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-trans-id", paid["transId"])
    expect(rows.first).to_contain_text("¥1,500")

    rows.first.locator("a.trans-link").click()
    expect(page.locator("#trans-id")).to_have_text(paid["transId"])
    expect(page.locator("#amount")).to_have_text("¥1,500")
    expect(page.locator("#status")).to_contain_text("完了")
    screenshot(page, "payment-detail")

    page.check("#refund-partial")
    page.fill("#refund-amount", "500")
    page.click("#refund-next")
    expect(page.locator("#confirm-amount")).to_have_text("¥500")
    refund_key = page.locator("input[name=refund_key]").get_attribute("value")
    assert refund_key
    screenshot(page, "refund-confirm")
    page.click("#refund-confirm-button")

    expect(page.locator("#notice")).to_contain_text("¥500")
    expect(page.locator("#status")).to_contain_text("一部返金")
    expect(page.locator("#refunded-amount")).to_have_text("¥500")
    expect(page.locator("#refundable-amount")).to_have_text("¥1,000")
    requested = page.locator("#timeline li[data-action='refund.requested']")
    expect(requested).to_contain_text(shop.owner)
    expect(page.locator("#timeline li[data-action='refund.succeeded']")).to_contain_text("¥500")
    expect(page.locator("#refunds tbody tr")).to_contain_text(shop.owner)
    screenshot(page, "payment-refunded")

    after = register.paycheck(paid["transId"])
    assert (after["status"], after["refundedAmount"]) == ("PARTIALLY_REFUNDED", 500)
    assert [r["amount"] for r in after["refunds"]] == [500]

    # Sending the confirmed form again (a double click, a retry) refunds nothing more.
    again = page.request.post(
        f"/console/payments/{paid['transId']}/refund",
        form={"_csrf": csrf_of(page), "amount": "500", "refund_key": refund_key},
        max_redirects=0,
    )
    assert again.status == 303
    replayed = register.paycheck(paid["transId"])
    assert (replayed["refundedAmount"], len(replayed["refunds"])) == (500, 1)


def test_full_refund_from_the_console(page: Page, register: Register, shop: Shop) -> None:
    paid = register.pay(2400)
    login(page, shop.owner, OWNER_PASSWORD)
    page.goto(f"/console/payments/{paid['transId']}")
    expect(page.locator("#refund-full")).to_be_checked()
    page.click("#refund-next")
    expect(page.locator("#confirm-amount")).to_have_text("¥2,400")
    page.click("#refund-confirm-button")
    expect(page.locator("#status")).to_contain_text("返金済み")
    expect(page.locator("#not-refundable")).to_be_visible()
    assert register.paycheck(paid["transId"])["status"] == "REFUNDED"


def test_a_refund_that_no_longer_fits_shows_the_gateway_error(
    page: Page, register: Register, shop: Shop
) -> None:
    paid = register.pay(1000)
    login(page, shop.owner, OWNER_PASSWORD)
    page.goto(f"/console/payments/{paid['transId']}")
    page.click("#refund-next")
    expect(page.locator("#confirm-amount")).to_have_text("¥1,000")
    # Meanwhile the register refunds part of it with its passCode.
    assert register.refund(paid["transId"], 300).status_code == 200
    page.click("#refund-confirm-button")
    expect(page.locator("#refund-error")).to_contain_text("返金可能額を超えています")
    after = register.paycheck(paid["transId"])
    assert (after["status"], after["refundedAmount"]) == ("PARTIALLY_REFUNDED", 300)
    # An amount over what remains is refused at the first step too, in the page.
    page.check("#refund-partial")
    page.evaluate("document.getElementById('refund-amount').removeAttribute('max')")
    page.fill("#refund-amount", "800")
    page.click("#refund-next")
    expect(page.locator("#refund-error")).to_contain_text("¥700")


def test_staff_can_look_but_the_server_refuses_their_refunds(
    page: Page, register: Register, shop: Shop
) -> None:
    paid = register.pay(1200)
    login(page, shop.staff, STAFF_PASSWORD)
    expect(page.locator(".role")).to_have_text("スタッフ")
    page.goto(f"/console/payments/{paid['transId']}")
    expect(page.locator("#amount")).to_have_text("¥1,200")
    expect(page.locator("#refund-form")).to_have_count(0)
    expect(page.locator("#voucher-form")).to_have_count(0)
    expect(page.locator("#owner-only")).to_be_visible()

    token = csrf_of(page)
    transfer = f"/console/payments/{paid['transId']}"
    forged = {
        f"{transfer}/refund/confirm": {"_csrf": token, "mode": "full"},
        f"{transfer}/refund": {"_csrf": token, "amount": "1200", "refund_key": "CFORGED01"},
        f"{transfer}/voucher": {"_csrf": token, "voucher_no": "FORGED"},
        f"/console/terminals/{shop.mid}/disable": {"_csrf": token},
        f"/console/terminals/{shop.mid}/reset-password": {"_csrf": token},
    }
    for path, form in forged.items():
        answer = page.request.post(path, form=form, max_redirects=0)
        assert answer.status == 403, (path, answer.status)
        assert "オーナーのみ" in answer.text()

    page.goto("/console/terminals")
    expect(page.locator(f"#terminals tr[data-mid='{shop.mid}']")).to_be_visible()
    expect(page.locator("#terminals button")).to_have_count(0)

    after = register.paycheck(paid["transId"])
    assert (after["status"], after["refundedAmount"], after["voucherNo"]) == (
        "COMPLETED",
        0,
        None,
    )
    # The terminal was neither disabled nor given a new password: its session still works.
    assert register.paycheck(paid["transId"])["transId"] == paid["transId"]


def test_forms_without_the_csrf_token_are_refused(
    page: Page, register: Register, shop: Shop
) -> None:
    paid = register.pay(700)
    login(page, shop.owner, OWNER_PASSWORD)
    refund = f"/console/payments/{paid['transId']}/refund"
    body = {"amount": "700", "refund_key": "CNOTOKEN01"}
    missing = page.request.post(refund, form=body, max_redirects=0)
    assert missing.status == 403
    assert "フォーム" in missing.text()
    wrong = page.request.post(refund, form={**body, "_csrf": "not-the-token"}, max_redirects=0)
    assert wrong.status == 403
    # A JSON body (what a cross-site fetch could send) is no form and carries no token either.
    as_json = page.request.post(refund, data=body, max_redirects=0)
    assert as_json.status == 403
    logout = page.request.post("/console/logout", form={}, max_redirects=0)
    assert logout.status == 403
    assert register.paycheck(paid["transId"])["refundedAmount"] == 0
    # Still logged in: the refused logout changed nothing.
    page.goto("/console/payments")
    expect(page.locator("#user-email")).to_have_text(shop.owner)


# Amounts a loose reading turns into another number: cut to 12 characters (¥1), or read by int()
# with its "_" separators (¥10) or full-width digits (¥10).
MISREAD_AMOUNTS = ["000000000001999", "1_0", "１０"]
AMOUNT_INVALID = "返金額は1円から"


@pytest.mark.parametrize("typed", MISREAD_AMOUNTS)
def test_a_refund_amount_is_read_whole_and_in_ascii_digits_or_refused(
    page: Page, register: Register, shop: Shop, typed: str
) -> None:
    paid = register.pay(2000)
    login(page, shop.owner, OWNER_PASSWORD)
    page.goto(f"/console/payments/{paid['transId']}")
    base = f"/console/payments/{paid['transId']}"
    confirm = page.request.post(
        f"{base}/refund/confirm",
        form={"_csrf": csrf_of(page), "mode": "partial", "amount": typed},
        max_redirects=0,
    )
    assert confirm.status == 400, confirm.status
    assert AMOUNT_INVALID in confirm.text()
    assert 'id="refund-confirm"' not in confirm.text()
    # The final step, posted directly, refuses it the same way, and nothing is refunded.
    final = page.request.post(
        f"{base}/refund",
        form={"_csrf": csrf_of(page), "amount": typed, "refund_key": new_key("C")},
        max_redirects=0,
    )
    assert final.status == 400, final.status
    assert AMOUNT_INVALID in final.text()
    after = register.paycheck(paid["transId"])
    assert (after["status"], after["refundedAmount"], after["refunds"]) == ("COMPLETED", 0, [])
    # Grouping commas and a leading ¥ are still read, as typed on a receipt.
    grouped = page.request.post(
        f"{base}/refund/confirm",
        form={"_csrf": csrf_of(page), "mode": "partial", "amount": "¥1,500"},
        max_redirects=0,
    )
    assert grouped.status == 200
    assert 'id="confirm-amount">¥1,500<' in grouped.text()


def test_an_over_long_refund_key_or_voucher_number_is_refused_not_cut_short(
    page: Page, register: Register, shop: Shop
) -> None:
    paid = register.pay(900)
    login(page, shop.owner, OWNER_PASSWORD)
    page.goto(f"/console/payments/{paid['transId']}")
    answer = page.request.post(
        f"/console/payments/{paid['transId']}/refund",
        form={"_csrf": csrf_of(page), "amount": "900", "refund_key": "C" + "1" * 60},
        max_redirects=0,
    )
    assert answer.status == 400, answer.status
    assert "refundKey" in answer.text()
    after = register.paycheck(paid["transId"])
    assert (after["status"], after["refundedAmount"], after["refunds"]) == ("COMPLETED", 0, [])
    voucher = page.request.post(
        f"/console/payments/{paid['transId']}/voucher",
        form={"_csrf": csrf_of(page), "voucher_no": "V" * 60},
        max_redirects=0,
    )
    assert voucher.status == 400, voucher.status
    assert 'id="voucher-error"' in voucher.text()
    assert register.status(paid["transKey"])["voucherNo"] is None
