"""PayPay's wire types and the mapping of its statuses to ours.

Sources: the Dynamic QR reference (www.paypay.ne.jp/opa/doc/v1.0/dynamicqrcode: request and
response schemas, "Response code list", "Basic status transition", "Transaction Events") and
the official SDKs (github.com/paypay/paypayopa-sdk-python, -node, -java).

Mapping is pessimistic: only COMPLETED is a success; CREATED (nobody has paid yet) waits for the
customer; anything unrecognised, AUTHORIZED (we never ask for pre-authorisation) and every
transport or server error is UNKNOWN.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import msgspec

from kessai.connectors.base import ProviderOutcome, ProviderResult, RefundResult

T = TypeVar("T")

CURRENCY: Final = "JPY"
CODE_TYPE: Final = "ORDER_QR"

# resultInfo.code values this connector acts on (the "Response code list").
SUCCESS: Final = "SUCCESS"
REQUEST_ACCEPTED: Final = "REQUEST_ACCEPTED"
DYNAMIC_QR_PAYMENT_NOT_FOUND: Final = "DYNAMIC_QR_PAYMENT_NOT_FOUND"
DYNAMIC_QR_ALREADY_PAID: Final = "DYNAMIC_QR_ALREADY_PAID"
DYNAMIC_QR_NOT_FOUND: Final = "DYNAMIC_QR_NOT_FOUND"
DUPLICATE_DYNAMIC_QR_REQUEST: Final = "DUPLICATE_DYNAMIC_QR_REQUEST"
ORDER_NOT_REVERSIBLE: Final = "ORDER_NOT_REVERSIBLE"
NO_SUCH_REFUND_ORDER: Final = "NO_SUCH_REFUND_ORDER"
UNAUTHORIZED: Final = "UNAUTHORIZED"

# Refund rejections that are final: the refund did not and will not happen.
REFUND_REJECTIONS: Final = frozenset(
    {
        "INVALID_PARAMS",
        "INVALID_REQUEST_PARAMS",
        "UNACCEPTABLE_OP",
        "CANCELED_USER",
        "REFUND_LIMIT_EXCEEDED",
        "REFUND_WINDOW_EXCEED",
        "ORDER_NO_LONGER_AVAILABLE",
        "USER_STATE_IS_NOT_ACTIVE",
        "MERCHANT_MULTIPLE_REFUND_REJECTED",
        "RESOURCE_NOT_FOUND",
    }
)


class MoneyAmount(msgspec.Struct, frozen=True):
    """An amount in integer yen (PayPay's JPY has no minor unit)."""

    amount: int
    currency: str = CURRENCY


class QrCodeData(msgspec.Struct, frozen=True, rename="camel"):
    """``data`` of Create a QRCode."""

    code_id: str
    url: str
    deeplink: str | None = None
    expiry_date: int | None = None
    merchant_payment_id: str | None = None
    amount: MoneyAmount | None = None


class PaymentData(msgspec.Struct, frozen=True, rename="camel"):
    """``data`` of Get payment details."""

    status: str
    payment_id: str | None = None
    merchant_payment_id: str | None = None
    amount: MoneyAmount | None = None
    accepted_at: int | None = None


class RefundData(msgspec.Struct, frozen=True, rename="camel"):
    """``data`` of Refund a payment and Get refund details."""

    status: str
    merchant_refund_id: str | None = None
    payment_id: str | None = None
    amount: MoneyAmount | None = None


class Webhook(msgspec.Struct, frozen=True):
    """A Transaction webhook (notification_type "Transaction"); it is not signed by PayPay."""

    notification_type: str
    state: str
    merchant_order_id: str | None = None
    order_id: str | None = None
    merchant_id: str | None = None
    order_amount: str | None = None


def qr_request(ref: str, amount: int, description: str, requested_at: int) -> dict[str, Any]:
    """The body of Create a QRCode (``merchantPaymentId`` is our transId)."""
    return {
        "merchantPaymentId": ref,
        "amount": {"amount": amount, "currency": CURRENCY},
        "codeType": CODE_TYPE,
        "orderDescription": description[:255],
        "isAuthorization": False,
        "requestedAt": requested_at,
    }


def refund_request(
    refund_ref: str, payment_id: str, amount: int, requested_at: int
) -> dict[str, Any]:
    """The body of Refund a payment (``merchantRefundId`` is our refundId)."""
    return {
        "merchantRefundId": refund_ref,
        "paymentId": payment_id,
        "amount": {"amount": amount, "currency": CURRENCY},
        "requestedAt": requested_at,
        "reason": "refund requested by the merchant",
    }


def decode(data: object, kind: type[T]) -> T | None:
    """``data`` as ``kind``, or ``None`` when PayPay sent something else."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError:
        return None


# Payment statuses (PaymentState.status) as outcomes.
_PAYMENT_STATUS: Final[dict[str, ProviderOutcome]] = {
    "COMPLETED": ProviderOutcome.SUCCEEDED,
    # A refunded payment was paid first; its refunds are the gateway's business.
    "REFUNDED": ProviderOutcome.SUCCEEDED,
    "CREATED": ProviderOutcome.WAITING_FOR_CUSTOMER,
    "FAILED": ProviderOutcome.FAILED,
    "CANCELED": ProviderOutcome.CANCELED,
    "EXPIRED": ProviderOutcome.EXPIRED,
}


def payment_result(data: PaymentData) -> ProviderResult:
    """A payment's details as our outcome; unknown statuses (and AUTHORIZED) stay UNKNOWN."""
    outcome = _PAYMENT_STATUS.get(data.status, ProviderOutcome.UNKNOWN)
    if outcome is ProviderOutcome.FAILED:
        return ProviderResult(
            outcome,
            failure_code="DECLINED",
            failure_message="PayPay reports the payment as FAILED",
        )
    return ProviderResult(outcome)


def refund_result(data: RefundData) -> RefundResult:
    """A refund's status as our outcome: only REFUNDED is done; CREATED is still in flight."""
    if data.status == "REFUNDED":
        return RefundResult(ProviderOutcome.SUCCEEDED)
    if data.status in ("REFUND_FAILED", "FAILED"):
        return RefundResult(ProviderOutcome.FAILED, "PayPay reports the refund as failed")
    return RefundResult(ProviderOutcome.UNKNOWN)


def webhook_outcome(state: str) -> ProviderOutcome:
    """The hint a webhook's ``state`` gives; it is confirmed by a query before anything moves."""
    return _PAYMENT_STATUS.get(state, ProviderOutcome.UNKNOWN)
