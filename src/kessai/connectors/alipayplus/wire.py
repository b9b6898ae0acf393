"""Alipay+ wire types (acquirer side, User-presented Mode) and their mapping to our outcomes.

Sources (docs.alipayplus.com, ACQP APIs): pay (User-presented Mode Payment), inquiryPayment,
cancelPayment, refund, notifyPayment, and the "Accept a payment" / "Inquire about payment
results" / "Cancel a payment" guides for how to treat each resultStatus.

Every answer carries ``result`` {resultStatus S|F|U, resultCode, resultMessage}; inquiryPayment
and notifyPayment add ``paymentResult``, the state of the payment itself. U is always UNKNOWN;
only S is a success. Amounts are strings in the currency's minor unit: JPY has none, so 1200 yen
is ``"1200"`` (never multiplied by 100).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from kessai.connectors.base import ProviderOutcome, ProviderResult, RefundResult

CURRENCY: Final = "JPY"
PAYMENT_METHOD_TYPE: Final = "CONNECT_WALLET"
SCENARIO: Final = "PaymentCode"

# result codes this connector acts on.
SUCCESS: Final = "SUCCESS"
ORDER_NOT_EXIST: Final = "ORDER_NOT_EXIST"
ORDER_IS_CLOSED: Final = "ORDER_IS_CLOSED"
REPEAT_REQ_INCONSISTENT: Final = "REPEAT_REQ_INCONSISTENT"

# F codes that mean our request itself was refused (credentials, signature, parameters).
REQUEST_REJECTED: Final = frozenset(
    {
        "ACCESS_DENIED",
        "INVALID_SIGNATURE",
        "INVALID_CLIENT",
        "KEY_NOT_FOUND",
        "PARAM_ILLEGAL",
        "INVALID_API",
        "MERCHANT_NOT_REGISTERED",
        "CURRENCY_NOT_SUPPORT",
    }
)
# F codes of a payment the wallet declined, with the failureCode the terminal sees.
_DECLINES: Final[dict[str, str]] = {
    "USER_BALANCE_NOT_ENOUGH": "DECLINED",
    "RISK_REJECT": "DECLINED",
    "USER_NOT_EXIST": "DECLINED",
    "USER_STATUS_ABNORMAL": "DECLINED",
    "UNAVAILABLE_PAYMENT_METHOD": "DECLINED",
    "USER_AMOUNT_EXCEED_LIMIT": "DECLINED",
    "USER_KYC_NOT_QUALIFIED": "DECLINED",
    "USER_PAYMENT_VERIFICATION_FAILED": "CUSTOMER_DECLINED",
    "INVALID_CODE": "UNKNOWN_CODE",
    "EXPIRED_CODE": "UNKNOWN_CODE",
}


class Amount(msgspec.Struct, frozen=True):
    """An Alipay+ amount: currency and value in the minor unit, as a string."""

    currency: str
    value: str


class Result(msgspec.Struct, frozen=True, rename="camel"):
    """``result`` / ``paymentResult``."""

    result_status: str = ""
    result_code: str = ""
    result_message: str = ""


class NotifyPayment(msgspec.Struct, frozen=True, rename="camel"):
    """The body of notifyPayment (Alipay+ → acquirer)."""

    payment_result: Result
    payment_request_id: str
    payment_id: str | None = None
    acquirer_id: str | None = None
    psp_id: str | None = None
    payment_amount: Amount | None = None
    payment_time: str | None = None


def amount(value: int) -> dict[str, str]:
    """Yen as an Alipay+ Amount (JPY has no minor unit)."""
    return {"currency": CURRENCY, "value": str(value)}


def pay_request(
    *,
    ref: str,
    value: int,
    code: str,
    merchant_name: str,
    reference_merchant_id: str,
    merchant_mcc: str,
    store_id: str,
    terminal_id: str | None,
    request_time: str,
    notify_url: str | None,
) -> dict[str, Any]:
    """The body of pay in User-presented Mode: the customer's code is the paymentMethodId."""
    body: dict[str, Any] = {
        "order": {
            "referenceOrderId": ref,
            "orderDescription": merchant_name[:256],
            "orderAmount": amount(value),
            "merchant": {
                "referenceMerchantId": reference_merchant_id,
                "merchantMCC": merchant_mcc,
                "merchantName": merchant_name[:256],
                "store": {
                    "referenceStoreId": store_id,
                    "storeName": merchant_name[:256],
                    "storeMCC": merchant_mcc,
                },
            },
            "env": {"storeTerminalRequestTime": request_time},
        },
        "paymentRequestId": ref,
        "paymentAmount": amount(value),
        "paymentMethod": {"paymentMethodType": PAYMENT_METHOD_TYPE, "paymentMethodId": code},
        "paymentFactor": {"isInStorePayment": "true", "inStorePaymentScenario": SCENARIO},
        "settlementStrategy": {"settlementCurrency": CURRENCY},
    }
    if terminal_id:
        body["order"]["env"]["storeTerminalId"] = terminal_id
    if notify_url:
        body["paymentNotifyUrl"] = notify_url
    return body


def payment_outcome(status: str, code: str, message: str) -> ProviderResult:
    """A payment's resultStatus/resultCode as our outcome (pessimistic)."""
    if status == "S":
        return ProviderResult(ProviderOutcome.SUCCEEDED)
    if status != "F":
        return ProviderResult(ProviderOutcome.UNKNOWN)
    if code == REPEAT_REQ_INCONSISTENT:
        # A payment with this id exists with other parameters: what it holds is learnt by query.
        return ProviderResult(ProviderOutcome.UNKNOWN)
    if code == ORDER_IS_CLOSED:
        return ProviderResult(ProviderOutcome.CANCELED)
    if code == ORDER_NOT_EXIST:
        return ProviderResult(ProviderOutcome.NOT_FOUND)
    failure = "PROVIDER_ERROR" if code in REQUEST_REJECTED else _DECLINES.get(code, "DECLINED")
    text = f"Alipay+ {code}: {message}".strip().rstrip(":")
    return ProviderResult(ProviderOutcome.FAILED, failure_code=failure, failure_message=text[:200])


def refund_outcome(status: str, code: str, message: str) -> RefundResult:
    """A refund's resultStatus as our outcome; U (and an unreadable answer) stays UNKNOWN."""
    if status == "S":
        return RefundResult(ProviderOutcome.SUCCEEDED)
    if status == "F" and code != REPEAT_REQ_INCONSISTENT:
        return RefundResult(ProviderOutcome.FAILED, f"Alipay+ {code}: {message}"[:200])
    return RefundResult(ProviderOutcome.UNKNOWN)


def ack() -> dict[str, Any]:
    """Our answer to a notification that we accepted."""
    return {"result": {"resultCode": SUCCESS, "resultStatus": "S", "resultMessage": "success"}}
