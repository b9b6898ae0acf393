"""Every state change of a payment writes its audit event, in the same transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from kessai.domain.errors import Conflict
from kessai.domain.model import PaymentStatus, PendingReason

if TYPE_CHECKING:
    from conftest import Harness

S = PaymentStatus

LIFECYCLE = [
    # action, from_status, to_status, actor kind
    ("payment.created", None, "PENDING", "terminal"),
    ("payment.completed", "PENDING", "COMPLETED", "provider"),
    ("refund.requested", "COMPLETED", "COMPLETED", "terminal"),
    ("refund.succeeded", "COMPLETED", "PARTIALLY_REFUNDED", "provider"),
    ("payment.voucher_set", None, None, "terminal"),
]


def trail(h: Harness, trans_id: str) -> list[tuple[Any, ...]]:
    return [(e["action"], e["from_status"], e["to_status"]) for e in h.audit(trans_id)]


def test_full_lifecycle_writes_one_audit_event_per_state_change(h: Harness) -> None:
    till = h.till()
    paid = till.request(1000)
    assert paid.status is S.COMPLETED
    refunded = till.refund(paid.trans_id, 300).payment
    assert refunded.status is S.PARTIALLY_REFUNDED
    vouchered = till.voucher(paid.trans_id, "SLIP-0001")
    assert vouchered.voucher_no == "SLIP-0001"

    events = h.audit(paid.trans_id)
    assert [(e["action"], e["from_status"], e["to_status"]) for e in events] == [
        (action, before, after) for action, before, after, _ in LIFECYCLE
    ]
    for event, (_, _, _, actor) in zip(events, LIFECYCLE, strict=True):
        expected = f"terminal:{till.shop.mid}" if actor == "terminal" else "provider:sandbox"
        assert event["actor"] == expected
        assert event["merchant_id"] == till.shop.merchant_id
        assert event["request_id"]
        assert event["at"] == h.clock()
    # One event per version: the row was written exactly as many times as it was audited.
    assert len(events) == h.payment_row(paid.trans_id)["version"] == 5

    till.refund(paid.trans_id)  # the rest
    assert [a for a, _, _ in trail(h, paid.trans_id)][-2:] == [
        "refund.requested",
        "refund.succeeded",
    ]
    assert trail(h, paid.trans_id)[-1] == ("refund.succeeded", "PARTIALLY_REFUNDED", "REFUNDED")
    assert len(h.audit(paid.trans_id)) == h.payment_row(paid.trans_id)["version"] == 7


def test_declined_and_waiting_payments_are_audited_too(h: Harness) -> None:
    till = h.till()
    declined = till.request(500, outcome="declined")
    assert declined.status is S.FAILED
    assert trail(h, declined.trans_id) == [
        ("payment.created", None, "PENDING"),
        ("payment.failed", "PENDING", "FAILED"),
    ]
    waiting = till.request(700, outcome="password")
    assert waiting.pending_reason is PendingReason.WAITING_FOR_CUSTOMER
    h.settle(waiting.trans_id, approve=True)
    h.clock.advance(2)
    assert till.paycheck(waiting.trans_id).status is S.COMPLETED
    assert trail(h, waiting.trans_id) == [
        ("payment.created", None, "PENDING"),
        ("payment.waiting", "PENDING", "PENDING"),
        ("payment.completed", "PENDING", "COMPLETED"),
    ]


def test_replays_write_nothing(h: Harness) -> None:
    till = h.till()
    code = h.codes()[0]
    first = till.request(1000, code=code, trans_key="ORDER1")
    again = till.request(1000, code=code, trans_key="ORDER1")
    assert again.trans_id == first.trans_id
    assert again.status is S.COMPLETED
    with pytest.raises(Conflict) as caught:
        till.request(1001, code=code, trans_key="ORDER1")
    assert caught.value.code == "IDEMPOTENCY_CONFLICT"
    till.refund(first.trans_id, 100, refund_key="RK1")
    till.refund(first.trans_id, 100, refund_key="RK1")
    till.voucher(first.trans_id, "V1")
    till.voucher(first.trans_id, "V1")
    assert [a for a, _, _ in trail(h, first.trans_id)] == [
        "payment.created",
        "payment.completed",
        "refund.requested",
        "refund.succeeded",
        "payment.voucher_set",
    ]
    assert len(h.table("sandbox_charges")) == 1
    assert len(h.table("sandbox_refunds")) == 1


# --- Atomicity: a state change without its audit event never commits ---------------------------


def fail_audit(h: Harness, action: str) -> None:
    h.db.run_sync(
        lambda conn: conn.exec_driver_sql(
            f"CREATE TRIGGER test_fail_audit BEFORE INSERT ON audit_events "
            f"WHEN NEW.action = '{action}' "
            "BEGIN SELECT RAISE(ABORT, 'injected audit failure'); END"
        )
    )


def heal_audit(h: Harness) -> None:
    h.db.run_sync(lambda conn: conn.exec_driver_sql("DROP TRIGGER test_fail_audit"))


def books(h: Harness) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    return h.table("payments"), h.table("refunds"), len(h.table("audit_events"))


def test_payment_is_not_created_without_its_audit_event(h: Harness) -> None:
    till = h.till()
    fail_audit(h, "payment.created")
    with pytest.raises(sa.exc.IntegrityError):
        till.request(1000, trans_key="ORDER1")
    assert h.table("payments") == []
    assert h.table("sandbox_charges") == []


class Elsewhere:
    """The sandbox as a provider outside our database: asked in a hop of its own."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "pay_within":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_an_in_database_charge_is_undone_with_its_unrecorded_completion(h: Harness) -> None:
    # The sandbox's books are in our database: the charge, the payment and its audit trail
    # commit together or not at all.
    till = h.till()
    fail_audit(h, "payment.completed")
    with pytest.raises(sa.exc.IntegrityError):
        till.request(1000, trans_key="ORDER1")
    assert h.table("payments") == []
    assert h.table("sandbox_charges") == []
    heal_audit(h)
    assert till.request(1000, trans_key="ORDER1").status is S.COMPLETED


