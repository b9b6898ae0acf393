"""Typed results of the terminal API: payments, refunds, identified services, recovery reports.

Parsing is pessimistic: a status this SDK does not know is read as PENDING (outcome unknown),
never as paid or failed, so that a newer gateway cannot make an older terminal hand out goods
or turn a customer away by mistake.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from kessai.client.exceptions import ProtocolError


class PaymentStatus(enum.StrEnum):
    """Where a payment stands at the gateway."""

    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    CANCELED = "CANCELED"


class PendingReason(enum.StrEnum):
    """Why a PENDING payment is not final yet."""

    WAITING_FOR_CUSTOMER = "WAITING_FOR_CUSTOMER"  # a password in the app, or a QR not scanned
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"  # the wallet has not answered yet


class PaymentKind(enum.StrEnum):
    """Which flow created the payment."""

    CUSTOMER_CODE = "CUSTOMER_CODE"  # pay(): the terminal scanned the customer's code
    MERCHANT_QR = "MERCHANT_QR"  # qr_code(): the customer scans the terminal's code


class RefundStatus(enum.StrEnum):
    """Where one refund stands."""

    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


PAID_STATUSES: Final = frozenset(
    {PaymentStatus.COMPLETED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
)
UNPAID_STATUSES: Final = frozenset(
    {PaymentStatus.FAILED, PaymentStatus.EXPIRED, PaymentStatus.CANCELED}
)


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ProtocolError(f"the gateway's answer lacks the text field {name}")
    return value


def _optional_text(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"the gateway's answer has a non-text {name}")
    return value


def _yen(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    # bool is an int in Python; a JSON true is never an amount.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"the gateway's answer lacks the integer field {name}")
    return value


def _time(data: Mapping[str, Any], name: str) -> datetime:
    value = _text(data, name)
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise ProtocolError(f"the gateway's answer has a malformed time in {name}") from exc


def _optional_time(data: Mapping[str, Any], name: str) -> datetime | None:
    return None if data.get(name) is None else _time(data, name)


@dataclass(frozen=True, slots=True)
class Refund:
    """One refund of a payment; ``refund_key`` is the idempotency key the SDK sent."""

    refund_id: str
    refund_key: str
    amount: int
    status: RefundStatus
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Refund:
        """Read a refund from the gateway's JSON."""
        raw = _text(data, "status")
        # An unknown refund status stays PENDING: its amount is reserved, not yet given back.
        status = RefundStatus(raw) if raw in RefundStatus.__members__ else RefundStatus.PENDING
        return cls(
            refund_id=_text(data, "refundId"),
            refund_key=_text(data, "refundKey"),
            amount=_yen(data, "amount"),
            status=status,
            failure_reason=_optional_text(data, "failureReason"),
            created_at=_time(data, "createdAt"),
            updated_at=_time(data, "updatedAt"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The refund in the gateway's wire names (for JSON output)."""
        return {
            "refundId": self.refund_id,
            "refundKey": self.refund_key,
            "amount": self.amount,
            "status": self.status.value,
            "failureReason": self.failure_reason,
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class QrImage:
    """Paths of the gateway that serve the payment's QR code as images (same session)."""

    png: str
    svg: str


@dataclass(frozen=True, slots=True)
class Payment:
    """A payment as the gateway reported it. Amounts are integer yen."""

    trans_id: str
    trans_key: str
    kind: PaymentKind
    service_id: str
    service_name: str
    amount: int
    currency: str
    status: PaymentStatus
    pending_reason: PendingReason | None
    failure_code: str | None
    failure_message: str | None
    refunded_amount: int
    refundable_amount: int
    voucher_no: str | None
    code_masked: str | None
    qr_data: str | None
    qr_expires_at: datetime | None
    qr_image: QrImage | None
    refunds: tuple[Refund, ...]
    created_at: datetime
    updated_at: datetime
    replayed: bool = field(default=False, compare=False)

    @classmethod
    def from_wire(cls, data: Any, *, replayed: bool = False) -> Payment:
        """Read a payment from the gateway's JSON; ProtocolError when it is not one."""
        if not isinstance(data, Mapping):
            raise ProtocolError("the gateway's answer is not a JSON object")
        raw_status = _text(data, "status")
        raw_reason = _optional_text(data, "pendingReason")
        if raw_status in PaymentStatus.__members__:
            status = PaymentStatus(raw_status)
            reason: PendingReason | None = None
            if status is PaymentStatus.PENDING:
                reason = (
                    PendingReason(raw_reason)
                    if raw_reason is not None and raw_reason in PendingReason.__members__
                    else PendingReason.OUTCOME_UNKNOWN
                )
        else:
            status, reason = PaymentStatus.PENDING, PendingReason.OUTCOME_UNKNOWN
        raw_kind = _text(data, "kind")
        kind = (
            PaymentKind(raw_kind)
            if raw_kind in PaymentKind.__members__
            else PaymentKind.CUSTOMER_CODE
        )
        image = data.get("qrImage")
        refunds = data.get("refunds") or []
        if not isinstance(refunds, list):
            raise ProtocolError("the gateway's answer has a malformed refunds list")
        return cls(
            trans_id=_text(data, "transId"),
            trans_key=_text(data, "transKey"),
            kind=kind,
            service_id=_text(data, "serviceId"),
            service_name=_optional_text(data, "serviceName") or _text(data, "serviceId"),
            amount=_yen(data, "amount"),
            currency=_optional_text(data, "currency") or "JPY",
            status=status,
            pending_reason=reason,
            failure_code=_optional_text(data, "failureCode"),
            failure_message=_optional_text(data, "failureMessage"),
            refunded_amount=_yen(data, "refundedAmount"),
            refundable_amount=_yen(data, "refundableAmount"),
            voucher_no=_optional_text(data, "voucherNo"),
            code_masked=_optional_text(data, "codeMasked"),
            qr_data=_optional_text(data, "qrData"),
            qr_expires_at=_optional_time(data, "qrExpiresAt"),
            qr_image=QrImage(_text(image, "png"), _text(image, "svg"))
            if isinstance(image, Mapping)
            else None,
            refunds=tuple(Refund.from_wire(r) for r in refunds),
            created_at=_time(data, "createdAt"),
            updated_at=_time(data, "updatedAt"),
            replayed=replayed,
        )

    @property
    def is_final(self) -> bool:
        """True once the payment's outcome is known (it is no longer PENDING)."""
        return self.status is not PaymentStatus.PENDING

    @property
    def is_paid(self) -> bool:
        """True when the customer paid (refunds since then do not change that)."""
        return self.status in PAID_STATUSES

    @property
    def is_unpaid(self) -> bool:
        """True only on the gateway's definite word that nothing was charged."""
        return self.status in UNPAID_STATUSES

    def refund_by_key(self, refund_key: str) -> Refund | None:
        """The refund sent with ``refund_key``, if the gateway has it."""
        return next((r for r in self.refunds if r.refund_key == refund_key), None)

    def to_dict(self) -> dict[str, Any]:
        """The payment in the gateway's wire names (for JSON output)."""
        return {
            "transId": self.trans_id,
            "transKey": self.trans_key,
            "kind": self.kind.value,
            "serviceId": self.service_id,
            "serviceName": self.service_name,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status.value,
            "pendingReason": self.pending_reason.value if self.pending_reason else None,
            "failureCode": self.failure_code,
            "failureMessage": self.failure_message,
            "refundedAmount": self.refunded_amount,
            "refundableAmount": self.refundable_amount,
            "voucherNo": self.voucher_no,
            "codeMasked": self.code_masked,
            "qrData": self.qr_data,
            "qrExpiresAt": self.qr_expires_at.isoformat() if self.qr_expires_at else None,
            "qrImage": {"png": self.qr_image.png, "svg": self.qr_image.svg}
            if self.qr_image
            else None,
            "refunds": [r.to_dict() for r in self.refunds],
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Identification:
    """The wallet service a scanned code belongs to (IDENTIFY-SCANNED-QR-CODE)."""

    service_id: str
    service_name: str
    service_name_en: str

    @classmethod
    def from_wire(cls, data: Any) -> Identification:
        """Read the answer of IDENTIFY-SCANNED-QR-CODE."""
        if not isinstance(data, Mapping):
            raise ProtocolError("the gateway's answer is not a JSON object")
        return cls(
            service_id=_text(data, "serviceId"),
            service_name=_text(data, "serviceName"),
            service_name_en=_optional_text(data, "serviceNameEn") or _text(data, "serviceName"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The answer in the gateway's wire names."""
        return {
            "serviceId": self.service_id,
            "serviceName": self.service_name,
            "serviceNameEn": self.service_name_en,
        }


@dataclass(frozen=True, slots=True)
class Session:
    """A live LOGIN session, as the journal keeps it."""

    token: str = field(repr=False)
    expires_at: datetime | None

    @classmethod
    def from_wire(cls, data: Any) -> Session:
        """Read LOGIN's answer."""
        if not isinstance(data, Mapping):
            raise ProtocolError("the gateway's answer is not a JSON object")
        return cls(token=_text(data, "sessionToken"), expires_at=_optional_time(data, "expiresAt"))
