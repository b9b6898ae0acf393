"""WeChat Pay v2 wire fields (付款码支付 / Quick Pay) and their mapping to our outcomes.

Sources (pay.weixin.qq.com v2 reference, Chinese and Global English editions): micropay
(提交付款码支付), orderquery (查询订单), reverse (撤销订单), refund (申请退款), refundquery
(查询退款) with their ``return_code`` / ``result_code`` / ``err_code`` / ``trade_state`` tables.

``return_code`` FAIL means the request itself was refused (signature, parameters): nothing was
processed (WeChat Pay's own micropay sample stops there with an error, before any query or
reverse, since such an answer has no ``result_code``). ``result_code`` carries the business
answer. USERPAYING (the customer is entering a
password) is WAITING_FOR_CUSTOMER; SYSTEMERROR, BANKERROR and every code we do not recognise are
UNKNOWN, resolved by orderquery and, if need be, reverse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from kessai.connectors.base import ProviderOutcome, ProviderResult, RefundResult

CURRENCY: Final = "JPY"
SUCCESS: Final = "SUCCESS"

# err_code of micropay that end the payment, with the failureCode the terminal sees.
_PAY_FAILURES: Final[dict[str, str]] = {
    "AUTHCODEEXPIRE": "UNKNOWN_CODE",
    "AUTH_CODE_INVALID": "UNKNOWN_CODE",
    "AUTH_CODE_ERROR": "UNKNOWN_CODE",
    "NOTENOUGH": "DECLINED",
    "NOTSUPORTCARD": "DECLINED",
    "BUYER_MISMATCH": "DECLINED",
    "TRADE_ERROR": "DECLINED",
    "AMOUNT_LIMITED": "DECLINED",
    "PARAM_ERROR": "PROVIDER_ERROR",
    "NOAUTH": "PROVIDER_ERROR",
    "SIGNERROR": "PROVIDER_ERROR",
    "LACK_PARAMS": "PROVIDER_ERROR",
    "XML_FORMAT_ERROR": "PROVIDER_ERROR",
    "REQUIRE_POST_METHOD": "PROVIDER_ERROR",
    "POST_DATA_EMPTY": "PROVIDER_ERROR",
    "NOT_UTF8": "PROVIDER_ERROR",
    "APPID_NOT_EXIST": "PROVIDER_ERROR",
    "MCHID_NOT_EXIST": "PROVIDER_ERROR",
    "APPID_MCHID_NOT_MATCH": "PROVIDER_ERROR",
    "INVALID_REQUEST": "PROVIDER_ERROR",
}
# trade_state of orderquery.
_TRADE_STATES: Final[dict[str, ProviderOutcome]] = {
    "SUCCESS": ProviderOutcome.SUCCEEDED,
    # Paid, then refunded: the refunds are the gateway's business.
    "REFUND": ProviderOutcome.SUCCEEDED,
    "USERPAYING": ProviderOutcome.WAITING_FOR_CUSTOMER,
    "CLOSED": ProviderOutcome.CANCELED,
    "REVOKED": ProviderOutcome.CANCELED,
    "PAYERROR": ProviderOutcome.FAILED,
    # NOTPAY is deliberately absent: for a code payment it is not final, so it stays UNKNOWN.
}
_REFUND_RETRYABLE: Final = frozenset({"SYSTEMERROR", "BIZERR_NEED_RETRY", "FREQUENCY_LIMITED"})


def micropay_request(ref: str, amount: int, code: str, description: str, ip: str) -> dict[str, str]:
    """The business fields of micropay (the client adds ids, nonce and signature)."""
    return {
        "body": description[:128] or "payment",
        "out_trade_no": ref,
        "total_fee": str(amount),
        "fee_type": CURRENCY,
        "spbill_create_ip": ip,
        "auth_code": code,
    }


def refused(fields: Mapping[str, str]) -> str | None:
    """``return_msg`` when ``return_code`` is FAIL (the request was not processed)."""
    if fields.get("return_code") == SUCCESS:
        return None
    return fields.get("return_msg") or "request refused"


def micropay_outcome(fields: Mapping[str, str]) -> ProviderResult:
    """The answer to micropay."""
    reason = refused(fields)
    if reason is not None:
        return ProviderResult(
            ProviderOutcome.FAILED,
            failure_code="PROVIDER_ERROR",
            failure_message=f"WeChat Pay refused the request: {reason}"[:200],
        )
    ref = fields.get("transaction_id") or None
    if fields.get("result_code") == SUCCESS:
        return ProviderResult(ProviderOutcome.SUCCEEDED, provider_ref=ref)
    code = fields.get("err_code", "")
    if code == "USERPAYING":
        return ProviderResult(ProviderOutcome.WAITING_FOR_CUSTOMER, provider_ref=ref)
    if code in ("ORDERCLOSED", "ORDERREVERSED"):
        return ProviderResult(ProviderOutcome.CANCELED, provider_ref=ref)
    failure = _PAY_FAILURES.get(code)
    if failure is None:
        # SYSTEMERROR, BANKERROR, ORDERPAID, OUT_TRADE_NO_USED and anything new: ask again.
        return ProviderResult(ProviderOutcome.UNKNOWN, provider_ref=ref)
    message = f"WeChat Pay {code}: {fields.get('err_code_des', '')}".strip().rstrip(":")
    return ProviderResult(
        ProviderOutcome.FAILED, failure_code=failure, failure_message=message[:200]
    )


def orderquery_outcome(fields: Mapping[str, str]) -> ProviderResult:
    """The answer to orderquery."""
    if refused(fields) is not None:
        return ProviderResult(ProviderOutcome.UNKNOWN)
    if fields.get("result_code") != SUCCESS:
        if fields.get("err_code") == "ORDERNOTEXIST":
            return ProviderResult(ProviderOutcome.NOT_FOUND)
        return ProviderResult(ProviderOutcome.UNKNOWN)
    state = fields.get("trade_state", "")
    outcome = _TRADE_STATES.get(state, ProviderOutcome.UNKNOWN)
    ref = fields.get("transaction_id") or None
    if outcome is ProviderOutcome.FAILED:
        return ProviderResult(
            outcome,
            provider_ref=ref,
            failure_code="DECLINED",
            failure_message=f"WeChat Pay {state}: {fields.get('trade_state_desc', '')}"[:200],
        )
    return ProviderResult(outcome, provider_ref=ref)


def reverse_outcome(fields: Mapping[str, str]) -> ProviderResult:
    """The answer to reverse: CANCELED only on SUCCESS with ``recall`` N (nothing more to do)."""
    if refused(fields) is not None:
        return ProviderResult(ProviderOutcome.UNKNOWN)
    if fields.get("result_code") == SUCCESS and fields.get("recall", "N") == "N":
        return ProviderResult(ProviderOutcome.CANCELED)
    if fields.get("err_code") == "ORDERNOTEXIST":
        return ProviderResult(ProviderOutcome.NOT_FOUND)
    return ProviderResult(ProviderOutcome.UNKNOWN)


def refund_outcome(fields: Mapping[str, str]) -> RefundResult | None:
    """The answer to refund; ``None`` when it was accepted (then refundquery tells the end)."""
    reason = refused(fields)
    if reason is not None:
        return RefundResult(ProviderOutcome.FAILED, f"WeChat Pay refused the refund: {reason}")
    if fields.get("result_code") == SUCCESS:
        return None
    code = fields.get("err_code", "")
    if code in _REFUND_RETRYABLE or not code:
        return RefundResult(ProviderOutcome.UNKNOWN)
    return RefundResult(
        ProviderOutcome.FAILED, f"WeChat Pay {code}: {fields.get('err_code_des', '')}"[:200]
    )


def refundquery_outcome(fields: Mapping[str, str]) -> RefundResult:
    """The answer to refundquery for one out_refund_no (``refund_status_0``)."""
    if refused(fields) is not None:
        return RefundResult(ProviderOutcome.UNKNOWN)
    if fields.get("result_code") != SUCCESS:
        if fields.get("err_code") == "REFUNDNOTEXIST":
            return RefundResult(ProviderOutcome.NOT_FOUND, "WeChat Pay has no such refund")
        return RefundResult(ProviderOutcome.UNKNOWN)
    status = fields.get("refund_status_0", "")
    if status == SUCCESS:
        return RefundResult(ProviderOutcome.SUCCEEDED)
    if status == "REFUNDCLOSE":
        return RefundResult(ProviderOutcome.FAILED, f"WeChat Pay refund status {status}")
    # PROCESSING, and CHANGE: the bank refused to return the money (a closed card) and the
    # merchant must settle the refund by hand in WeChat Pay's merchant platform. Not failed:
    # its amount stays reserved until WeChat Pay reports the end.
    return RefundResult(ProviderOutcome.UNKNOWN)
