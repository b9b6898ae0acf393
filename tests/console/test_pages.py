"""The payment list (filters, pages, CSV), the voucher number, the language, and escaping."""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from playwright.sync_api import Page, expect

from .support import (
    OWNER_PASSWORD,
    Provisioner,
    Register,
    Server,
    Shop,
    login,
    new_key,
)

pytestmark = pytest.mark.e2e
JST = timezone(timedelta(hours=9))


def _follow(page: Page, selector: str) -> None:
    """Click what loads another page, and wait for it: rows read sooner are the old page's."""
    with page.expect_navigation():
        page.click(selector)


def _rows(page: Page) -> list[str]:
    return [
        str(row.get_attribute("data-trans-id")) for row in page.locator("#payments tbody tr").all()
    ]


def test_filters_narrow_the_list_and_pages_go_back_in_time(
    page: Page, own_register: Register, shop: Shop
) -> None:
    reg = own_register
    small = reg.pay(300)
    wechat = reg.pay(2500, service_id="21")
    declined = reg.pay(4000, outcome="declined")
    assert declined["status"] == "FAILED"
    more = [reg.pay(1000 + i) for i in range(7)]
    login(page, shop.owner, OWNER_PASSWORD)
    page.select_option("#filter-terminal", reg.terminal.mid)
    _follow(page, "#apply-filters")
    # Ten payments on this terminal, eight to a page, newest first.
    expect(page.locator("#result-count")).to_have_text("10件")
    assert _rows(page) == [p["transId"] for p in reversed(more)] + [declined["transId"]]
    _follow(page, "a[rel=next]")
    assert _rows(page) == [wechat["transId"], small["transId"]]
    expect(page.locator(".pager")).to_contain_text("10件中 9〜10件")
    _follow(page, "a[rel=prev]")
    expect(page.locator("#payments tbody tr")).to_have_count(8)

    page.select_option("#filter-status", "FAILED")
    _follow(page, "#apply-filters")
    assert _rows(page) == [declined["transId"]]
    page.select_option("#filter-status", "")
    page.select_option("#filter-service", "21")
    _follow(page, "#apply-filters")
    assert _rows(page) == [wechat["transId"]]
    page.select_option("#filter-service", "")
    page.fill("#amount-min", "2000")
    page.fill("#amount-max", "3000")
    _follow(page, "#apply-filters")
    assert _rows(page) == [wechat["transId"]]

    today = datetime.now(JST).date()
    page.fill("#amount-min", "")
    page.fill("#amount-max", "")
    page.fill("#date-from", (today - timedelta(days=3)).isoformat())
    page.fill("#date-to", (today - timedelta(days=1)).isoformat())
    _follow(page, "#apply-filters")
    expect(page.locator("#no-payments")).to_be_visible()
    page.fill("#date-to", today.isoformat())
    _follow(page, "#apply-filters")
    expect(page.locator("#result-count")).to_have_text("10件")
    # A transId, or the start of a transKey, is found too.
    page.goto(f"/console/payments?q={small['transId']}")
    assert _rows(page) == [small["transId"]]
    page.goto(f"/console/payments?q={small['transKey'][:12]}")
    assert small["transId"] in _rows(page)


def test_the_csv_download_holds_the_filtered_payments_for_excel(
    page: Page, own_register: Register, shop: Shop
) -> None:
    reg = own_register
    kept = reg.pay(1234, trans_key=new_key("CSV"))
    other = reg.pay(99)
    login(page, shop.owner, OWNER_PASSWORD)
    page.goto(f"/console/payments?terminal={reg.terminal.mid}&min=1000")
    with page.expect_download() as waiting:
        page.click("#csv")
    download = waiting.value
    assert download.suggested_filename.endswith(".csv")
    body = download.path().read_bytes()
    assert body.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: Excel in Japan reads it right
    table = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert table[0][:3] == ["日時（日本時間）", "決済番号", "transKey"]
    assert len(table) == 2
    row = dict(zip(table[0], table[1], strict=True))
    assert row["決済番号"] == kept["transId"]
    assert row["transKey"] == kept["transKey"]
    assert row["金額"] == "1234"
    assert row["状態"] == "完了"
    assert row["サービス"] == "PayPay"
    assert row["端末ID"] == reg.terminal.mid
    created = datetime.fromisoformat(kept["createdAt"].replace("Z", "+00:00"))
    assert row["日時（日本時間）"] == created.astimezone(JST).strftime("%Y/%m/%d %H:%M:%S")
    assert other["transId"] not in body.decode("utf-8-sig")


