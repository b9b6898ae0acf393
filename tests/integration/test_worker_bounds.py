"""A worker job's time bound stops it starting provider calls, never cuts one off.

The bound used to cancel the whole job: a provider call longer than the bound (yet within the
provider timeout) was cut off before its answer was recorded, pass after pass, and refunds were
asked one after another, so one slow refund held back every other. Real seconds here are short
(the provider is slowed by a fraction of a second); the gateway's time is the fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Harness, run

from kessai.connectors.base import ProviderOutcome, ProviderResult, RefundResult
from kessai.domain.model import PaymentStatus, RefundStatus
from kessai.service import worker as worker_module
from kessai.service.worker import MAX_PARALLEL_PROVIDER_CALLS, Worker, WorkerReport

JOB_SECONDS = 0.3
SLOW_SECONDS = 0.8  # longer than the job's bound, well within the provider timeout


class RefundsLost:
    """The sandbox, whose answers to refunds are lost after the refund was made."""

    name = "sandbox"

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        await self.inner.refund(ref, refund_ref, amount)
        raise ConnectionResetError("the answer was lost")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Slow:
    """The sandbox, answering questions about ``slow`` payments after SLOW_SECONDS."""

    name = "sandbox"

    def __init__(self, inner: Any, slow: set[str]) -> None:
        self.inner = inner
        self.slow = slow

    async def refund_sync(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        if ref in self.slow:
            await asyncio.sleep(SLOW_SECONDS)
        result: RefundResult = await self.inner.refund_sync(ref, refund_ref, amount)
        return result

    async def sync(self, ref: str) -> ProviderResult:
        if ref in self.slow:
            await asyncio.sleep(SLOW_SECONDS)
        result: ProviderResult = await self.inner.sync(ref)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _pass(h: Harness) -> WorkerReport:
    async def once() -> WorkerReport:
        worker = Worker(h.gateway)
        try:
            return await worker.run_once()
        finally:
            await worker.aclose()

    return run(once())


def _harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(
        worker_job_seconds=JOB_SECONDS,
        provider_timeout_seconds=10.0,
        sandbox_reveal_after_seconds=1.0,
    )


def test_a_slow_refund_is_settled_and_holds_back_no_other(
    make_harness: Callable[..., Harness],
) -> None:
    h = _harness(make_harness)
    till = h.till()
    paid = [till.request(1000) for _ in range(4)]
    sandbox = h.gateway.connectors["sandbox"]
    h.gateway.connectors["sandbox"] = RefundsLost(sandbox)
    for payment in paid:
        assert [r.status for r in till.refund(payment.trans_id, 100).payment.refunds] == [
            RefundStatus.PENDING
        ]
    h.gateway.connectors["sandbox"] = Slow(sandbox, {paid[0].trans_id})  # type: ignore[assignment]
    h.clock.advance(h.settings.worker_recheck_interval_ms / 1000)
    report = _pass(h)
    assert report.errors == []
    for payment in paid:
        refunds = h.stored(till.shop.merchant_id, payment.trans_id).refunds
        assert [r.status for r in refunds] == [RefundStatus.SUCCEEDED], payment.trans_id


def test_a_payment_whose_provider_answers_after_the_bound_is_settled(
    make_harness: Callable[..., Harness],
) -> None:
    h = _harness(make_harness)
    till = h.till()
    unknown = till.request(1000, outcome="timeout-success")
    assert unknown.status is PaymentStatus.PENDING
    h.gateway.connectors["sandbox"] = Slow(h.gateway.connectors["sandbox"], {unknown.trans_id})  # type: ignore[assignment]
    h.clock.advance(5)
    report = _pass(h)
    assert report.errors == []
    assert report.finished == 1
    assert h.payment_row(unknown.trans_id)["status"] == "COMPLETED"


def test_payments_the_pass_did_not_get_to_are_given_back_at_once(
    make_harness: Callable[..., Harness],
) -> None:
    # Ten slow questions take the whole bound; the rest of the batch is released, not left
    # leased for the batch's lease (minutes), and the next pass asks about them.
    h = _harness(make_harness)
    till = h.till()
    count = MAX_PARALLEL_PROVIDER_CALLS + 3
    pending = [till.request(1000, outcome="timeout-success") for _ in range(count)]
    slow = {p.trans_id for p in pending}
    h.gateway.connectors["sandbox"] = Slow(h.gateway.connectors["sandbox"], slow)  # type: ignore[assignment]
    h.clock.advance(5)
    first = _pass(h)
    assert (first.checked, first.finished, first.deferred) == (count, 10, 3)
    assert first.busy
    h.clock.advance(h.settings.worker_recheck_interval_ms / 1000)
    second = _pass(h)
    assert (second.checked, second.finished) == (3, 3)
    assert {h.payment_row(p.trans_id)["status"] for p in pending} == {"COMPLETED"}


RESEND_CALL = 0.95  # each of the two calls within the provider timeout (1 s)


class NeverArrived:
    """A refund the wallet never received; asked about, then sent again, each call slowly."""

    name = "sandbox"

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.phase = "lost"

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        if self.phase == "lost":
            raise ConnectionResetError("the request never reached the wallet")
        await asyncio.sleep(RESEND_CALL)
        return await self.inner.refund(ref, refund_ref, amount)

    async def refund_sync(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        await asyncio.sleep(RESEND_CALL)
        return RefundResult(ProviderOutcome.NOT_FOUND)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_refund_the_worker_sends_again_is_recorded(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two calls of nearly the provider timeout each: the job's bound must allow for both.
    monkeypatch.setattr(worker_module, "RECORD_MARGIN_SECONDS", 0.5)  # 5 s in production
    h = make_harness(worker_job_seconds=0.3, provider_timeout_seconds=1.0)
    till = h.till()
    paid = till.request(1000)
    wrapper = NeverArrived(h.gateway.connectors["sandbox"])
    h.gateway.connectors["sandbox"] = wrapper  # type: ignore[assignment]
    assert [r.status for r in till.refund(paid.trans_id, 100).payment.refunds] == [
        RefundStatus.PENDING
    ]
    wrapper.phase = "slow"
    h.clock.advance(h.settings.provider_not_found_grace_seconds + 5)

    report = _pass(h)
    refunds = h.stored(till.shop.merchant_id, paid.trans_id).refunds
    assert report.errors == [], report.errors
    assert [r.status for r in refunds] == [RefundStatus.SUCCEEDED]
