"""Terminals (state and actions) and daily totals, in the browser, checked against the API."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from playwright.sync_api import Dialog, Page, expect

from .support import OWNER_PASSWORD, Register, Server, Shop, login

pytestmark = pytest.mark.e2e
JST = timezone(timedelta(hours=9))


def _accept(dialog: Dialog) -> None:
    dialog.accept()


def _login_status(register: Register, password: str | None = None) -> httpx.Response:
    terminal = register.terminal
    return register.http.post(
        "/v1/login",
        json={
            "mid": terminal.mid,
            "key": register.key,
            "password": password or terminal.password,
            "os": terminal.os,
        },
    )


def test_terminals_show_their_state_and_owners_manage_them(
    page: Page,
    server: Server,
    own_register: Register,
    shop: Shop,
    screenshot: Callable[[Page, str], None],
) -> None:
    reg = own_register
    paid = reg.pay(500)
    # Five wrong passCodes lock refunds on the terminal.
    for _ in range(5):
        reg.http.post(
            f"/v1/payments/{paid['transId']}/refunds",
            json={"passCode": "0000" if reg.terminal.pass_code != "0000" else "1111"},
            headers=reg.auth,
        )
    assert reg.refund(paid["transId"], 100).status_code == 429
    page.on("dialog", _accept)
    login(page, shop.owner, OWNER_PASSWORD)
    page.goto("/console/terminals")
    row = page.locator(f"tr[data-mid='{reg.terminal.mid}']")
    expect(row.locator(".session")).to_contain_text("ログイン中")
    expect(row.locator(".session")).to_contain_text(reg.key)
    expect(row.locator(".locks")).to_contain_text("返金ロック中")
    screenshot(page, "terminals")

    row.locator("button[data-action=unlock]").click()
    expect(page.locator("#notice")).to_contain_text("ロックを解除しました")
    expect(row.locator(".locks")).not_to_contain_text("返金ロック中")
    assert reg.refund(paid["transId"], 100).status_code == 200

    row.locator("button[data-action=logout]").click()
    expect(page.locator("#notice")).to_contain_text("ログアウトさせました")
    expect(row.locator(".session")).to_contain_text("未ログイン")
    assert reg.http.get(f"/v1/payments/{paid['transId']}", headers=reg.auth).status_code == 401

    row.locator("button[data-action=reset-password]").click()
    new_password = page.locator("#new-password").inner_text()
    assert len(new_password) == 12 and new_password != reg.terminal.password
    screenshot(page, "terminal-password")
    assert _login_status(reg).status_code == 401  # the old password no longer works
    assert _login_status(reg, new_password).status_code == 200

    page.goto("/console/terminals")
    row.locator("button[data-action=disable]").click()
    expect(row).to_contain_text("無効")
    answer = _login_status(reg, new_password)
    assert (answer.status_code, answer.json()["error"]["code"]) == (403, "TERMINAL_DISABLED")
    row.locator("button[data-action=enable]").click()
    expect(row).to_contain_text("有効")
    assert _login_status(reg, new_password).status_code == 200

    # The audit trail names the console user who asked, beside the admin action itself.
    with sqlite3.connect(server.database_path) as db:
        trail = db.execute(
            "SELECT actor, action, detail FROM audit_events WHERE terminal_id = "
            "(SELECT id FROM terminals WHERE mid = ?) AND actor != ? ORDER BY id",
            (reg.terminal.mid, f"terminal:{reg.terminal.mid}"),
        ).fetchall()
    done = [
        (actor, json.loads(detail)["action"])
        for actor, action, detail in trail
        if action == "console.terminal_action"
    ]
    assert done == [
        (f"console:{shop.owner}", action)
        for action in ("unlock", "logout", "reset-password", "disable", "enable")
    ]
    assert ("admin:cli", "terminal.disabled") in [(a, b) for a, b, _ in trail]


def test_daily_totals_count_payments_and_refunds_per_day_terminal_and_service(
    page: Page, own_register: Register, shop: Shop, screenshot: Callable[[Page, str], None]
) -> None:
    reg = own_register
    first = reg.pay(1000)
    reg.pay(2500, service_id="21")
    reg.pay(777, outcome="declined")  # never paid: not in the totals
    assert reg.refund(first["transId"], 400).status_code == 200
    login(page, shop.owner, OWNER_PASSWORD)
    page.goto(f"/console/totals?terminal={reg.terminal.mid}")
    expect(page.locator("#total-paid")).to_have_text("¥3,500")
    expect(page.locator("#total-refunded")).to_have_text("¥400")
    expect(page.locator("#total-net")).to_have_text("¥3,100")
    today = datetime.now(JST).date().isoformat()
    day = page.locator(f"#by-day tr[data-day='{today}'] td")
    assert day.all_inner_texts() == [today, "2", "¥3,500", "1", "¥400", "¥3,100"]
    services = page.locator("#by-service tbody tr")
    expect(services).to_have_count(2)
    assert page.locator("#by-service tr[data-service='21'] td").all_inner_texts()[1:] == [
        "1",
        "¥2,500",
        "0",
        "¥0",
        "¥2,500",
    ]
    assert page.locator(f"#by-terminal tr[data-mid='{reg.terminal.mid}'] td").all_inner_texts()[
        1:
    ] == ["2", "¥3,500", "1", "¥400", "¥3,100"]
    expect(page.locator("#chart rect.bar.paid")).to_have_count(14)
    # The whole shop, for the screenshot: every terminal of the merchant.
    page.goto("/console/totals")
    expect(page.locator("#chart")).to_be_visible()
    screenshot(page, "totals")
    # A period longer than allowed falls back to the default, and says so.
    page.goto("/console/totals?from=2020-01-01&to=2026-01-01")
    expect(page.locator(".field-error")).to_contain_text("92日")


# Periods touching days whose Japan-time bounds a datetime cannot hold (0001-01-01 starts in year 0
# in UTC, 9999-12-31 ends in year 10000; to=0001-01-01 alone would start 13 days before year 1).
CALENDAR_ENDS = [
    "to=9999-12-31",
    "to=0001-01-01",
    "from=0001-01-01&to=0001-01-02",
    "from=9999-12-30&to=9999-12-31",
]


@pytest.mark.parametrize("query", CALENDAR_ENDS)
def test_a_period_at_the_end_of_the_calendar_is_refused_like_an_unreadable_one(
    page: Page, shop: Shop, query: str
) -> None:
    login(page, shop.owner, OWNER_PASSWORD)
    answer = page.goto(f"/console/totals?{query}")
    assert answer is not None
    assert answer.status == 200, answer.status
    expect(page.locator(".field-error")).to_contain_text("92日")
    # The default period is shown instead: the last two weeks, up to today.
    today = datetime.now(JST).date()
    expect(page.locator("#totals-to")).to_have_value(today.isoformat())
    expect(page.locator("#totals-from")).to_have_value((today - timedelta(days=13)).isoformat())


def test_periods_next_to_the_ends_of_the_calendar_are_shown(page: Page, shop: Shop) -> None:
    login(page, shop.owner, OWNER_PASSWORD)
    for first, last in (("0001-01-02", "0001-01-03"), ("9999-12-29", "9999-12-30")):
        page.goto(f"/console/totals?from={first}&to={last}")
        expect(page.locator(".field-error")).to_have_count(0)
        expect(page.locator("#totals-from")).to_have_value(first)
        expect(page.locator("#totals-to")).to_have_value(last)
        expect(page.locator("#total-paid")).to_have_text("¥0")
