"""GET-QR-CODE and the QR code's deadline, crossed with the fake clock."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from kessai.connectors.base import ProviderOutcome, ProviderResult
from kessai.domain.errors import InvalidRequest
from kessai.domain.model import PaymentKind, PaymentStatus, PendingReason

if TYPE_CHECKING:
    from conftest import Harness

S = PaymentStatus
TTL = 60


def test_qr_code_is_pending_waiting_for_the_customer_from_the_start(h: Harness) -> None:
    till = h.till()
    qr = till.qr(1200, ttl_seconds=TTL)
    assert qr.kind is PaymentKind.MERCHANT_QR
    assert qr.status is S.PENDING
    assert qr.pending_reason is PendingReason.WAITING_FOR_CUSTOMER
    assert qr.qr_data
    assert qr.qr_data.startswith(h.settings.public_url)
    assert qr.qr_expires_at == h.clock() + timedelta(seconds=TTL)
    h.clock.advance(TTL - 1)
    again = till.paycheck(qr.trans_id)
    assert again.status is S.PENDING
    assert again.pending_reason is PendingReason.WAITING_FOR_CUSTOMER
    assert h.charge(qr.trans_id)["status"] == "WAITING"  # type: ignore[index]


@pytest.mark.parametrize("late_by", [0, 1, 3600])
def test_unpaid_qr_code_expires_and_is_withdrawn(h: Harness, late_by: int) -> None:
    till = h.till()
    qr = till.qr(1200, ttl_seconds=TTL)
    h.clock.advance(TTL + late_by)
    expired = till.paycheck(qr.trans_id)
    assert expired.status is S.EXPIRED
    assert expired.failure_code == "QR_EXPIRED"
    assert expired.pending_reason is None
    charge = h.charge(qr.trans_id)
    assert charge is not None
    assert charge["status"] == "EXPIRED"
    # The customer is too late: the wallet refuses, and the books do not move.
    assert h.settle(qr.trans_id, approve=True) == "EXPIRED"
    h.clock.advance(5)
    assert till.paycheck(qr.trans_id).status is S.EXPIRED
    actions = [e["action"] for e in h.audit(qr.trans_id)]
    assert actions[-1] == "payment.expired"
    assert actions.count("payment.expired") == 1


def test_qr_approved_just_before_expiry_completes_even_if_checked_after(h: Harness) -> None:
    till = h.till()
    qr = till.qr(1200, ttl_seconds=TTL)
    h.clock.advance(TTL - 1)
    assert h.settle(qr.trans_id, approve=True) == "SUCCEEDED"
    h.clock.advance(30)  # PAYCHECK comes well after the deadline
    paid = till.paycheck(qr.trans_id)
    assert paid.status is S.COMPLETED
    assert paid.failure_code is None
    charge = h.charge(qr.trans_id)
    assert charge is not None
    assert (charge["status"], charge["refunded_amount"]) == ("SUCCEEDED", 0)
    # And it can be refunded like any payment.
    assert till.refund(qr.trans_id).payment.status is S.REFUNDED


def test_qr_approved_after_expiry_is_refused_by_the_wallet(h: Harness) -> None:
    till = h.till()
    qr = till.qr(1200, ttl_seconds=TTL)
    h.clock.advance(TTL)
    assert h.settle(qr.trans_id, approve=True) == "EXPIRED"
    h.clock.advance(1)
    assert till.paycheck(qr.trans_id).status is S.EXPIRED


def test_qr_declined_by_the_customer_fails(h: Harness) -> None:
    till = h.till()
    qr = till.qr(1200, ttl_seconds=TTL)
    h.clock.advance(10)
    assert h.settle(qr.trans_id, approve=False) == "FAILED"
    h.clock.advance(1)
    declined = till.paycheck(qr.trans_id)
    assert declined.status is S.FAILED
    assert declined.failure_code == "CUSTOMER_DECLINED"
    # A later PAYCHECK past the deadline does not turn FAILED into EXPIRED.
    h.clock.advance(TTL)
    assert till.paycheck(qr.trans_id).status is S.FAILED


def test_status_by_trans_key_expires_the_code_too(h: Harness) -> None:
    till = h.till()
    till.qr(800, ttl_seconds=TTL, trans_key="QRORDER1")
    h.clock.advance(TTL + 1)
    assert till.status("QRORDER1").status is S.EXPIRED


@pytest.mark.parametrize("ttl", [29, 1801, 0, -1])
def test_qr_lifetime_outside_bounds_is_refused(h: Harness, ttl: int) -> None:
    till = h.till()
    with pytest.raises(InvalidRequest) as caught:
        till.qr(800, ttl_seconds=ttl)
    assert caught.value.field == "ttlSeconds"
    assert h.table("payments") == []


class ForgetsExpiredCodes:
    """A provider that forgets a lapsed code (as PayPay does): "not found", even to cancel."""

    name = "sandbox"

    def __init__(self, inner: object) -> None:
        self.inner = inner

    async def cancel(self, ref: str) -> ProviderResult:
        return ProviderResult(ProviderOutcome.NOT_FOUND, provider_ref=ref)

    async def sync(self, ref: str) -> ProviderResult:
        return ProviderResult(ProviderOutcome.NOT_FOUND, provider_ref=ref)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_code_the_provider_forgot_after_expiry_is_expired_not_failed(h: Harness) -> None:
    till = h.till()
    qr = till.qr(500, ttl_seconds=TTL)
    h.gateway.connectors["sandbox"] = ForgetsExpiredCodes(h.gateway.connectors["sandbox"])  # type: ignore[assignment]
    h.clock.advance(TTL + 1)
    after = till.paycheck(qr.trans_id)
    assert after.status is PaymentStatus.EXPIRED
    assert after.failure_code == "QR_EXPIRED"