def test_the_voucher_number_is_set_on_the_detail_page(
    page: Page, register: Register, shop: Shop
) -> None:
    paid = register.pay(640)
    login(page, shop.owner, OWNER_PASSWORD)
    page.goto(f"/console/payments/{paid['transId']}")
    voucher = f"SLIP-{new_key('')[:8]}"
    page.fill("#voucher-input", voucher)
    page.click("#voucher-save")
    expect(page.locator("#notice")).to_have_text("伝票番号を保存しました。")
    expect(page.locator("#voucher-no")).to_have_text(voucher)
    entry = page.locator("#timeline li[data-action='payment.voucher_set']")
    expect(entry).to_contain_text(f"— → {voucher}")
    expect(entry).to_contain_text(shop.owner)
    assert register.status(paid["transKey"])["voucherNo"] == voucher
    page.goto(f"/console/payments?q={voucher}")
    assert _rows(page) == [paid["transId"]]
    # A malformed number is refused by the server with the rule, even if the browser let it by.
    page.goto(f"/console/payments/{paid['transId']}")
    page.evaluate("document.getElementById('voucher-input').removeAttribute('pattern')")
    page.fill("#voucher-input", "no spaces!")
    page.click("#voucher-save")
    expect(page.locator("#voucher-error")).to_contain_text("20文字")
    assert register.status(paid["transKey"])["voucherNo"] == voucher


def test_switching_the_language_changes_the_page_and_is_remembered(
    page: Page,
    server: Server,
    register: Register,
    shop: Shop,
    provisioner: Provisioner,
    screenshot: Callable[[Page, str], None],
) -> None:
    paid = register.pay(5200)
    email = provisioner.user(shop.merchant_id, "owner")
    login(page, email, OWNER_PASSWORD)
    assert page.locator("html").get_attribute("lang") == "ja"
    expect(page.locator("nav.nav")).to_contain_text("決済一覧")
    page.click("#lang-switch button[value=en]")
    expect(page.locator("nav.nav")).to_contain_text("Payments")
    assert page.locator("html").get_attribute("lang") == "en"
    expect(page.locator("h1")).to_have_text("Payments")
    expect(page.locator("#apply-filters")).to_have_text("Apply")
    screenshot(page, "payments-en")
    # Remembered: another page, a reload, and a new login on another browser profile.
    page.goto(f"/console/payments/{paid['transId']}")
    expect(page.locator("#status")).to_contain_text("Completed")
    expect(page.locator("#amount")).to_have_text("¥5,200")
    page.reload()
    expect(page.locator("h2").first).to_have_text("Summary")
    browser = page.context.browser
    assert browser is not None
    other = browser.new_context(base_url=server.base_url)
    try:
        fresh = other.new_page()
        fresh.goto("/console/login")
        expect(fresh.locator("h1")).to_have_text("ログイン")  # Japanese by default
        login(fresh, email, OWNER_PASSWORD)
        expect(fresh.locator("h1")).to_have_text("Payments")
    finally:
        other.close()
    page.click("#lang-switch button[value=ja]")
    expect(page.locator("h2").first).to_have_text("概要")


EVIL_NAME = '<img src=x onerror="window.__xss=1"><b>悪意</b>'


@pytest.fixture(scope="module")
def other_shop(provisioner: Provisioner) -> Shop:
    """A second merchant, whose name is HTML."""
    return provisioner.shop(name=EVIL_NAME)