def test_completion_is_not_recorded_without_its_audit_event(h: Harness) -> None:
    till = h.till()
    h.gateway.connectors["sandbox"] = Elsewhere(h.gateway.connectors["sandbox"])  # type: ignore[assignment]
    fail_audit(h, "payment.completed")
    with pytest.raises(sa.exc.IntegrityError):
        till.request(1000, trans_key="ORDER1")
    (row,) = h.table("payments")
    assert (row["status"], row["pending_reason"], row["version"]) == (
        "PENDING",
        "OUTCOME_UNKNOWN",
        1,
    )
    assert trail(h, row["trans_id"]) == [("payment.created", None, "PENDING")]
    # Once the audit trail works again, PAYCHECK learns the outcome from the provider.
    heal_audit(h)
    h.clock.advance(2)
    assert till.paycheck(row["trans_id"]).status is S.COMPLETED
    assert [a for a, _, _ in trail(h, row["trans_id"])] == ["payment.created", "payment.completed"]


@pytest.mark.parametrize("action", ["refund.requested", "refund.succeeded"])
def test_refund_is_not_recorded_without_its_audit_event(h: Harness, action: str) -> None:
    till = h.till()
    paid = till.request(1000)
    before_payments, before_refunds, before_events = books(h)
    fail_audit(h, action)
    with pytest.raises(sa.exc.IntegrityError):
        till.refund(paid.trans_id, 400)
    payments, refunds, events = books(h)
    assert payments[0]["refunded_amount"] == 0
    assert payments[0]["status"] == "COMPLETED"
    if action == "refund.requested":
        assert (payments, refunds, events) == (before_payments, before_refunds, before_events)
    else:
        # The reservation committed (with its own event); the settlement did not.
        assert [r["status"] for r in refunds] == ["PENDING"]
        assert [a for a, _, _ in trail(h, paid.trans_id)][-1] == "refund.requested"
        assert payments[0]["version"] == before_payments[0]["version"] + 1


def test_voucher_is_not_set_without_its_audit_event(h: Harness) -> None:
    till = h.till()
    paid = till.request(1000)
    before = books(h)
    fail_audit(h, "payment.voucher_set")
    with pytest.raises(sa.exc.IntegrityError):
        till.voucher(paid.trans_id, "SLIP-1")
    assert books(h) == before
    heal_audit(h)
    assert till.voucher(paid.trans_id, "SLIP-1").voucher_no == "SLIP-1"
