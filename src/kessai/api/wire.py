"""Wire types of the terminal API (msgspec structs, camelCase on the wire)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeAlias, TypeVar

import msgspec
from litestar.enums import RequestEncodingType
from litestar.params import Body as BodyParameter
from msgspec import Meta

from kessai.config import Settings
from kessai.domain.errors import ERROR_CODES
from kessai.domain.fields import json_schema_pattern
from kessai.domain.identify import MAX_CODE_LENGTH
from kessai.domain.model import (
    MAX_AMOUNT_YEN,
    MIN_AMOUNT_YEN,
    Payment,
    PaymentKind,
    PaymentStatus,
    PendingReason,
    RefundStatus,
)


def described(**constraints: Any) -> dict[str, Any]:
    """JSON Schema constraints for the OpenAPI description only (``Meta(extra_json_schema=…)``).

    Litestar copies the ``extra`` entry into the field's schema; msgspec does not enforce it. So
    clients and API fuzzers see each format, while kessai.domain.fields stays the one place that
    checks it, with messages that say exactly what is wrong.
    """
    return {"extra": constraints}


def formatted(field: str) -> dict[str, Any]:
    """The OpenAPI constraint of one of the guide's fields: its pattern, from domain.fields."""
    return described(pattern=json_schema_pattern(field))


Mid = Annotated[
    str,
    Meta(
        description="Terminal id issued by the gateway: 16 digits",
        examples=["1656285018617673"],
        extra_json_schema=formatted("mid"),
    ),
]
DeviceKey = Annotated[
    str,
    Meta(
        description="The device's MAC address or another unique id: "
        "1-50 letters, digits, ':' or '-'",
        examples=["00:1A:2B:3C:4D:5E"],
        extra_json_schema=formatted("key"),
    ),
]
Password = Annotated[
    str,
    Meta(
        description="Login password issued by the gateway: 12 letters or digits",
        extra_json_schema=formatted("password"),
    ),
]
Os = Annotated[
    str,
    Meta(
        description="The integration's id issued by the gateway: 6 digits",
        examples=["150092"],
        extra_json_schema=formatted("os"),
    ),
]
TransKey = Annotated[
    str,
    Meta(
        description="Your unique id for the payment, its idempotency key: 1-34 letters or digits",
        examples=["SALE20261128000123"],
        extra_json_schema=formatted("transKey"),
    ),
]
Amount = Annotated[
    int,
    Meta(
        description="Integer yen, 1 to 9,999,999 (1200 is ¥1,200)",
        examples=[1200],
        extra_json_schema=described(minimum=MIN_AMOUNT_YEN, maximum=MAX_AMOUNT_YEN),
    ),
]
# Scanners emit printable ASCII (wallet codes are digits or Base64); anything else, or a code
# that is no wallet's, is refused (400 INVALID_FIELD or 422 NOT_A_PAYMENT_CODE).
Code = Annotated[
    str,
    Meta(
        description="What the scanner read from the customer's phone: digits, "
        "or the Base64 text of an EMV QR code; at most 512 characters",
        examples=["900081818845855642567638"],
        extra_json_schema=described(pattern="^[!-~]+$", minLength=1, maxLength=MAX_CODE_LENGTH),
    ),
]
ServiceId = Annotated[
    str,
    Meta(
        description="Wallet service: 2 digits (01 PayPay, 02 d払い, "
        "03 au PAY, 04 楽天ペイ, 05 メルペイ, 20 Alipay+, 21 WeChat Pay, "
        "22 UnionPay, …)",
        examples=["01"],
        extra_json_schema=formatted("serviceId"),
    ),
]
PassCode = Annotated[
    str,
    Meta(
        description="The terminal's refund passCode: 4 digits",
        extra_json_schema=formatted("passCode"),
    ),
]
RefundKey = Annotated[
    str,
    Meta(
        description="Your id for this refund, its idempotency key: 1-34 letters or digits",
        examples=["R1"],
        extra_json_schema=formatted("refundKey"),
    ),
]
VoucherNo = Annotated[
    str,
    Meta(
        description="The shop's slip number: 1-20 letters, digits or '-'",
        examples=["SLIP-0001"],
        extra_json_schema=formatted("voucherNo"),
    ),
]
_DEFAULTS = Settings()
TtlSeconds = Annotated[
    int,
    Meta(
        description="Lifetime of the code in seconds: 30 to 1800 (default 300)",
        extra_json_schema=described(
            minimum=_DEFAULTS.qr_ttl_min_seconds, maximum=_DEFAULTS.qr_ttl_max_seconds
        ),
    ),
]