def test_html_in_a_merchant_name_or_voucher_number_is_shown_as_text(
    page: Page, server: Server, other_shop: Shop, http: httpx.Client
) -> None:
    name, evil = EVIL_NAME, other_shop
    reg = Register(http, evil.terminal).login()
    paid = reg.pay(100)
    qr = reg.qr(200)
    # The API refuses such a voucherNo, so an older or imported row is simulated in the database.
    voucher = "<script>window.__xss=2</script>"
    with sqlite3.connect(server.database_path) as db:
        db.execute(
            "UPDATE payments SET voucher_no = ? WHERE trans_id = ?", (voucher, paid["transId"])
        )
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    login(page, evil.owner, OWNER_PASSWORD)
    expect(page.locator("#merchant-name")).to_have_text(name)
    expect(page.locator("#merchant-name b")).to_have_count(0)
    expect(page.locator(f"tr[data-trans-id='{paid['transId']}'] .voucher")).to_have_text(voucher)
    page.goto(f"/console/payments/{paid['transId']}")
    expect(page.locator("#voucher-no")).to_have_text(voucher)
    page.goto('/console/payments?q="><b id=injected>x</b>')
    expect(page.locator("#injected")).to_have_count(0)
    expect(page.locator("#search")).to_have_value('"><b id=injected>x</b>')
    page.goto(qr["qrData"])
    expect(page.locator("#merchant")).to_have_text(name)
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
    # And the pages say so to the browser: no inline script may run even if one slipped in.
    answer = page.request.get("/console/payments")
    assert "script-src 'self'" in answer.headers["content-security-policy"]


def test_another_merchants_payment_is_absent(
    page: Page, register: Register, other_shop: Shop
) -> None:
    theirs = register.pay(3000)  # the shared shop's payment
    login(page, other_shop.owner, OWNER_PASSWORD)
    answer = page.request.get(f"/console/payments/{theirs['transId']}")
    assert answer.status == 404
    assert "見つかりません" in answer.text()
    assert page.request.get("/console/payments/12345").status == 404
    page.goto(f"/console/payments?q={theirs['transId']}")
    expect(page.locator("#no-payments")).to_be_visible()
    token = page.locator("#lang-switch input[name=_csrf]").get_attribute("value")
    forged = page.request.post(
        f"/console/payments/{theirs['transId']}/refund",
        form={"_csrf": str(token), "amount": "3000", "refund_key": "CCROSS01"},
        max_redirects=0,
    )
    assert forged.status == 404
    acting = page.request.post(
        f"/console/terminals/{register.terminal.mid}/disable",
        form={"_csrf": str(token)},
        max_redirects=0,
    )
    assert acting.status == 404
    after = register.paycheck(theirs["transId"])
    assert (after["status"], after["refundedAmount"]) == ("COMPLETED", 0)


# Days whose Japan-time bounds fall outside what a datetime can hold (0001-01-01 starts in year 0
# in UTC; 9999-12-31 ends in year 10000): read as invalid filters, like from=x.
CALENDAR_ENDS = ["to=9999-12-31", "from=0001-01-01"]


@pytest.mark.parametrize("query", CALENDAR_ENDS)
def test_a_date_at_the_end_of_the_calendar_is_an_invalid_filter(
    page: Page, register: Register, shop: Shop, query: str
) -> None:
    paid = register.pay(310)
    login(page, shop.owner, OWNER_PASSWORD)
    listing = page.request.get(f"/console/payments?{query}")
    assert listing.status == 200, listing.status
    assert 'id="filter-invalid"' in listing.text()
    # The CSV leaves the same bound out: every payment, this one too.
    export = page.request.get(f"/console/payments.csv?{query}")
    assert export.status == 200, export.status
    assert export.headers["content-type"].startswith("text/csv")
    body = export.body()
    assert body.startswith(b"\xef\xbb\xbf")
    assert paid["transId"] in body.decode("utf-8-sig")


def test_the_days_next_to_the_ends_of_the_calendar_still_filter(
    page: Page, register: Register, shop: Shop
) -> None:
    paid = register.pay(320)
    login(page, shop.owner, OWNER_PASSWORD)
    page.goto("/console/payments?from=0001-01-02&to=9999-12-30")
    expect(page.locator("#filter-invalid")).to_have_count(0)
    expect(page.locator("#date-from")).to_have_value("0001-01-02")
    expect(page.locator("#date-to")).to_have_value("9999-12-30")
    assert paid["transId"] in _rows(page)
    export = page.request.get("/console/payments.csv?from=0001-01-02&to=9999-12-30")
    assert export.status == 200
    assert paid["transId"] in export.body().decode("utf-8-sig")
