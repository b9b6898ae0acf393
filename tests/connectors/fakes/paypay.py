"""A contract fake of PayPay's Open Payment API (Dynamic QR), written from PayPay's documents.

It checks every request's ``Authorization: hmac OPA-Auth:…`` header exactly as "OPA API
Authorization" describes (MD5 body hash, HMAC-SHA256 over path/method/nonce/epoch/content
type/hash, epoch within two minutes) and ``X-ASSUME-MERCHANT``, and answers with the documented
envelope ``{"resultInfo": {code, message, codeId}, "data": …}`` and status codes.

Magic amounts force the hard cases: 9001 creates the code but answers after ``slow_seconds``
(a client timeout), 9002 creates it and answers 500 INTERNAL_SERVER_ERROR, 9003 answers 429
RATE_LIMIT without creating anything, 9004 creates it and answers a 201 cut short. The test
plays the customer with ``customer_pays``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .server import Answer

SLOW_AMOUNT = 9001
ERROR_AMOUNT = 9002
THROTTLED_AMOUNT = 9003
TRUNCATED_AMOUNT = 9004
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

_CODES = {
    "SUCCESS": ("08100001", "Success"),
    "REQUEST_ACCEPTED": ("08100001", "Request accepted"),
    "UNAUTHORIZED": ("08100016", "Unauthorized request"),
    "OP_OUT_OF_SCOPE": ("08100023", "The operation is not permitted"),
    "RATE_LIMIT": ("08100998", "Too many requests"),
    "INTERNAL_SERVER_ERROR": ("08101000", "Something went wrong on PayPay service side"),
    "INVALID_REQUEST_PARAMS": ("08100006", "Invalid request params"),
    "DYNAMIC_QR_BAD_REQUEST": ("01650000", "Dynamic QR bad request error"),
    "DUPLICATE_DYNAMIC_QR_REQUEST": ("01652073", "Duplicate Dynamic QR request error"),
    "DYNAMIC_QR_PAYMENT_NOT_FOUND": ("01652075", "Dynamic QR payment not found"),
    "DYNAMIC_QR_ALREADY_PAID": ("01652074", "Dynamic QR already paid"),
    "DYNAMIC_QR_NOT_FOUND": ("01652072", "Dynamic qr code not found"),
    "ORDER_NOT_REVERSIBLE": ("00200044", "Order cannot be reversed"),
    "RESOURCE_NOT_FOUND": ("00200001", "Order not found"),
    "UNACCEPTABLE_OP": ("00200013", "Order cannot be refunded"),
    "INVALID_PARAMS": ("00200015", "Invalid refund amount"),
    "MERCHANT_MULTIPLE_REFUND_REJECTED": ("00200014", "Merchant multiple refund not enabled"),
    "NO_SUCH_REFUND_ORDER": ("00200018", "Refund not found"),
}


@dataclass
class Code:
    merchant_payment_id: str
    code_id: str
    amount: int
    url: str
    status: str = "CREATED"
    deleted: bool = False
    payment_id: str | None = None
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)


class PayPayFake:
    """The fake; ``requests`` records (method, path, verdict) for assertions."""

    def __init__(
        self,
        *,
        api_key: str = "APIKeyGenerated",
        api_secret: str = "APIKeySecretGenerated",
        merchant_id: str = "MERCHANT_1",
        multiple_refunds: bool = True,
        slow_seconds: float = 1.5,
    ) -> None:
        self.lock = threading.RLock()
        self.api_key = api_key
        self.api_secret = api_secret
        self.merchant_id = merchant_id
        self.multiple_refunds = multiple_refunds
        self.slow_seconds = slow_seconds
        self.codes: dict[str, Code] = {}
        self.requests: list[tuple[str, str, str]] = []
        self.fail_details: dict[str, int] = {}
        self._seq = 0

    # -- the customer's side (called by tests) ---------------------------------------------------

    def customer_pays(self, merchant_payment_id: str) -> None:
        with self.lock:
            code = self.codes[merchant_payment_id]
            if code.deleted or code.status != "CREATED":
                raise RuntimeError(f"code {merchant_payment_id} cannot be paid ({code.status})")
            code.status = "COMPLETED"
            code.payment_id = self._next("PAY")

    def customer_fails(self, merchant_payment_id: str) -> None:
        with self.lock:
            self.codes[merchant_payment_id].status = "FAILED"

    def webhook(self, merchant_payment_id: str) -> bytes:
        """The Transaction webhook PayPay would POST for this payment now."""
        with self.lock:
            code = self.codes[merchant_payment_id]
            return json.dumps(
                {
                    "notification_type": "Transaction",
                    "merchant_id": self.merchant_id,
                    "store_id": "",
                    "pos_id": "",
                    "order_id": code.payment_id or "",
                    "merchant_order_id": code.merchant_payment_id,
                    "authorized_at": None,
                    "expires_at": None,
                    "paid_at": "2026-01-05T09:00:00Z" if code.status == "COMPLETED" else None,
                    "order_amount": str(code.amount),
                    "state": code.status,
                }
            ).encode()

    def verdicts(self) -> list[str]:
        with self.lock:
            return [verdict for _, _, verdict in self.requests]

    # -- HTTP --------------------------------------------------------------------------------

    def _next(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{self._seq:08d}"

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> Answer:
        problem = self._authenticate(method, path, headers, body)
        if problem is not None:
            self.requests.append((method, path, problem))
            status = 401
            return _reply(status, problem)
        self.requests.append((method, path, "ok"))
        payload: dict[str, Any] = {}
        if body:
            try:
                payload = json.loads(body)
            except ValueError:
                return _reply(400, "INVALID_REQUEST_PARAMS")
        if method == "POST" and path == "/v2/codes":
            return self._create(payload)
        if method == "GET" and path.startswith("/v2/codes/payments/"):
            return self._details(path.rsplit("/", 1)[1])
        if method == "DELETE" and path.startswith("/v2/codes/"):
            return self._delete_code(path.rsplit("/", 1)[1])
        if method == "DELETE" and path.startswith("/v2/payments/"):
            return self._cancel(path.rsplit("/", 1)[1])
        if method == "POST" and path == "/v2/refunds":
            return self._refund(payload)
        if method == "GET" and path.startswith("/v2/refunds/"):
            return self._refund_details(path.rsplit("/", 1)[1], query.get("paymentId"))
        return _reply(404, "RESOURCE_NOT_FOUND")

    def _authenticate(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> str | None:
        """The documented HMAC check; the name of the error PayPay answers, or None."""
        value = headers.get("authorization", "")
        prefix = "hmac OPA-Auth:"
        if not value.startswith(prefix):
            return "UNAUTHORIZED"
        parts = value[len(prefix) :].split(":")
        if len(parts) != 5:
            return "UNAUTHORIZED"
        api_key, mac, nonce, epoch, given_hash = parts
        if api_key != self.api_key or not epoch.isdigit():
            return "UNAUTHORIZED"
        if abs(int(epoch) - time.time()) > 120:
            return "UNAUTHORIZED"
        if body:
            content_type = headers.get("content-type", "")
            expected_hash = base64.b64encode(
                hashlib.md5(content_type.encode() + body).digest()
            ).decode()
        else:
            content_type = expected_hash = "empty"
        if given_hash != expected_hash:
            return "UNAUTHORIZED"
        text = "\n".join([path, method, nonce, epoch, content_type, expected_hash])
        expected_mac = base64.b64encode(
            hmac.new(self.api_secret.encode(), text.encode(), hashlib.sha256).digest()
        ).decode()
        if not hmac.compare_digest(mac, expected_mac):
            return "UNAUTHORIZED"
        if headers.get("x-assume-merchant") != self.merchant_id:
            return "OP_OUT_OF_SCOPE"
        return None

    def _create(self, payload: dict[str, Any]) -> Answer:
        ref = payload.get("merchantPaymentId")
        amount = (payload.get("amount") or {}).get("amount")
        currency = (payload.get("amount") or {}).get("currency")
        if (
            not isinstance(ref, str)
            or not _ID.fullmatch(ref)
            or not isinstance(amount, int)
            or amount < 1
            or currency != "JPY"
            or payload.get("codeType") != "ORDER_QR"
            or not isinstance(payload.get("requestedAt"), int)
        ):
            return _reply(400, "DYNAMIC_QR_BAD_REQUEST")
        if amount == THROTTLED_AMOUNT:
            return _reply(429, "RATE_LIMIT")
        existing = self.codes.get(ref)
        if existing is not None:
            if existing.amount != amount:
                return _reply(400, "DUPLICATE_DYNAMIC_QR_REQUEST")
            # "When the same merchantPaymentId is specified, the previous result is returned."
            return _reply(201, "SUCCESS", _code_data(existing))
        code_id = self._next("04-")
        code = Code(ref, code_id, amount, f"https://qr-stg.sandbox.paypay.ne.jp/28180104{code_id}")
        self.codes[ref] = code
        if amount == ERROR_AMOUNT:
            return _reply(500, "INTERNAL_SERVER_ERROR")
        answer = _reply(201, "SUCCESS", _code_data(code))
        if amount == TRUNCATED_AMOUNT:
            return (answer[0], answer[1], answer[2][:40], 0.0)
        if amount == SLOW_AMOUNT:
            return (*answer[:3], self.slow_seconds)
        return answer

    def _details(self, ref: str) -> Answer:
        if self.fail_details.get(ref, 0) > 0:
            self.fail_details[ref] -= 1
            return _reply(500, "INTERNAL_SERVER_ERROR")
        code = self.codes.get(ref)
        if code is None or (code.deleted and code.payment_id is None):
            return _reply(400, "DYNAMIC_QR_PAYMENT_NOT_FOUND")
        return _reply(200, "SUCCESS", _payment_data(code))

    def _delete_code(self, code_id: str) -> Answer:
        code = next((c for c in self.codes.values() if c.code_id == code_id), None)
        if code is None or code.deleted:
            return _reply(404, "DYNAMIC_QR_NOT_FOUND")
        if code.payment_id is not None:
            return _reply(400, "DYNAMIC_QR_ALREADY_PAID")
        code.deleted = True
        return _reply(200, "SUCCESS")

    def _cancel(self, ref: str) -> Answer:
        code = self.codes.get(ref)
        if code is not None and code.status in ("REFUNDED", "CANCELED", "EXPIRED", "FAILED"):
            return _reply(400, "ORDER_NOT_REVERSIBLE")
        if code is not None:
            # "Cancel a payment: COMPLETED → FAILED" (instant payment); an unpaid code goes too.
            if code.status == "COMPLETED":
                code.status = "FAILED"
            code.deleted = True
        return _reply(202, "REQUEST_ACCEPTED")

    def _refund(self, payload: dict[str, Any]) -> Answer:
        refund_id = payload.get("merchantRefundId")
        payment_id = payload.get("paymentId")
        amount = (payload.get("amount") or {}).get("amount")
        if (
            not isinstance(refund_id, str)
            or not _ID.fullmatch(refund_id)
            or not isinstance(amount, int)
            or amount < 1
            or not isinstance(payload.get("requestedAt"), int)
        ):
            return _reply(400, "INVALID_REQUEST_PARAMS")
        code = next((c for c in self.codes.values() if c.payment_id == payment_id), None)
        if code is None:
            return _reply(404, "RESOURCE_NOT_FOUND")
        if refund_id in code.refunds:
            # "When the same merchantRefundId is specified ... the previous result is returned."
            return _reply(200, "SUCCESS", {**code.refunds[refund_id], "status": "CREATED"})
        if code.status not in ("COMPLETED", "REFUNDED"):
            return _reply(400, "UNACCEPTABLE_OP")
        if code.refunds and not self.multiple_refunds:
            return _reply(403, "MERCHANT_MULTIPLE_REFUND_REJECTED")
        if sum(r["amount"]["amount"] for r in code.refunds.values()) + amount > code.amount:
            return _reply(400, "INVALID_PARAMS")
        refund = {
            "status": "REFUNDED",
            "merchantRefundId": refund_id,
            "paymentId": payment_id,
            "amount": {"amount": amount, "currency": "JPY"},
            "requestedAt": payload["requestedAt"],
            "acceptedAt": int(time.time()),
        }
        code.refunds[refund_id] = refund
        code.status = "REFUNDED"
        # Refunds are asynchronous at PayPay: the answer says CREATED, the details REFUNDED.
        return _reply(200, "SUCCESS", {**refund, "status": "CREATED"})

    def _refund_details(self, refund_id: str, payment_id: str | None) -> Answer:
        if not payment_id:
            return _reply(400, "INVALID_REQUEST_PARAMS")
        for code in self.codes.values():
            if code.payment_id == payment_id and refund_id in code.refunds:
                return _reply(200, "SUCCESS", code.refunds[refund_id])
        return _reply(404, "NO_SUCH_REFUND_ORDER")


def _code_data(code: Code) -> dict[str, Any]:
    return {
        "codeId": code.code_id,
        "url": code.url,
        "deeplink": f"paypay://payment?link_key={code.code_id}",
        "expiryDate": int(time.time()) + 300,
        "merchantPaymentId": code.merchant_payment_id,
        "amount": {"amount": code.amount, "currency": "JPY"},
        "codeType": "ORDER_QR",
        "isAuthorization": False,
    }


def _payment_data(code: Code) -> dict[str, Any]:
    return {
        "paymentId": code.payment_id,
        "status": code.status,
        "acceptedAt": int(time.time()) if code.payment_id else None,
        "merchantPaymentId": code.merchant_payment_id,
        "amount": {"amount": code.amount, "currency": "JPY"},
        "requestedAt": int(time.time()),
        "refunds": {"data": list(code.refunds.values())},
    }


def _reply(status: int, code: str, data: dict[str, Any] | None = None) -> Answer:
    code_id, message = _CODES[code]
    body = {"resultInfo": {"code": code, "message": message, "codeId": code_id}, "data": data}
    return status, {"content-type": "application/json"}, json.dumps(body).encode(), 0.0
