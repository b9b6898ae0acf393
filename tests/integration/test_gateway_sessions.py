"""Sessions and lockouts, with time moved by the fake clock instead of slept through."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from kessai.domain.errors import Conflict, KessaiError, NotFound, RateLimited, Unauthenticated
from kessai.domain.model import PaymentStatus
from kessai.service import admin
from kessai.service.admin import IssuedTerminal

if TYPE_CHECKING:
    from conftest import Harness, Shop, Till

S = PaymentStatus
IDLE_SECONDS = 600
TOUCH_SECONDS = 60


@pytest.fixture
def idle_h(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(
        session_idle_timeout_seconds=IDLE_SECONDS, session_touch_interval_seconds=TOUCH_SECONDS
    )


def unlock(h: Harness, shop: Shop) -> None:
    now = h.clock()
    h.db.run_sync(lambda conn: admin.unlock(conn, shop.mid, now))


def actions(h: Harness, terminal_action_prefix: str = "terminal.") -> list[str]:
    return [
        e["action"]
        for e in h.table("audit_events")
        if e["action"].startswith(terminal_action_prefix)
    ]


# --- Idle expiry --------------------------------------------------------------------------------


def test_idle_session_expires(idle_h: Harness) -> None:
    till = idle_h.till()
    paid = till.request(1000)
    idle_h.clock.advance(IDLE_SECONDS - 1)
    assert till.paycheck(paid.trans_id).status is S.COMPLETED  # this call touches it
    idle_h.clock.advance(IDLE_SECONDS)
    with pytest.raises(Unauthenticated) as caught:
        till.paycheck(paid.trans_id)
    assert caught.value.code == "SESSION_INVALID"
    assert caught.value.http_status == 401
    # Every operation refuses it, including the ones that write.
    with pytest.raises(Unauthenticated):
        till.request(1000)
    with pytest.raises(Unauthenticated):
        till.voucher(paid.trans_id, "V1")
    with pytest.raises(Unauthenticated):
        till.logout()


def test_idle_expiry_is_exact_at_the_deadline(idle_h: Harness) -> None:
    till = idle_h.till()
    paid = till.request(1000)
    idle_h.clock.advance(IDLE_SECONDS)
    with pytest.raises(Unauthenticated) as caught:
        till.paycheck(paid.trans_id)
    assert caught.value.code == "SESSION_INVALID"


def test_a_session_in_use_stays_alive(idle_h: Harness) -> None:
    till = idle_h.till()
    paid = till.request(1000)
    # Ten idle periods pass, but the terminal calls every 500 seconds.
    for _ in range(12):
        idle_h.clock.advance(500)
        assert till.paycheck(paid.trans_id).trans_id == paid.trans_id
    session = idle_h.table("sessions")[0]
    assert session["ended_at"] is None
    assert session["idle_expires_at"] == idle_h.clock() + timedelta(seconds=IDLE_SECONDS)


def test_an_idle_session_frees_the_mid_for_another_device(idle_h: Harness) -> None:
    shop = idle_h.provision()
    first = idle_h.login(shop, key="DEVICE-1")
    with pytest.raises(Conflict) as caught:
        idle_h.login(shop, key="DEVICE-2")
    assert caught.value.code == "TERMINAL_IN_USE"
    idle_h.clock.advance(IDLE_SECONDS)
    second = idle_h.login(shop, key="DEVICE-2")
    assert second != first
    ended = [s for s in idle_h.table("sessions") if s["ended_at"] is not None]
    assert [s["end_reason"] for s in ended] == ["idle"]


def test_logout_ends_the_session(h: Harness) -> None:
    till = h.till()
    paid = till.request(1000)
    till.logout()
    with pytest.raises(Unauthenticated) as caught:
        till.paycheck(paid.trans_id)
    assert caught.value.code == "SESSION_INVALID"


def test_a_terminal_sees_only_its_own_merchants_payments(h: Harness) -> None:
    ours = h.till(h.provision("Ours"))
    theirs = h.till(h.provision("Theirs"), key="OTHER-DEVICE")
    paid = ours.request(1000, trans_key="ORDER1")
    with pytest.raises(NotFound) as caught:
        theirs.paycheck(paid.trans_id)
    assert caught.value.code == "PAYMENT_NOT_FOUND"
    with pytest.raises(NotFound):
        theirs.status("ORDER1")
    with pytest.raises(NotFound):
        theirs.refund(paid.trans_id)


# --- LOGIN lock ---------------------------------------------------------------------------------

LOGIN_MAX = 3
LOGIN_LOCK_SECONDS = 120


@pytest.fixture
def login_h(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(login_max_failures=LOGIN_MAX, login_lock_seconds=LOGIN_LOCK_SECONDS)


def wrong_login(h: Harness, shop: Shop) -> KessaiError:
    with pytest.raises(KessaiError) as caught:
        h.login(shop, password="Wrong0000000")
    return caught.value


def lock_login(h: Harness, shop: Shop) -> None:
    for _ in range(LOGIN_MAX):
        error = wrong_login(h, shop)
        assert isinstance(error, Unauthenticated)
        assert error.code == "WRONG_CREDENTIALS"


def test_login_locks_after_max_failures_and_unlocks_after_the_lock(login_h: Harness) -> None:
    shop = login_h.provision()
    lock_login(login_h, shop)
    with pytest.raises(RateLimited) as caught:
        login_h.login(shop)  # even the right password
    assert caught.value.code == "LOGIN_LOCKED"
    assert caught.value.http_status == 429
    wait = caught.value.retry_after_seconds
    assert wait is not None
    assert LOGIN_LOCK_SECONDS <= wait <= LOGIN_LOCK_SECONDS + 1
    # Wrong attempts during the lock do not extend it.
    login_h.clock.advance(LOGIN_LOCK_SECONDS - 1)
    error = wrong_login(login_h, shop)
    assert isinstance(error, RateLimited)
    assert error.retry_after_seconds in (1, 2)
    login_h.clock.advance(1)
    assert login_h.login(shop)
    assert "terminal.login_locked" in actions(login_h)


def test_a_successful_login_resets_the_failure_count(login_h: Harness) -> None:
    shop = login_h.provision()
    for _ in range(LOGIN_MAX - 1):
        wrong_login(login_h, shop)
    login_h.login(shop)
    for _ in range(LOGIN_MAX - 1):
        assert wrong_login(login_h, shop).code == "WRONG_CREDENTIALS"
    assert login_h.login(shop, key="AA:BB:CC:DD:EE:01")


def test_after_the_lock_the_full_number_of_attempts_is_back(login_h: Harness) -> None:
    shop = login_h.provision()
    lock_login(login_h, shop)
    login_h.clock.advance(LOGIN_LOCK_SECONDS)
    for _ in range(LOGIN_MAX - 1):
        assert wrong_login(login_h, shop).code == "WRONG_CREDENTIALS"
    assert login_h.login(shop)


def test_admin_unlock_lifts_the_login_lock(login_h: Harness) -> None:
    shop = login_h.provision()
    lock_login(login_h, shop)
    unlock(login_h, shop)
    assert login_h.login(shop)
    assert "terminal.unlocked" in actions(login_h)


def test_unknown_mid_is_answered_like_a_wrong_password(login_h: Harness) -> None:
    shop = login_h.provision()
    ghost = dataclasses.replace(
        shop, terminal=IssuedTerminal("1" * 16, shop.terminal.password, "0000", shop.merchant_id)
    )
    for _ in range(LOGIN_MAX + 2):
        error = wrong_login(login_h, ghost)
        assert error.code == "WRONG_CREDENTIALS"


# --- passCode lock ------------------------------------------------------------------------------

PASSCODE_MAX = 5
PASSCODE_LOCK_SECONDS = 300


@pytest.fixture
def pass_h(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(
        passcode_max_failures=PASSCODE_MAX, passcode_lock_seconds=PASSCODE_LOCK_SECONDS
    )


def wrong_passcode(shop: Shop) -> str:
    return "0000" if shop.terminal.passcode != "0000" else "1111"


def lock_refunds(h: Harness, till: Till, trans_id: str) -> None:
    for attempt in range(1, PASSCODE_MAX + 1):
        with pytest.raises(KessaiError) as caught:
            till.refund(trans_id, 100, passcode=wrong_passcode(till.shop))
        if attempt < PASSCODE_MAX:
            assert caught.value.code == "WRONG_PASSCODE"
            assert caught.value.http_status == 403
            assert str(PASSCODE_MAX - attempt) in caught.value.message
        else:
            assert caught.value.code == "PASSCODE_LOCKED"
            assert caught.value.http_status == 429


def test_passcode_locks_after_five_failures_and_unlocks_after_the_lock(pass_h: Harness) -> None:
    till = pass_h.till()
    paid = till.request(1000)
    lock_refunds(pass_h, till, paid.trans_id)
    with pytest.raises(RateLimited) as caught:
        till.refund(paid.trans_id, 100)  # the right passCode, but locked
    assert caught.value.code == "PASSCODE_LOCKED"
    # Nothing moved while the passCode was wrong or locked.
    assert pass_h.table("refunds") == []
    assert pass_h.payment_row(paid.trans_id)["refunded_amount"] == 0
    pass_h.clock.advance(PASSCODE_LOCK_SECONDS - 1)
    with pytest.raises(RateLimited):
        till.refund(paid.trans_id, 100)
    pass_h.clock.advance(1)
    assert till.refund(paid.trans_id, 100).payment.refunded_amount == 100
    assert "terminal.refunds_locked" in actions(pass_h)


def test_admin_unlock_lifts_the_passcode_lock(pass_h: Harness) -> None:
    till = pass_h.till()
    paid = till.request(1000)
    lock_refunds(pass_h, till, paid.trans_id)
    unlock(pass_h, till.shop)
    assert till.refund(paid.trans_id, 100).payment.status is S.PARTIALLY_REFUNDED
    # And the count starts again from zero.
    with pytest.raises(KessaiError) as caught:
        till.refund(paid.trans_id, 100, passcode=wrong_passcode(till.shop))
    assert caught.value.code == "WRONG_PASSCODE"


def test_a_right_passcode_resets_the_failure_count(pass_h: Harness) -> None:
    till = pass_h.till()
    paid = till.request(1000)
    for _ in range(PASSCODE_MAX - 1):
        with pytest.raises(KessaiError):
            till.refund(paid.trans_id, 100, passcode=wrong_passcode(till.shop))
    till.refund(paid.trans_id, 100)
    for _ in range(PASSCODE_MAX - 1):
        with pytest.raises(KessaiError) as caught:
            till.refund(paid.trans_id, 100, passcode=wrong_passcode(till.shop))
        assert caught.value.code == "WRONG_PASSCODE"


def test_after_the_passcode_lock_the_full_number_of_attempts_is_back(pass_h: Harness) -> None:
    till = pass_h.till()
    paid = till.request(1000)
    lock_refunds(pass_h, till, paid.trans_id)
    pass_h.clock.advance(PASSCODE_LOCK_SECONDS)
    with pytest.raises(KessaiError) as caught:
        till.refund(paid.trans_id, 100, passcode=wrong_passcode(till.shop))
    assert caught.value.code == "WRONG_PASSCODE"
