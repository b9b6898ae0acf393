"""Refunds whose answer was lost: the worker asks the provider and settles them."""

from __future__ import annotations

from conftest import Harness, run

from kessai.connectors.base import RefundResult
from kessai.domain.model import PaymentStatus as S
from kessai.domain.model import RefundStatus
from kessai.service.worker import Worker


class AnswerLost:
    """Wraps the sandbox; refunds happen (or not) at the wallet, but their answers are lost."""

    name = "sandbox"

    def __init__(self, inner: object, *, refund_happens: bool) -> None:
        self.inner = inner
        self.refund_happens = refund_happens

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        if self.refund_happens:
            await self.inner.refund(ref, refund_ref, amount)  # type: ignore[attr-defined]
        raise ConnectionResetError("the refund's answer was lost")

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _worker_pass(h: Harness) -> None:
    async def once() -> None:
        worker = Worker(h.gateway)
        try:
            await worker.run_once()
        finally:
            await worker.aclose()

    run(once())


def test_a_refund_that_happened_is_settled_by_the_worker(h: Harness) -> None:
    till = h.till()
    paid = till.request(1000)
    sandbox = h.gateway.connectors["sandbox"]
    h.gateway.connectors["sandbox"] = AnswerLost(sandbox, refund_happens=True)  # type: ignore[assignment]
    pending = till.refund(paid.trans_id, 600).payment
    assert [r.status for r in pending.refunds] == [RefundStatus.PENDING]
    h.gateway.connectors["sandbox"] = sandbox
    h.clock.advance(h.gateway.settings.worker_recheck_interval_ms / 1000)
    _worker_pass(h)
    after = till.paycheck(paid.trans_id)
    assert after.status is S.PARTIALLY_REFUNDED
    assert after.refunded_amount == 600
    assert [r.status for r in after.refunds] == [RefundStatus.SUCCEEDED]
    assert h.charge(paid.trans_id)["refunded_amount"] == 600


def test_a_refund_that_never_arrived_is_sent_again_after_the_grace(h: Harness) -> None:
    till = h.till()
    paid = till.request(1000)
    sandbox = h.gateway.connectors["sandbox"]
    h.gateway.connectors["sandbox"] = AnswerLost(sandbox, refund_happens=False)  # type: ignore[assignment]
    pending = till.refund(paid.trans_id, 600).payment
    assert pending.refundable_amount == 400
    h.gateway.connectors["sandbox"] = sandbox
    # Within the grace period "not found" may mean "still on its way": nothing changes.
    h.clock.advance(h.gateway.settings.worker_recheck_interval_ms / 1000)
    _worker_pass(h)
    assert [r.status for r in till.paycheck(paid.trans_id).refunds] == [RefundStatus.PENDING]
    # After it, the refund is sent again under the same refund id, and settles.
    h.clock.advance(h.gateway.settings.provider_not_found_grace_seconds)
    _worker_pass(h)
    after = till.paycheck(paid.trans_id)
    assert after.status is S.PARTIALLY_REFUNDED
    assert [r.status for r in after.refunds] == [RefundStatus.SUCCEEDED]
    assert h.charge(paid.trans_id)["refunded_amount"] == 600


class SlowAnswer:
    """Wraps the sandbox; a refund is made at once, but its answer arrives only after a worker
    pass has already asked the wallet about the refund (still PENDING in the books) and settled it.
    """

    name = "sandbox"

    def __init__(self, inner: object, h: Harness) -> None:
        self.inner = inner
        self.h = h

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        answer: RefundResult = await self.inner.refund(ref, refund_ref, amount)  # type: ignore[attr-defined]
        self.h.clock.advance(self.h.gateway.settings.worker_recheck_interval_ms / 1000)
        worker = Worker(self.h.gateway)
        try:
            await worker.run_once()
        finally:
            await worker.aclose()
        return answer

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_refund_settled_by_the_worker_during_its_own_call_counts_once(h: Harness) -> None:
    till = h.till()
    paid = till.request(1000)
    sandbox = h.gateway.connectors["sandbox"]
    h.gateway.connectors["sandbox"] = SlowAnswer(sandbox, h)  # type: ignore[assignment]
    answered = till.refund(paid.trans_id, 400).payment
    h.gateway.connectors["sandbox"] = sandbox
    assert (answered.status, answered.refunded_amount) == (S.PARTIALLY_REFUNDED, 400)
    after = till.paycheck(paid.trans_id)
    assert (after.refunded_amount, after.refundable_amount) == (400, 600)
    assert [r.status for r in after.refunds] == [RefundStatus.SUCCEEDED]
    assert h.charge(paid.trans_id)["refunded_amount"] == 400
