"""Another merchant's transId, transKey or mid, on every endpoint that takes one.

Shop B knows (or guesses) shop A's identifiers — from a receipt, a shared POS vendor, a log — and
uses them with its own valid session: terminal API and console alike. Every answer must be
exactly the answer for an identifier nobody has (status, code, field, retryable flag, wording
with the identifier itself blanked out), and nothing of A's may change: not its payments, not
their refunds, not the wallet's books, not its terminals — checked in the database itself, on A's
payments in every state (paid, partly refunded, fully refunded, waiting for the customer, an
unpaid QR code, declined).

tests/e2e/test_isolation.py asks the same of PAYCHECK, STATUS, CANCEL, VOUCHERNO and the QR
images for one paid payment and one QR code; this adds the other states, CANCEL's variants
(refundKey, a wrong passCode), REQUEST and GET-QR-CODE under A's transKey, every console route
that takes a transId or a mid, and the database check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from e2e.support import Pos, assert_error, new_key, sandbox_code

from .attack_support import (
    Gateway,
    assert_same_state,
    client_at,
    console_login,
    database_state,
    fresh_address,
    running_gateway,
)

pytestmark = pytest.mark.e2e

GHOST_ID = "1000000000"
_REQUEST_ID = re.compile(r"\b[0-9a-f]{20}\b")
_CSRF = re.compile(r'name="_csrf" value="([^"]+)"')


@dataclass
class World:
    """Two shops on one gateway, A's payments in every state, and B's tools."""

    gw: Gateway
    shop_a: Pos
    shop_b: Pos
    targets: dict[str, dict[str, Any]]
    owner_b: httpx.Client
    csrf_b: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_gateway(tmp_path_factory.mktemp("tenancy")) as gw:
        shop_a = Pos(client_at(gw.base_url, fresh_address()), gw.provisioner.fresh())
        shop_b = Pos(client_at(gw.base_url, fresh_address()), gw.provisioner.fresh())
        shop_a.login_ok()
        shop_b.login_ok()
        pay = shop_a.pay
        code = sandbox_code
        paid = pay(code(shop_a.http, "01"), 3000)
        partly = pay(code(shop_a.http, "21"), 2000)
        assert shop_a.refund(partly["transId"], amount=500).status_code == 200
        refunded = pay(code(shop_a.http, "20"), 1000)
        assert shop_a.refund(refunded["transId"]).status_code == 200
        waiting = pay(code(shop_a.http, "01", "password"), 1500)
        declined = pay(code(shop_a.http, "22", "declined"), 900)
        shown = shop_a.qr(new_key(), 800, "01")
        assert shown.status_code == 200, shown.text
        targets = {
            "paid": paid,
            "partly": partly,
            "refunded": refunded,
            "waiting": waiting,
            "declined": declined,
            "qr": shown.json(),
        }
        expected = {
            "paid": "COMPLETED",
            "partly": "PARTIALLY_REFUNDED",
            "refunded": "REFUNDED",
            "waiting": "PENDING",
            "declined": "FAILED",
            "qr": "PENDING",
        }
        for name, payment in targets.items():
            targets[name] = shop_a.paycheck(payment["transId"]).json()
            assert targets[name]["status"] == expected[name], (name, targets[name])
        email = f"{new_key('owner').lower()}@shop-b.example"
        owner = gw.admin.json(
            "admin", "user", "create", "--merchant", str(shop_b.terminal.merchant_id), "--email",
            email, "--role", "owner",
        )  # fmt: skip
        browser = client_at(gw.base_url, fresh_address())
        browser.cookies.set("kessai_lang", "en")
        assert console_login(browser, email, owner["password"]).status_code == 303
        match = _CSRF.search(browser.get("/console/payments").text)
        assert match is not None
        try:
            yield World(gw, shop_a, shop_b, targets, browser, match.group(1))
        finally:
            browser.close()


def _blank(text: str, *ids: str) -> str:
    for value in ids:
        text = text.replace(value, "<id>")
    return _REQUEST_ID.sub("<request-id>", text)


def _api_shape(response: httpx.Response, *ids: str) -> dict[str, Any]:
    """What a terminal API answer tells the caller, with the identifiers blanked out."""
    if response.status_code >= 400:
        error = assert_error(response, response.status_code, response.json()["error"]["code"])
        return {
            "status": response.status_code,
            "type": response.headers.get("content-type"),
            "code": error["code"],
            "field": error["field"],
            "retryable": error["retryable"],
            "message": _blank(error["message"], *ids),
            "retry-after": response.headers.get("retry-after"),
        }
    payment = response.json()
    return {
        "status": response.status_code,
        "replayed": response.headers.get("idempotent-replayed"),
        "payment": (payment["status"], payment["amount"], payment["refundedAmount"]),
    }


def _page_shape(response: httpx.Response, *ids: str) -> tuple[int, str | None, str]:
    """A console answer: status, where it redirects, and its text, identifiers blanked out."""
    return (
        response.status_code,
        _blank(response.headers.get("location", ""), *ids) or None,
        _blank(response.text, *ids),
    )


def _terminal_calls(w: World) -> dict[str, Callable[[str, str], httpx.Response]]:
    b = w.shop_b
    wrong = "0000" if b.terminal.pass_code != "0000" else "1111"
    return {
        "PAYCHECK": lambda tid, _key: b.paycheck(tid),
        "STATUS": lambda _tid, key: b.status(key),
        "CANCEL partial": lambda tid, _key: b.refund(tid, amount=100),
        "CANCEL all": lambda tid, _key: b.refund(tid),
        "CANCEL refundKey": lambda tid, _key: b.refund(tid, amount=1, refundKey="R1"),
        "VOUCHERNO": lambda tid, _key: b.voucher(tid, "TAKEN-1"),
        "qr.png": lambda tid, _key: b.http.get(f"/v1/payments/{tid}/qr.png", headers=b.auth()),
        "qr.svg": lambda tid, _key: b.http.get(f"/v1/payments/{tid}/qr.svg", headers=b.auth()),
        # A wrong passCode is counted against B's own terminal either way; once per target
        # stays well under B's lock.
        "CANCEL wrong passCode": lambda tid, _key: b.refund(tid, passCode=wrong, amount=1),
    }


def test_terminal_api_answers_a_foreign_payment_like_no_payment(world: World) -> None:
    gw = world.gw
    before = database_state(gw.database_url)
    for name, target in world.targets.items():
        ghost_key = new_key()
        for operation, call in _terminal_calls(world).items():
            foreign = call(target["transId"], target["transKey"])
            missing = call(GHOST_ID, ghost_key)
            ids = (target["transId"], target["transKey"], GHOST_ID, ghost_key)
            assert foreign.status_code in (403, 404), (name, operation, foreign.text)
            assert _api_shape(foreign, *ids) == _api_shape(missing, *ids), (name, operation)
        # B's wrong passCodes are the only trace, and they are B's: reset them for the next.
        assert gw.cli.json("admin", "terminal", "unlock", world.shop_b.terminal.mid)["unlocked"]
    after = database_state(gw.database_url)
    b_terminal = [row for row in after["terminals"] if row[1] == world.shop_b.terminal.mid]
    assert b_terminal, "B's terminal is missing"
    for table in before:
        if table in ("audit_events", "terminals"):
            continue  # B's wrong passCodes and unlocks are recorded against B: checked below
        assert before[table] == after[table], table
    a_rows = [r for r in before["terminals"] if r[1] == world.shop_a.terminal.mid]
    assert a_rows == [r for r in after["terminals"] if r[1] == world.shop_a.terminal.mid]
    a_merchant = world.shop_a.terminal.merchant_id
    new_audit = set(after["audit_events"]) - set(before["audit_events"])
    assert all(row[2] != a_merchant for row in new_audit), "an audit event names shop A"
    # Seen from A: every payment exactly as it was.
    for name, target in world.targets.items():
        assert world.shop_a.paycheck(target["transId"]).json() == target, name


def test_console_answers_a_foreign_payment_or_terminal_like_none(world: World) -> None:
    gw, browser, csrf = world.gw, world.owner_b, world.csrf_b
    before = database_state(gw.database_url)

    def post(path: str, **form: str) -> httpx.Response:
        return browser.post(path, data={"_csrf": csrf, **form})

    for name, target in world.targets.items():
        tid = target["transId"]
        ids = (tid, GHOST_ID)
        calls: dict[str, Callable[[str], httpx.Response]] = {
            "detail": lambda t: browser.get(f"/console/payments/{t}"),
            "refund confirm": lambda t: post(f"/console/payments/{t}/refund/confirm", mode="all"),
            "refund": lambda t: post(
                f"/console/payments/{t}/refund", amount="100", refund_key="CCROSS01"
            ),
            "voucher": lambda t: post(f"/console/payments/{t}/voucher", voucher_no="TAKEN-2"),
            "search": lambda t: browser.get("/console/payments", params={"q": t}),
        }
        for operation, call in calls.items():
            foreign, missing = call(tid), call(GHOST_ID)
            assert foreign.status_code in (200, 404), (name, operation, foreign.status_code)
            assert _page_shape(foreign, *ids) == _page_shape(missing, *ids), (name, operation)
        by_key = browser.get("/console/payments", params={"q": target["transKey"]})
        nobody = browser.get("/console/payments", params={"q": "K" + "0" * 20})
        assert _page_shape(by_key, target["transKey"], "K" + "0" * 20) == _page_shape(
            nobody, target["transKey"], "K" + "0" * 20
        )
    ghost_mid = "1" * 16 if world.shop_a.terminal.mid != "1" * 16 else "2" * 16
    for action in ("logout", "reset-password", "unlock", "disable", "enable"):
        mid = world.shop_a.terminal.mid
        foreign = post(f"/console/terminals/{mid}/{action}")
        missing = post(f"/console/terminals/{ghost_mid}/{action}")
        assert foreign.status_code == 404, (action, foreign.status_code)
        ids = (mid, ghost_mid)
        assert _page_shape(foreign, *ids) == _page_shape(missing, *ids), action
    assert_same_state(before, database_state(gw.database_url))
    # A's register did not notice anything: same session, same payments.
    for name, target in world.targets.items():
        assert world.shop_a.paycheck(target["transId"]).json() == target, name


def test_a_staff_user_cannot_do_what_only_owners_may(world: World) -> None:
    # Shop A's own staff, on shop A's own payments and terminal: looking is allowed, acting not.
    gw = world.gw
    email = f"{new_key('staff').lower()}@shop-a.example"
    staff = gw.admin.json(
        "admin", "user", "create", "--merchant", str(world.shop_a.terminal.merchant_id), "--email",
        email, "--role", "staff",
    )  # fmt: skip
    with client_at(gw.base_url, fresh_address()) as browser:
        browser.cookies.set("kessai_lang", "en")
        assert console_login(browser, email, staff["password"]).status_code == 303
        paid = world.targets["paid"]["transId"]
        page = browser.get(f"/console/payments/{paid}")
        assert page.status_code == 200
        match = _CSRF.search(page.text)
        assert match is not None
        form = {"_csrf": match.group(1)}
        before = database_state(gw.database_url)
        mid = world.shop_a.terminal.mid
        attempts = {
            "refund confirm": (f"/console/payments/{paid}/refund/confirm", {"mode": "all"}),
            "refund": (
                f"/console/payments/{paid}/refund",
                {"amount": "100", "refund_key": "CSTAFF01"},
            ),
            "voucher": (f"/console/payments/{paid}/voucher", {"voucher_no": "STAFF-1"}),
            **{
                f"terminal {action}": (f"/console/terminals/{mid}/{action}", {})
                for action in ("logout", "reset-password", "unlock", "disable", "enable")
            },
        }
        for name, (path, fields) in attempts.items():
            answer = browser.post(path, data=form | fields)
            assert answer.status_code == 403, (name, answer.status_code)
        assert_same_state(before, database_state(gw.database_url))
    assert world.shop_a.paycheck(paid).json() == world.targets["paid"]


def test_a_foreign_transkey_is_a_fresh_transkey(world: World) -> None:
    # Last in this module: B's payments made here would show in B's console searches above.
    b = world.shop_b
    for name in ("paid", "qr"):
        target = world.targets[name]
        ghost_key = new_key()
        ids = (target["transKey"], ghost_key)
        # REQUEST under A's transKey: B's own new payment, as under a key nobody used.
        foreign = b.request(target["transKey"], 700, sandbox_code(b.http, "01"))
        fresh = b.request(ghost_key, 700, sandbox_code(b.http, "01"))
        assert foreign.status_code == 200, foreign.text
        assert _api_shape(foreign, *ids) == _api_shape(fresh, *ids)
        assert foreign.json()["transId"] != target["transId"]
        # GET-QR-CODE under another of A's transKeys likewise.
        other = world.targets["refunded" if name == "paid" else "declined"]
        qr_foreign = b.qr(other["transKey"], 600, "01")
        qr_fresh = b.qr(new_key(), 600, "01")
        assert qr_foreign.status_code == 200, qr_foreign.text
        assert _api_shape(qr_foreign, other["transKey"]) == _api_shape(qr_fresh)
    for name, target in world.targets.items():
        assert world.shop_a.paycheck(target["transId"]).json() == target, name
        assert world.shop_a.status(target["transKey"]).json()["transId"] == target["transId"]
