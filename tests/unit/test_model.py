"""The payment state machine, the Payment invariants and the refund rules, without I/O.

The expected transition table is written out here on purpose instead of being read from
``TRANSITIONS``: a change to the state machine must be a deliberate change to this test too.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kessai.domain.errors import Conflict, InternalError
from kessai.domain.model import (
    MAX_AMOUNT_YEN,
    MAX_REFUNDS_PER_PAYMENT,
    MIN_AMOUNT_YEN,
    REFUNDABLE_STATUSES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    VOUCHER_EDITABLE_STATUSES,
    Payment,
    PaymentKind,
    PaymentStatus,
    PendingReason,
    Refund,
    RefundStatus,
    can_transition,
    check_transition,
    require_refundable,
)

S = PaymentStatus
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=5)

EXPECTED_ALLOWED: dict[PaymentStatus, set[PaymentStatus]] = {
    S.PENDING: {S.PENDING, S.COMPLETED, S.FAILED, S.EXPIRED, S.CANCELED},
    S.COMPLETED: {S.PARTIALLY_REFUNDED, S.REFUNDED},
    S.PARTIALLY_REFUNDED: {S.PARTIALLY_REFUNDED, S.REFUNDED},
    S.REFUNDED: set(),
    S.FAILED: set(),
    S.EXPIRED: set(),
    S.CANCELED: set(),
}
ALL_PAIRS = list(itertools.product(PaymentStatus, PaymentStatus))
ALLOWED_PAIRS = [(a, b) for a, b in ALL_PAIRS if b in EXPECTED_ALLOWED[a]]
FORBIDDEN_PAIRS = [(a, b) for a, b in ALL_PAIRS if b not in EXPECTED_ALLOWED[a]]
NON_REFUNDABLE = [s for s in PaymentStatus if s not in {S.COMPLETED, S.PARTIALLY_REFUNDED}]


def _pair_id(pair: tuple[PaymentStatus, PaymentStatus]) -> str:
    return f"{pair[0]}->{pair[1]}"


def payment(status: PaymentStatus = S.COMPLETED, **changes: Any) -> Payment:
    """A valid payment in ``status`` (PENDING gets a reason; refunded ones get their amount)."""
    values: dict[str, Any] = {
        "trans_id": "1234567890",
        "trans_key": "K1",
        "merchant_id": 1,
        "terminal_id": 1,
        "kind": PaymentKind.CUSTOMER_CODE,
        "service_id": "01",
        "amount": 1000,
        "status": status,
        "created_at": T0,
        "updated_at": T0,
    }
    if status is S.PENDING:
        values["pending_reason"] = PendingReason.OUTCOME_UNKNOWN
    if status is S.PARTIALLY_REFUNDED:
        values["refunded_amount"] = 100
    if status is S.REFUNDED:
        values["refunded_amount"] = changes.get("amount", 1000)
    values.update(changes)
    return Payment(**values)


def refund(
    amount: int,
    status: RefundStatus = RefundStatus.PENDING,
    refund_id: str = "R00000000001",
    refund_key: str = "RK1",
) -> Refund:
    return Refund(
        refund_id=refund_id,
        refund_key=refund_key,
        amount=amount,
        status=status,
        created_at=T0,
        updated_at=T0,
    )


def move(p: Payment, target: PaymentStatus) -> Payment:
    if target in (S.PARTIALLY_REFUNDED, S.REFUNDED):
        # Money moves back only through a settled refund, never by a bare status change.
        remaining = p.amount - p.refunded_amount
        take = remaining if target is S.REFUNDED else min(100, remaining - 1)
        pending = refund(take, refund_id=f"R{len(p.refunds):011d}")
        with_refund = replace(p, refunds=(*p.refunds, pending))
        return with_refund.with_refund_settled(replace(pending, status=RefundStatus.SUCCEEDED), T1)
    reason = PendingReason.WAITING_FOR_CUSTOMER if target is S.PENDING else None
    return p.moved_to(target, T1, pending_reason=reason)


# --- The transition table ---------------------------------------------------------------------


def test_the_table_is_exactly_the_documented_state_machine() -> None:
    actual = {s: set(TRANSITIONS.get(s, frozenset())) for s in PaymentStatus}
    assert actual == EXPECTED_ALLOWED


def test_terminal_statuses_are_exactly_the_four_final_ones() -> None:
    assert {S.REFUNDED, S.FAILED, S.EXPIRED, S.CANCELED} == TERMINAL_STATUSES
    assert not TERMINAL_STATUSES & set(TRANSITIONS)


def test_status_groups() -> None:
    assert {S.COMPLETED, S.PARTIALLY_REFUNDED} == REFUNDABLE_STATUSES
    assert {S.PENDING, S.COMPLETED, S.PARTIALLY_REFUNDED, S.REFUNDED} == VOUCHER_EDITABLE_STATUSES
    # The wire carries the names.
    assert all(s.value == s.name for s in PaymentStatus)


@pytest.mark.parametrize("pair", ALLOWED_PAIRS, ids=_pair_id)
def test_allowed_transition_succeeds(pair: tuple[PaymentStatus, PaymentStatus]) -> None:
    current, target = pair
    before = payment(current)
    assert can_transition(current, target)
    check_transition(current, target)
    after = move(before, target)
    assert after.status is target
    assert after.version == before.version + 1
    assert after.updated_at == T1
    assert after.created_at == T0
    assert (after.pending_reason is not None) == (target is S.PENDING)
    # The value is immutable: the old one is untouched.
    assert before.status is current
    assert before.version == 1


@pytest.mark.parametrize("pair", FORBIDDEN_PAIRS, ids=_pair_id)
def test_forbidden_transition_raises_internal_error(
    pair: tuple[PaymentStatus, PaymentStatus],
) -> None:
    current, target = pair
    before = payment(current)
    assert not can_transition(current, target)
    with pytest.raises(InternalError) as caught:
        check_transition(current, target)
    assert caught.value.code == "INTERNAL_ERROR"
    assert caught.value.http_status == 500
    with pytest.raises(InternalError):
        move(before, target)


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
def test_terminal_status_has_no_way_out(terminal: PaymentStatus) -> None:
    p = payment(terminal)
    for target in PaymentStatus:
        assert not can_transition(terminal, target)
        with pytest.raises(InternalError):
            move(p, target)
    if terminal is not S.REFUNDED:
        # Not even a settled refund moves a payment out of a terminal state.
        settled = refund(1, RefundStatus.SUCCEEDED)
        with pytest.raises(InternalError):
            dataclasses.replace(p, refunds=(settled,)).with_refund_settled(settled, T1)


def test_moved_to_records_failure_and_clears_pending_reason() -> None:
    p = payment(S.PENDING)
    failed = p.moved_to(S.FAILED, T1, failure_code="DECLINED", failure_message="no money")
    assert failed.pending_reason is None
    assert (failed.failure_code, failed.failure_message) == ("DECLINED", "no money")
    # A reason given for a non-PENDING target is dropped, not kept against the invariant.
    completed = p.moved_to(S.COMPLETED, T1, pending_reason=PendingReason.OUTCOME_UNKNOWN)
    assert completed.pending_reason is None


def test_pending_to_pending_changes_the_reason() -> None:
    p = payment(S.PENDING)
    waiting = p.moved_to(S.PENDING, T1, pending_reason=PendingReason.WAITING_FOR_CUSTOMER)
    assert waiting.pending_reason is PendingReason.WAITING_FOR_CUSTOMER
    with pytest.raises(InternalError):
        p.moved_to(S.PENDING, T1)  # PENDING needs a reason


# --- Invariants checked on every value ---------------------------------------------------------


@pytest.mark.parametrize("amount", [MIN_AMOUNT_YEN, 2, 9_999_998, MAX_AMOUNT_YEN])
def test_amount_within_bounds_is_accepted(amount: int) -> None:
    assert payment(amount=amount).amount == amount


@pytest.mark.parametrize("amount", [0, -1, -1000, MAX_AMOUNT_YEN + 1, 10**12])
def test_amount_out_of_bounds_is_refused(amount: int) -> None:
    with pytest.raises(InternalError):
        payment(amount=amount)


def test_bounds_are_the_documented_yen_limits() -> None:
    assert (MIN_AMOUNT_YEN, MAX_AMOUNT_YEN) == (1, 9_999_999)
    assert MAX_REFUNDS_PER_PAYMENT == 100


@pytest.mark.parametrize(
    ("status", "refunded"),
    [(S.COMPLETED, 0), (S.PARTIALLY_REFUNDED, 1), (S.PARTIALLY_REFUNDED, 999), (S.REFUNDED, 1000)],
)
def test_refunded_up_to_amount_is_accepted(status: PaymentStatus, refunded: int) -> None:
    assert payment(status, refunded_amount=refunded).refunded_amount == refunded


@pytest.mark.parametrize(
    ("status", "refunded"),
    [(S.COMPLETED, 1), (S.PARTIALLY_REFUNDED, 0), (S.PARTIALLY_REFUNDED, 1000), (S.REFUNDED, 999)],
)
def test_refunded_amount_must_agree_with_the_status(status: PaymentStatus, refunded: int) -> None:
    with pytest.raises(InternalError):
        payment(status, refunded_amount=refunded)


@pytest.mark.parametrize("refunded", [-1, 1001, 10**9])
def test_refunded_outside_zero_to_amount_is_refused(refunded: int) -> None:
    with pytest.raises(InternalError):
        payment(S.COMPLETED, refunded_amount=refunded)


@pytest.mark.parametrize("status", list(PaymentStatus))
def test_pending_reason_present_iff_pending(status: PaymentStatus) -> None:
    base = payment(status)
    for reason in [None, *PendingReason]:
        if (status is S.PENDING) == (reason is not None):
            assert dataclasses.replace(base, pending_reason=reason).pending_reason is reason
        else:
            with pytest.raises(InternalError):
                dataclasses.replace(base, pending_reason=reason)


def test_payment_is_immutable() -> None:
    p = payment()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.status = S.FAILED  # type: ignore[misc]


# --- Settling refunds --------------------------------------------------------------------------


def test_partial_refund_settles_to_partially_refunded() -> None:
    r = refund(300)
    p = payment(S.COMPLETED, refunds=(r,))
    assert p.reserved_refund_amount == 300
    after = p.with_refund_settled(dataclasses.replace(r, status=RefundStatus.SUCCEEDED), T1)
    assert after.status is S.PARTIALLY_REFUNDED
    assert after.refunded_amount == 300
    assert after.refunds[0].status is RefundStatus.SUCCEEDED
    assert after.reserved_refund_amount == 0
    assert after.refundable_amount == 700
    assert after.version == p.version + 1


def test_refund_of_the_rest_settles_to_refunded() -> None:
    r = refund(900, refund_id="R00000000002")
    p = payment(S.PARTIALLY_REFUNDED, refunded_amount=100, refunds=(r,))
    after = p.with_refund_settled(dataclasses.replace(r, status=RefundStatus.SUCCEEDED), T1)
    assert after.status is S.REFUNDED
    assert after.refunded_amount == after.amount == 1000
    assert after.refundable_amount == 0


def test_full_refund_at_once_settles_to_refunded() -> None:
    r = refund(1000, RefundStatus.SUCCEEDED)
    after = payment(S.COMPLETED, refunds=(r,)).with_refund_settled(r, T1)
    assert after.status is S.REFUNDED


@pytest.mark.parametrize("status", [RefundStatus.PENDING, RefundStatus.FAILED])
def test_only_a_succeeded_refund_moves_money(status: RefundStatus) -> None:
    r = refund(100, status)
    with pytest.raises(InternalError):
        payment(S.COMPLETED, refunds=(r,)).with_refund_settled(r, T1)


def test_settling_more_than_paid_is_refused() -> None:
    r = refund(901, RefundStatus.SUCCEEDED)
    p = payment(S.PARTIALLY_REFUNDED, refunded_amount=100, refunds=(r,))
    with pytest.raises(InternalError):
        p.with_refund_settled(r, T1)


@pytest.mark.parametrize("status", [S.PENDING, S.FAILED, S.EXPIRED, S.CANCELED, S.REFUNDED])
def test_settling_on_a_non_refundable_payment_is_refused(status: PaymentStatus) -> None:
    r = refund(1, RefundStatus.SUCCEEDED)
    p = payment(status, amount=1000, refunds=(r,))
    with pytest.raises(InternalError):
        p.with_refund_settled(r, T1)


# --- require_refundable -------------------------------------------------------------------------


def test_amount_none_takes_all_that_remains() -> None:
    assert require_refundable(payment(S.COMPLETED), None) == 1000
    assert require_refundable(payment(S.PARTIALLY_REFUNDED, refunded_amount=250), None) == 750


def test_exact_remaining_is_allowed_and_one_more_is_refused() -> None:
    p = payment(S.PARTIALLY_REFUNDED, refunded_amount=400)
    assert require_refundable(p, 600) == 600
    assert require_refundable(p, 1) == 1
    with pytest.raises(Conflict) as caught:
        require_refundable(p, 601)
    assert caught.value.code == "REFUND_EXCEEDS_REMAINING"
    assert caught.value.field == "amount"
    assert caught.value.http_status == 409


@pytest.mark.parametrize("amount", [0, -5])
def test_refund_below_one_yen_is_refused(amount: int) -> None:
    with pytest.raises(Conflict) as caught:
        require_refundable(payment(S.COMPLETED), amount)
    assert caught.value.code == "REFUND_EXCEEDS_REMAINING"


@pytest.mark.parametrize("status", NON_REFUNDABLE)
@pytest.mark.parametrize("amount", [None, 1])
def test_non_refundable_status_is_refused(status: PaymentStatus, amount: int | None) -> None:
    p = payment(status)
    assert p.refundable_amount == 0
    with pytest.raises(Conflict) as caught:
        require_refundable(p, amount)
    assert caught.value.code == "PAYMENT_NOT_REFUNDABLE"
    assert caught.value.field == "transId"
    assert caught.value.http_status == 409


def test_pending_refunds_reserve_their_amount() -> None:
    p = payment(S.COMPLETED, refunds=(refund(700),))
    assert p.reserved_refund_amount == 700
    assert p.refundable_amount == 300
    assert require_refundable(p, None) == 300
    with pytest.raises(Conflict) as caught:
        require_refundable(p, 301)
    assert caught.value.code == "REFUND_EXCEEDS_REMAINING"


def test_everything_reserved_leaves_nothing_even_for_amount_none() -> None:
    p = payment(S.COMPLETED, refunds=(refund(1000),))
    with pytest.raises(Conflict) as caught:
        require_refundable(p, None)
    assert caught.value.code == "REFUND_EXCEEDS_REMAINING"


def test_failed_refunds_reserve_nothing() -> None:
    p = payment(S.COMPLETED, refunds=(refund(1000, RefundStatus.FAILED),))
    assert p.reserved_refund_amount == 0
    assert require_refundable(p, None) == 1000


def _many_refunds(count: int) -> tuple[Refund, ...]:
    return tuple(
        refund(1, RefundStatus.FAILED, refund_id=f"R{i:011d}", refund_key=f"K{i}")
        for i in range(count)
    )


def test_refund_count_is_limited_per_payment() -> None:
    below = payment(S.COMPLETED, refunds=_many_refunds(MAX_REFUNDS_PER_PAYMENT - 1))
    assert require_refundable(below, 1) == 1
    at_limit = payment(S.COMPLETED, refunds=_many_refunds(MAX_REFUNDS_PER_PAYMENT))
    with pytest.raises(Conflict) as caught:
        require_refundable(at_limit, 1)
    assert caught.value.code == "REFUND_EXCEEDS_REMAINING"


# --- Random sequences of partial refunds --------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    amount=st.integers(MIN_AMOUNT_YEN, MAX_AMOUNT_YEN),
    steps=st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-10, 2_000), st.integers(1, MAX_AMOUNT_YEN)),
            st.sampled_from(["succeed", "fail", "leave-pending"]),
        ),
        max_size=40,
    ),
)
def test_random_partial_refunds_never_exceed_the_paid_amount(
    amount: int, steps: list[tuple[int | None, str]]
) -> None:
    p = payment(S.COMPLETED, amount=amount)
    for index, (ask, fate) in enumerate(steps):
        remaining = p.refundable_amount
        expected_ok = p.status in REFUNDABLE_STATUSES and (
            remaining >= 1 if ask is None else 1 <= ask <= remaining
        )
        try:
            take = require_refundable(p, ask)
        except Conflict as exc:
            assert not expected_ok
            assert exc.code in {"PAYMENT_NOT_REFUNDABLE", "REFUND_EXCEEDS_REMAINING"}
            continue
        assert expected_ok
        assert take == (remaining if ask is None else ask)
        pending = refund(take, refund_id=f"R{index:011d}", refund_key=f"K{index}")
        p = dataclasses.replace(p, refunds=(*p.refunds, pending))
        assert p.refundable_amount == remaining - take
        if fate == "succeed":
            settled = dataclasses.replace(pending, status=RefundStatus.SUCCEEDED)
            p = p.with_refund_settled(settled, T1)
        elif fate == "fail":
            failed = dataclasses.replace(pending, status=RefundStatus.FAILED)
            p = dataclasses.replace(
                p, refunds=tuple(failed if r is pending else r for r in p.refunds)
            )
        succeeded = sum(r.amount for r in p.refunds if r.status is RefundStatus.SUCCEEDED)
        assert p.refunded_amount == succeeded
        assert 0 <= p.refunded_amount <= p.amount
        assert p.refunded_amount + p.reserved_refund_amount <= p.amount
        assert (p.status is S.REFUNDED) == (p.refunded_amount == p.amount)
        if p.refunded_amount == 0:
            assert p.status is S.COMPLETED
        elif p.status is not S.REFUNDED:
            assert p.status is S.PARTIALLY_REFUNDED
