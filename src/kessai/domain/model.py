"""Payments, refunds and the one state machine that governs them.

A payment moves only along ``TRANSITIONS``. Terminal states never change again, and the refunded
amount never exceeds the paid amount: both are asserted where they must hold, with explicit checks
that survive ``python -O``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Final

from kessai.domain.errors import Conflict, InternalError


class PaymentStatus(enum.StrEnum):
    """Where a payment stands; the wire carries these names."""

    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELED = "CANCELED"


class PendingReason(enum.StrEnum):
    """Why a PENDING payment is not final yet."""

    # The wallet needs the customer: a password in the app, or a QR code not yet scanned.
    WAITING_FOR_CUSTOMER = "WAITING_FOR_CUSTOMER"
    # The provider's answer is not known yet: the call is in flight or it timed out.
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"


class PaymentKind(enum.StrEnum):
    """Which flow created the payment."""

    CUSTOMER_CODE = "CUSTOMER_CODE"  # REQUEST: the terminal scanned the customer's code
    MERCHANT_QR = "MERCHANT_QR"  # GET-QR-CODE: the customer scans the terminal's code


class RefundStatus(enum.StrEnum):
    """Where one refund stands."""

    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


S = PaymentStatus

# The whole state machine. A status absent from the keys has no way out: it is terminal.
TRANSITIONS: Final[dict[PaymentStatus, frozenset[PaymentStatus]]] = {
    S.PENDING: frozenset({S.PENDING, S.COMPLETED, S.FAILED, S.EXPIRED, S.CANCELED}),
    S.COMPLETED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
    S.PARTIALLY_REFUNDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED}),
}
TERMINAL_STATUSES: Final = frozenset(s for s in PaymentStatus if s not in TRANSITIONS)
REFUNDABLE_STATUSES: Final = frozenset({S.COMPLETED, S.PARTIALLY_REFUNDED})
# A voucher number links a shop's slip to money that moved (or may still move).
VOUCHER_EDITABLE_STATUSES: Final = frozenset(
    {S.PENDING, S.COMPLETED, S.PARTIALLY_REFUNDED, S.REFUNDED}
)

# Money limits, in integer yen. Wallets in Japan cap a single payment well below this.
MIN_AMOUNT_YEN: Final = 1
MAX_AMOUNT_YEN: Final = 9_999_999
# The number of refunds one payment may have, so that a loop of tiny refunds cannot grow a row set
# without bound.
MAX_REFUNDS_PER_PAYMENT: Final = 100


def can_transition(current: PaymentStatus, target: PaymentStatus) -> bool:
    """Tell whether the state machine allows ``current`` → ``target``."""
    return target in TRANSITIONS.get(current, frozenset())


def check_transition(current: PaymentStatus, target: PaymentStatus) -> None:
    """Raise InternalError for a transition not in the table: a programmer error."""
    if not can_transition(current, target):
        raise InternalError(f"forbidden payment transition {current} -> {target}")


@dataclass(frozen=True, slots=True)
class Refund:
    """One refund of a payment; its amount is reserved from the moment it is PENDING."""

    refund_id: str
    refund_key: str
    amount: int
    status: RefundStatus
    created_at: datetime
    updated_at: datetime
    failure_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Payment:
    """A payment as the domain sees it. Immutable: every change makes a new value."""

    trans_id: str
    trans_key: str
    merchant_id: int
    terminal_id: int
    kind: PaymentKind
    service_id: str
    amount: int
    status: PaymentStatus
    created_at: datetime
    updated_at: datetime
    version: int = 1
    pending_reason: PendingReason | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    refunded_amount: int = 0
    voucher_no: str | None = None
    code_masked: str | None = None
    qr_data: str | None = None
    qr_expires_at: datetime | None = None
    refunds: tuple[Refund, ...] = field(default=())

    def __post_init__(self) -> None:
        # Invariants that must hold for every value ever built, whatever path built it.
        if not MIN_AMOUNT_YEN <= self.amount <= MAX_AMOUNT_YEN:
            raise InternalError(f"payment {self.trans_id} amount {self.amount} out of bounds")
        if not 0 <= self.refunded_amount <= self.amount:
            raise InternalError(f"payment {self.trans_id} refunded more than paid")
        if (self.status is S.PENDING) != (self.pending_reason is not None):
            raise InternalError(f"payment {self.trans_id} pending reason does not match status")
        if (self.status is S.REFUNDED) != (self.refunded_amount == self.amount):
            raise InternalError(f"payment {self.trans_id} REFUNDED must mean refunded in full")
        refunded_status = self.status in (S.PARTIALLY_REFUNDED, S.REFUNDED)
        if refunded_status != (self.refunded_amount > 0):
            raise InternalError(f"payment {self.trans_id} refunded amount does not match status")

    @property
    def reserved_refund_amount(self) -> int:
        """Refunds not yet settled at the provider; their amounts cannot be refunded twice."""
        return sum(r.amount for r in self.refunds if r.status is RefundStatus.PENDING)

    @property
    def refundable_amount(self) -> int:
        """What a new refund may still take."""
        if self.status not in REFUNDABLE_STATUSES:
            return 0
        return self.amount - self.refunded_amount - self.reserved_refund_amount

    def moved_to(
        self,
        status: PaymentStatus,
        now: datetime,
        *,
        pending_reason: PendingReason | None = None,
        failure_code: str | None = None,
        failure_message: str | None = None,
        qr_data: str | None = None,
    ) -> Payment:
        """Return this payment in ``status``; forbidden transitions are programmer errors.

        ``qr_data`` replaces the QR code's payload when given.
        """
        check_transition(self.status, status)
        # Built field by field rather than with dataclasses.replace, which inspects the fields
        # on every call: this runs on every payment's every change.
        return Payment(
            trans_id=self.trans_id,
            trans_key=self.trans_key,
            merchant_id=self.merchant_id,
            terminal_id=self.terminal_id,
            kind=self.kind,
            service_id=self.service_id,
            amount=self.amount,
            status=status,
            created_at=self.created_at,
            updated_at=now,
            version=self.version + 1,
            pending_reason=pending_reason if status is S.PENDING else None,
            failure_code=failure_code,
            failure_message=failure_message,
            refunded_amount=self.refunded_amount,
            voucher_no=self.voucher_no,
            code_masked=self.code_masked,
            qr_data=self.qr_data if qr_data is None else qr_data,
            qr_expires_at=self.qr_expires_at,
            refunds=self.refunds,
        )

    def with_refund_settled(self, refund: Refund, now: datetime) -> Payment:
        """Apply a refund that the provider confirmed; the payment becomes (partially) refunded."""
        if refund.status is not RefundStatus.SUCCEEDED:
            raise InternalError("only a succeeded refund moves money")
        refunded = self.refunded_amount + refund.amount
        if refunded > self.amount:
            raise InternalError(f"payment {self.trans_id} would be refunded more than paid")
        target = S.REFUNDED if refunded == self.amount else S.PARTIALLY_REFUNDED
        check_transition(self.status, target)
        refunds = tuple(refund if r.refund_id == refund.refund_id else r for r in self.refunds)
        return replace(
            self,
            status=target,
            refunded_amount=refunded,
            refunds=refunds,
            updated_at=now,
            version=self.version + 1,
        )


def require_refundable(payment: Payment, amount: int | None) -> int:
    """Return the amount a new refund takes (all that remains when ``amount`` is None).

    Raises Conflict with a code that says why the refund cannot be made.
    """
    if payment.status not in REFUNDABLE_STATUSES:
        raise Conflict(
            f"payment {payment.trans_id} is {payment.status}; only COMPLETED or "
            "PARTIALLY_REFUNDED payments can be refunded",
            code="PAYMENT_NOT_REFUNDABLE",
            field="transId",
        )
    if len(payment.refunds) >= MAX_REFUNDS_PER_PAYMENT:
        raise Conflict(
            f"payment {payment.trans_id} already has {MAX_REFUNDS_PER_PAYMENT} refunds",
            code="REFUND_EXCEEDS_REMAINING",
            field="amount",
        )
    remaining = payment.refundable_amount
    if remaining == 0 and payment.refunds:
        # Everything is refunded or reserved by refunds still waiting for the wallet's word.
        raise Conflict(
            f"nothing remains to refund on payment {payment.trans_id}: its refunds take the "
            "whole amount (some may still await the wallet's answer)",
            code="REFUND_EXCEEDS_REMAINING",
            field="amount",
        )
    take = remaining if amount is None else amount
    if take < MIN_AMOUNT_YEN or take > remaining:
        raise Conflict(
            f"refund of {take} yen exceeds the {remaining} yen that remain to refund",
            code="REFUND_EXCEEDS_REMAINING",
            field="amount",
        )
    return take
