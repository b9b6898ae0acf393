"""Unknown is a state: timeouts, exceptions, "not found" and crashes never become FAILED early."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from conftest import run

from kessai.connectors.base import (
    FlowNotSupported,
    PayRequest,
    ProviderOutcome,
    ProviderResult,
    QrRequest,
    RefundResult,
)
from kessai.domain.errors import Conflict
from kessai.domain.model import PaymentStatus, PendingReason
from kessai.service.worker import Worker

if TYPE_CHECKING:
    from conftest import Harness, Till

S = PaymentStatus
GRACE = 60
UNKNOWN = (S.PENDING, PendingReason.OUTCOME_UNKNOWN)


class SilentProvider:
    """A provider that never answers ``pay`` and has never heard of any payment."""

    name = "sandbox"

    def __init__(self, pay_mode: str, sync_mode: str = "not-found") -> None:
        self.pay_mode = pay_mode
        self.sync_mode = sync_mode
        self.calls: list[str] = []

    async def pay(self, request: PayRequest) -> ProviderResult:
        self.calls.append("pay")
        if self.pay_mode == "timeout":
            raise TimeoutError("the provider did not answer in time")
        if self.pay_mode == "hang":
            await asyncio.Event().wait()
        if self.pay_mode == "connection-error":
            raise ConnectionResetError("connection reset by peer")
        if self.pay_mode == "garbage":
            raise ValueError("the provider answered something we cannot parse")
        raise AssertionError(self.pay_mode)

    async def create_qr(self, request: QrRequest) -> ProviderResult:
        self.calls.append("create_qr")
        raise TimeoutError

    async def sync(self, ref: str) -> ProviderResult:
        self.calls.append("sync")
        if self.sync_mode == "raise":
            raise ConnectionResetError("still unreachable")
        if self.sync_mode == "unknown":
            return ProviderResult(ProviderOutcome.UNKNOWN, provider_ref=ref)
        return ProviderResult(ProviderOutcome.NOT_FOUND, provider_ref=ref)

    async def cancel(self, ref: str) -> ProviderResult:
        # Withdrawing is asking too: an unreachable provider cannot confirm a cancel either.
        self.calls.append("cancel")
        if self.sync_mode == "raise":
            raise ConnectionResetError("still unreachable")
        if self.sync_mode == "unknown":
            return ProviderResult(ProviderOutcome.UNKNOWN, provider_ref=ref)
        return ProviderResult(ProviderOutcome.NOT_FOUND, provider_ref=ref)

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        self.calls.append("refund")
        return RefundResult(ProviderOutcome.UNKNOWN)


class Crash(BaseException):
    """The process dies: not an ordinary exception any handler would catch."""


class CrashBeforePay:
    """Wraps the sandbox; the gateway's process dies right before the provider is called."""

    name = "sandbox"

    def __init__(self, inner: object) -> None:
        self.inner = inner

    async def pay(self, request: PayRequest) -> ProviderResult:
        raise Crash

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.fixture
def fast_h(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(provider_timeout_seconds=0.05, provider_not_found_grace_seconds=GRACE)


def install(h: Harness, connector: object) -> None:
    h.gateway.connectors["sandbox"] = connector  # type: ignore[assignment]


def state(till: Till, trans_id: str) -> tuple[PaymentStatus, PendingReason | None]:
    p = till.paycheck(trans_id)
    return p.status, p.pending_reason


@pytest.mark.parametrize("pay_mode", ["timeout", "hang", "connection-error", "garbage"])
def test_no_answer_is_pending_then_not_found_fails_only_after_the_grace(
    fast_h: Harness, pay_mode: str
) -> None:
    h = fast_h
    till = h.till()
    provider = SilentProvider(pay_mode)
    install(h, provider)
    created_at = h.clock()
    answered = till.request(1000)
    assert (answered.status, answered.pending_reason) == UNKNOWN
    assert answered.failure_code is None
    assert provider.calls == ["pay"]
    # Inside the grace period, "not found" may just mean "not arrived yet".
    for at in (2, 30, GRACE - 1):
        h.clock.now = created_at + timedelta(seconds=at)
        assert state(till, answered.trans_id) == UNKNOWN
    assert provider.calls.count("sync") == 3
    h.clock.now = created_at + timedelta(seconds=GRACE)
    failed = till.paycheck(answered.trans_id)
    assert failed.status is S.FAILED
    assert failed.failure_code == "NOT_RECEIVED"
    actions = [(e["action"], e["to_status"]) for e in h.audit(answered.trans_id)]
    assert actions == [("payment.created", "PENDING"), ("payment.failed", "FAILED")]


@pytest.mark.parametrize("sync_mode", ["raise", "unknown"])
def test_an_unreachable_provider_never_fails_a_payment(fast_h: Harness, sync_mode: str) -> None:
    h = fast_h
    till = h.till()
    install(h, SilentProvider("timeout", sync_mode))
    answered = till.request(1000)
    for _ in range(5):
        h.clock.advance(GRACE * 10)
        assert state(till, answered.trans_id) == UNKNOWN


def test_polling_faster_than_the_recheck_interval_asks_the_provider_once(fast_h: Harness) -> None:
    h = fast_h
    till = h.till()
    provider = SilentProvider("timeout")
    install(h, provider)
    answered = till.request(1000)
    h.clock.advance(2)
    for _ in range(5):
        assert state(till, answered.trans_id) == UNKNOWN
    assert provider.calls.count("sync") == 1


def test_sandbox_timeouts_stay_pending_until_the_truth_surfaces(h: Harness) -> None:
    till = h.till()
    lucky = till.request(1000, outcome="timeout-success")
    unlucky = till.request(2000, outcome="timeout-failure")
    for p in (lucky, unlucky):
        assert (p.status, p.pending_reason) == UNKNOWN
    h.clock.advance(h.settings.sandbox_reveal_after_seconds / 2)
    assert state(till, lucky.trans_id) == UNKNOWN
    assert state(till, unlucky.trans_id) == UNKNOWN
    h.clock.advance(h.settings.sandbox_reveal_after_seconds)
    assert till.paycheck(lucky.trans_id).status is S.COMPLETED
    failed = till.paycheck(unlucky.trans_id)
    assert failed.status is S.FAILED
    assert failed.failure_code == "DECLINED"


def test_retrying_an_unknown_request_never_charges_twice(h: Harness) -> None:
    till = h.till()
    code = h.codes(outcome="timeout-success")[0]
    first = till.request(1000, code=code, trans_key="ORDER1")
    assert (first.status, first.pending_reason) == UNKNOWN
    h.clock.advance(1.5)
    retry = till.request(1000, code=code, trans_key="ORDER1")
    assert retry.trans_id == first.trans_id
    h.clock.advance(h.settings.sandbox_reveal_after_seconds)
    assert till.request(1000, code=code, trans_key="ORDER1").status is S.COMPLETED
    assert len(h.table("sandbox_charges")) == 1


def test_a_crash_before_the_provider_call_is_resolved_after_the_grace(h: Harness) -> None:
    till = h.till()
    code = h.codes()[0]
    install(h, CrashBeforePay(h.gateway.connectors["sandbox"]))
    created_at = h.clock()
    with pytest.raises(Crash):
        till.request(1000, code=code, trans_key="ORDER1")
    # The payment was written before the provider call; the provider never saw it.
    (row,) = h.table("payments")
    assert (row["status"], row["pending_reason"]) == ("PENDING", "OUTCOME_UNKNOWN")
    assert h.table("sandbox_charges") == []

    h.restart()  # a new process on the same database, with the real sandbox
    grace = h.settings.provider_not_found_grace_seconds
    h.clock.advance(2)
    assert state(till, row["trans_id"]) == UNKNOWN
    assert till.status("ORDER1").status is S.PENDING
    h.clock.now = created_at + timedelta(seconds=grace)
    resolved = till.paycheck(row["trans_id"])
    assert resolved.status is S.FAILED
    assert resolved.failure_code == "NOT_RECEIVED"
    # Nothing was charged, and a retry of the same transKey replays the answer, never charges.
    assert till.request(1000, code=code, trans_key="ORDER1").status is S.FAILED
    assert h.table("sandbox_charges") == []


class RefusingProvider(SilentProvider):
    """A provider that refuses the flow outright: a definite answer, nothing charged."""

    async def pay(self, request: PayRequest) -> ProviderResult:
        self.calls.append("pay")
        raise FlowNotSupported("this provider takes no customer-presented codes")


def test_a_definite_refusal_fails_the_payment_and_replays_the_same_answer(h: Harness) -> None:
    till = h.till()
    code = h.codes()[0]
    install(h, RefusingProvider("n/a"))
    # A refusal is a definite "nothing charged": the payment ends FAILED with the refusal's
    # code, and a retry of the same transKey answers exactly that again.
    first = till.request(1000, code=code, trans_key="ORDER1")
    assert first.status is S.FAILED
    assert first.failure_code == "SERVICE_NOT_SUPPORTED"
    again = till.request(1000, code=code, trans_key="ORDER1")
    assert (again.trans_id, again.status) == (first.trans_id, S.FAILED)
    assert till.status("ORDER1").status is S.FAILED


class RefundLost:
    """Wraps the sandbox; the answer to a refund is lost on the way back."""

    name = "sandbox"

    def __init__(self, inner: object) -> None:
        self.inner = inner

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        raise ConnectionResetError("the refund's answer was lost")

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_refund_with_an_unknown_outcome_keeps_its_amount_reserved(h: Harness) -> None:
    till = h.till()
    paid = till.request(1000)
    install(h, RefundLost(h.gateway.connectors["sandbox"]))
    answer = till.refund(paid.trans_id, 600).payment
    # Not refunded, not failed: the 600 yen stay reserved until the outcome is known.
    assert answer.status is S.COMPLETED
    assert answer.refunded_amount == 0
    assert [r.status.value for r in answer.refunds] == ["PENDING"]
    assert answer.refundable_amount == 400
    with pytest.raises(Conflict) as caught:
        till.refund(paid.trans_id, 401)
    assert caught.value.code == "REFUND_EXCEEDS_REMAINING"
    assert till.refund(paid.trans_id, 400).payment.refundable_amount == 0
    # With everything reserved, the refusal says so (not "a refund of 0 yen exceeds 0 yen").
    with pytest.raises(Conflict) as caught:
        till.refund(paid.trans_id, None)
    assert caught.value.code == "REFUND_EXCEEDS_REMAINING"
    assert "nothing remains to refund" in str(caught.value)


def test_a_customer_code_payment_still_waiting_at_the_give_up_time_is_withdrawn(
    make_harness: Callable[..., Harness],
) -> None:
    # A customer asked to confirm in the wallet who walks away (and pays in cash) must not be
    # charged by a confirmation given later: the payment is withdrawn at the provider and
    # FAILED on the provider's word, and the wallet can no longer approve it.
    h = make_harness()
    till = h.till()
    give_up = h.settings.provider_give_up_seconds
    p = till.request(1000, outcome="password")
    waiting = (S.PENDING, PendingReason.WAITING_FOR_CUSTOMER)
    assert (p.status, p.pending_reason) == waiting
    h.clock.advance(give_up - 1)
    assert state(till, p.trans_id) == waiting
    h.clock.advance(1)
    withdrawn = till.paycheck(p.trans_id)
    assert withdrawn.status is S.FAILED
    assert withdrawn.failure_code == "REVERSED"
    assert withdrawn.failure_message is not None
    assert withdrawn.failure_message.startswith("the customer did not confirm")
    assert h.charge(p.trans_id)["status"] == "CANCELED"  # type: ignore[index]
    assert h.settle(p.trans_id, approve=True) == "CANCELED"
    assert till.paycheck(p.trans_id).status is S.FAILED


def test_the_worker_withdraws_a_customer_code_payment_nobody_confirms(
    make_harness: Callable[..., Harness],
) -> None:
    # Without any PAYCHECK from the terminal, the worker's pass ends the payment.
    h = make_harness()
    p = h.till().request(1000, outcome="password")
    h.clock.advance(h.settings.provider_give_up_seconds)
    report = run(Worker(h.gateway).run_once())
    assert report.finished == 1
    row = h.payment_row(p.trans_id)
    assert (row["status"], row["failure_code"]) == ("FAILED", "REVERSED")


def test_a_qr_code_the_provider_never_made_is_not_shown_as_waiting_for_the_customer(
    fast_h: Harness,
) -> None:
    # Nothing to scan: the terminal must not be told that the customer is the one to act.
    till = fast_h.till()
    install(fast_h, SilentProvider("timeout", "unknown"))
    qr = till.qr(1000)
    assert (qr.status, qr.pending_reason, qr.qr_data) == (*UNKNOWN, None)
    assert state(till, qr.trans_id) == UNKNOWN


def test_a_qr_code_waiting_to_be_scanned_is_not_withdrawn_before_its_deadline(
    make_harness: Callable[..., Harness],
) -> None:
    # The give-up time is for a customer's confirmation; a QR code has its own deadline.
    h = make_harness()
    give_up = h.settings.provider_give_up_seconds
    till = h.till()
    qr = till.qr(1000, ttl_seconds=int(give_up) * 3)
    h.clock.advance(give_up * 2)
    assert state(till, qr.trans_id) == (S.PENDING, PendingReason.WAITING_FOR_CUSTOMER)


@pytest.mark.parametrize("outcome", ["timeout-success", "timeout-failure"])
def test_an_outcome_unknown_past_the_give_up_time_is_reversed_then_failed(
    make_harness: Callable[..., Harness], outcome: str
) -> None:
    h = make_harness(sandbox_reveal_after_seconds=3600)
    till = h.till()
    give_up = h.settings.provider_give_up_seconds
    p = till.request(1000, outcome=outcome)
    h.clock.advance(give_up / 2)
    assert state(till, p.trans_id) == UNKNOWN
    h.clock.advance(give_up / 2)
    # The gateway withdraws the payment at the provider, and fails it only on its confirmation.
    reversed_ = till.paycheck(p.trans_id)
    assert reversed_.status is S.FAILED
    assert reversed_.failure_code == "REVERSED"
    charge = h.charge(p.trans_id)
    assert charge is not None
    assert charge["status"] == "CANCELED"
    # Later truths from the wallet change nothing: no money moved on either side.
    h.clock.advance(7200)
    assert till.paycheck(p.trans_id).status is S.FAILED
    assert h.charge(p.trans_id)["status"] == "CANCELED"  # type: ignore[index]
