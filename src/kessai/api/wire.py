"""Wire types of the terminal API (msgspec structs, camelCase on the wire)."""

from __future__ import annotations

from datetime import datetime

import msgspec


class Body(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """Base of request bodies: an unknown field is an error, so typos never pass silently."""


class LoginBody(Body):
    """LOGIN: the terminal's master data and the integration's os."""

    mid: str
    key: str
    password: str
    os: str


class LoginAnswer(msgspec.Struct, rename="camel"):
    """LOGIN's answer: the bearer token for every later call."""

    session_token: str
    expires_at: datetime


class RequestBody(Body):
    """REQUEST: charge the code scanned from the customer's phone."""

    trans_key: str
    amount: int
    code: str
    service_id: str | None = None


class QrBody(Body):
    """GET-QR-CODE: one dynamic QR code for one payment."""

    trans_key: str
    amount: int
    service_id: str
    ttl_seconds: int | None = None


class RefundBody(Body):
    """CANCEL: refund with the terminal's passCode; omit amount to refund what remains."""

    pass_code: str
    amount: int | None = None
    refund_key: str | None = None


class VoucherBody(Body):
    """VOUCHERNO: the shop's slip number."""

    voucher_no: str


class IdentifyBody(Body):
    """IDENTIFY-SCANNED-QR-CODE: the scanned text."""

    code: str


class RefundOut(msgspec.Struct, rename="camel"):
    """One refund of a payment."""

    refund_id: str
    refund_key: str
    amount: int
    status: str
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime


class QrImage(msgspec.Struct):
    """Where to fetch the payment's QR code as an image (same bearer token)."""

    png: str
    svg: str


class PaymentOut(msgspec.Struct, rename="camel"):
    """A payment as terminals see it. Amounts are integer yen."""

    trans_id: str
    trans_key: str
    kind: str
    service_id: str
    service_name: str
    amount: int
    currency: str
    status: str
    pending_reason: str | None
    failure_code: str | None
    failure_message: str | None
    refunded_amount: int
    refundable_amount: int
    voucher_no: str | None
    code_masked: str | None
    qr_data: str | None
    qr_expires_at: datetime | None
    qr_image: QrImage | None
    refunds: list[RefundOut]
    created_at: datetime
    updated_at: datetime


class IdentifyAnswer(msgspec.Struct, rename="camel"):
    """The wallet service of a scanned code."""

    service_id: str
    service_name: str
    service_name_en: str


class ErrorDetail(msgspec.Struct, rename="camel"):
    """The one error shape."""

    code: str
    message: str
    field: str | None
    retryable: bool
    request_id: str


class ErrorBody(msgspec.Struct):
    """Every error answer: ``{"error": {...}}``."""

    error: ErrorDetail


class Empty(msgspec.Struct):
    """An answer with nothing to say (LOGOUT)."""


class Health(msgspec.Struct):
    """Liveness and database reachability."""

    status: str
    database: str