# What answers hold, for the OpenAPI description (an optional field's enum also lists null).
TransIdOut = Annotated[str, Meta(extra_json_schema=formatted("transId"))]
KindOut = Annotated[str, Meta(extra_json_schema=described(enum=[k.value for k in PaymentKind]))]
StatusOut = Annotated[str, Meta(extra_json_schema=described(enum=[s.value for s in PaymentStatus]))]
PendingReasonOut = Annotated[
    str, Meta(extra_json_schema=described(enum=[*(r.value for r in PendingReason), None]))
]
CurrencyOut = Annotated[str, Meta(extra_json_schema=described(enum=["JPY"]))]
RefundStatusOut = Annotated[
    str, Meta(extra_json_schema=described(enum=[s.value for s in RefundStatus]))
]
ErrorCodeOut = Annotated[str, Meta(extra_json_schema=described(enum=sorted(ERROR_CODES)))]

T = TypeVar("T")
# The request body of an operation. Litestar's JSONBody, and the OpenAPI description also says
# that fields not listed are refused (UNKNOWN_FIELD), as every Body below forbids them.
JSONBody: TypeAlias = Annotated[
    T,
    BodyParameter(
        media_type=RequestEncodingType.JSON, schema_extra={"additionalProperties": False}
    ),
]


class Body(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """Base of request bodies: an unknown field is an error, so typos never pass silently."""


class LoginBody(Body):
    """LOGIN: the terminal's master data and the integration's os."""

    mid: Mid
    key: DeviceKey
    password: Password
    os: Os


class LoginAnswer(msgspec.Struct, rename="camel"):
    """LOGIN's answer: the bearer token for every later call."""

    session_token: str
    expires_at: datetime


class RequestBody(Body):
    """REQUEST: charge the code scanned from the customer's phone."""

    trans_key: TransKey
    amount: Amount
    code: Code
    service_id: ServiceId | None = None


class QrBody(Body):
    """GET-QR-CODE: one dynamic QR code for one payment."""

    trans_key: TransKey
    amount: Amount
    service_id: ServiceId
    ttl_seconds: TtlSeconds | None = None


class RefundBody(Body):
    """CANCEL: refund with the terminal's passCode; omit amount to refund what remains."""

    pass_code: PassCode
    amount: Amount | None = None
    refund_key: RefundKey | None = None


class VoucherBody(Body):
    """VOUCHERNO: the shop's slip number."""

    voucher_no: VoucherNo


class IdentifyBody(Body):
    """IDENTIFY-SCANNED-QR-CODE: the scanned text."""

    code: Code


class RefundOut(msgspec.Struct, rename="camel"):
    """One refund of a payment."""

    refund_id: str
    refund_key: str
    amount: int
    status: RefundStatusOut
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime


class QrImage(msgspec.Struct):
    """Where to fetch the payment's QR code as an image (same bearer token)."""

    png: str
    svg: str


class PaymentOut(msgspec.Struct, rename="camel"):
    """A payment as terminals see it. Amounts are integer yen."""

    trans_id: TransIdOut
    trans_key: str
    kind: KindOut
    service_id: str
    service_name: str
    amount: int
    currency: CurrencyOut
    status: StatusOut
    pending_reason: PendingReasonOut | None
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

    code: ErrorCodeOut
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


def payment_wire(p: Payment, service_name: str | None, base_path: str = "/v1") -> PaymentOut:
    """The wire form of a payment (API answers and webhook events alike)."""
    image = None
    if p.kind is PaymentKind.MERCHANT_QR and p.qr_data:
        image = QrImage(
            png=f"{base_path}/payments/{p.trans_id}/qr.png",
            svg=f"{base_path}/payments/{p.trans_id}/qr.svg",
        )
    return PaymentOut(
        trans_id=p.trans_id,
        trans_key=p.trans_key,
        kind=p.kind.value,
        service_id=p.service_id,
        service_name=service_name or p.service_id,
        amount=p.amount,
        currency="JPY",
        status=p.status.value,
        pending_reason=p.pending_reason.value if p.pending_reason else None,
        failure_code=p.failure_code,
        failure_message=p.failure_message,
        refunded_amount=p.refunded_amount,
        refundable_amount=p.refundable_amount,
        voucher_no=p.voucher_no,
        code_masked=p.code_masked,
        qr_data=p.qr_data,
        qr_expires_at=p.qr_expires_at,
        qr_image=image,
        refunds=[
            RefundOut(
                refund_id=r.refund_id,
                refund_key=r.refund_key,
                amount=r.amount,
                status=r.status.value,
                failure_reason=r.failure_reason,
                created_at=r.created_at,
                updated_at=r.updated_at,
            )
            for r in p.refunds
        ],
        created_at=p.created_at,
        updated_at=p.updated_at,
    )
