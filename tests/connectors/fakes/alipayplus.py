"""A contract fake of Alipay+ for acquirers (User-presented Mode), from docs.alipayplus.com.

Every request must carry ``Client-Id``, ``Request-Time`` and
``Signature: algorithm=RSA256,keyVersion=…,signature=<url-encoded base64>`` over
``POST <path>\\n<Client-Id>.<Request-Time>.<body>``, verified with the acquirer's public key; a
wrong one is answered ``result F INVALID_SIGNATURE``. Every answer is signed with the Alipay+
private key (``Response-Time``), and ``notification`` builds signed notifyPayment requests.

The customer's payment code decides the outcome by its last two digits: 01 success, 02 "in
process" until two inquiries later, 03 USER_BALANCE_NOT_ENOUGH, 04 success answered too late
(a timeout), 05 in process forever (only a cancel ends it), 06 INVALID_CODE.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .server import Answer

CLIENT_ID = "SANDBOX_5YC47N2ZQHJ004124"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _sign(key: rsa.RSAPrivateKey, text: str) -> str:
    raw = key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())
    return quote(base64.b64encode(raw).decode(), safe="")


@dataclass
class Payment:
    request_id: str
    amount: str
    code: str
    payment_id: str
    status: str  # S, U or F (paymentResult.resultStatus), CLOSED once cancelled
    result_code: str
    pending_inquiries: int = 0
    refunds: dict[str, str] = field(default_factory=dict)


class AlipayPlusFake:
    """The fake; ``acquirer_key`` is what the acquirer signs with (give its PEM to the client)."""

    def __init__(self, *, client_id: str = CLIENT_ID, slow_seconds: float = 1.5) -> None:
        self.lock = threading.RLock()
        self.client_id = client_id
        self.slow_seconds = slow_seconds
        self.acquirer_key = new_key()
        self.alipay_key = new_key()
        self.payments: dict[str, Payment] = {}
        self.closed_unknown: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.refund_in_process_once: set[str] = set()
        self._seq = 0

    # -- for tests ---------------------------------------------------------------------------

    def notification(self, request_id: str, path: str) -> tuple[dict[str, str], bytes]:
        """A notifyPayment request Alipay+ would send now: (headers, body), signed."""
        with self.lock:
            p = self.payments[request_id]
            body = json.dumps(
                {
                    "paymentResult": {
                        "resultCode": p.result_code,
                        "resultStatus": p.status if p.status != "CLOSED" else "F",
                        "resultMessage": p.result_code.lower(),
                    },
                    "paymentRequestId": p.request_id,
                    "paymentId": p.payment_id,
                    "acquirerId": "1022188000000000001",
                    "pspId": "1022172000000000001",
                    "paymentAmount": {"currency": "JPY", "value": p.amount},
                    "paymentTime": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
            when = datetime.now(UTC).isoformat(timespec="seconds")
            signature = _sign(self.alipay_key, f"POST {path}\n{self.client_id}.{when}.{body}")
            headers = {
                "Content-Type": "application/json; charset=UTF-8",
                "Client-Id": self.client_id,
                "Request-Time": when,
                "Signature": f"algorithm=RSA256,keyVersion=1,signature={signature}",
            }
            return headers, body.encode()

    def verify_ack(self, path: str, headers: dict[str, str], body: bytes) -> bool:
        """Whether the acquirer's answer to a notification is signed by the acquirer."""
        when = headers.get("Response-Time", "")
        raw = headers.get("Signature", "").partition("signature=")[2]
        text = f"POST {path}\n{headers.get('Client-Id')}.{when}.{body.decode()}"
        try:
            self.acquirer_key.public_key().verify(
                base64.b64decode(unquote(raw)), text.encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except (InvalidSignature, ValueError):
            return False
        return True

    # -- HTTP --------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> Answer:
        text = body.decode(errors="replace")
        problem = self._verify(path, headers, text)
        self.requests.append((path, problem or "ok"))
        if problem is not None:
            return self._answer(path, {"result": _result("F", problem)})
        try:
            payload: dict[str, Any] = json.loads(text)
        except ValueError:
            return self._answer(path, {"result": _result("F", "PARAM_ILLEGAL")})
        route = {
            "/aps/api/v1/payments/pay": self._pay,
            "/aps/api/v1/payments/inquiryPayment": self._inquiry,
            "/aps/api/v1/payments/cancelPayment": self._cancel,
            "/aps/api/v1/payments/refund": self._refund,
        }.get(path)
        if method != "POST" or route is None:
            return self._answer(path, {"result": _result("F", "INVALID_API")})
        answer, delay = route(payload)
        status, out_headers, out_body, _ = self._answer(path, answer)
        return status, out_headers, out_body, delay

    def _verify(self, path: str, headers: dict[str, str], body: str) -> str | None:
        client_id = headers.get("client-id")
        when = headers.get("request-time")
        raw = headers.get("signature", "")
        if client_id != self.client_id:
            return "INVALID_CLIENT"
        fields = dict(part.strip().partition("=")[::2] for part in raw.split(","))
        if not when or fields.get("algorithm") != "RSA256" or not fields.get("signature"):
            return "INVALID_SIGNATURE"
        text = f"POST {path}\n{client_id}.{when}.{body}"
        try:
            self.acquirer_key.public_key().verify(
                base64.b64decode(unquote(fields["signature"])),
                text.encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            return "INVALID_SIGNATURE"
        return None

    def _answer(self, path: str, payload: dict[str, Any]) -> Answer:
        body = json.dumps(payload)
        when = datetime.now(UTC).isoformat(timespec="seconds")
        signature = _sign(self.alipay_key, f"POST {path}\n{self.client_id}.{when}.{body}")
        headers = {
            "content-type": "application/json; charset=UTF-8",
            "client-id": self.client_id,
            "response-time": when,
            "signature": f"algorithm=RSA256,keyVersion=1,signature={signature}",
        }
        return 200, headers, body.encode(), 0.0

    def _pay(self, payload: dict[str, Any]) -> tuple[dict[str, Any], float]:
        request_id = payload.get("paymentRequestId")
        amount = payload.get("paymentAmount") or {}
        method = payload.get("paymentMethod") or {}
        factor = payload.get("paymentFactor") or {}
        code = method.get("paymentMethodId")
        if (
            not isinstance(request_id, str)
            or amount.get("currency") != "JPY"
            or not str(amount.get("value", "")).isdigit()
            or method.get("paymentMethodType") != "CONNECT_WALLET"
            or not isinstance(code, str)
            or factor.get("inStorePaymentScenario") != "PaymentCode"
            or not isinstance(payload.get("order"), dict)
        ):
            return {"result": _result("F", "PARAM_ILLEGAL")}, 0.0
        if request_id in self.closed_unknown:
            return {"result": _result("F", "ORDER_IS_CLOSED")}, 0.0
        existing = self.payments.get(request_id)
        if existing is not None:
            if existing.amount != amount["value"] or existing.code != code:
                return {"result": _result("F", "REPEAT_REQ_INCONSISTENT")}, 0.0
            return self._pay_answer(existing), 0.0
        scenario = code[-2:]
        self._seq += 1
        payment = Payment(
            request_id, amount["value"], code, f"2026{self._seq:012d}", "S", "SUCCESS"
        )
        delay = 0.0
        if scenario == "02":
            payment.status, payment.result_code, payment.pending_inquiries = (
                "U",
                "PAYMENT_IN_PROCESS",
                2,
            )
        elif scenario == "03":
            payment.status, payment.result_code = "F", "USER_BALANCE_NOT_ENOUGH"
        elif scenario == "04":
            delay = self.slow_seconds
        elif scenario == "05":
            payment.status, payment.result_code, payment.pending_inquiries = (
                "U",
                "PAYMENT_IN_PROCESS",
                10**9,
            )
        elif scenario == "06":
            payment.status, payment.result_code = "F", "INVALID_CODE"
        self.payments[request_id] = payment
        return self._pay_answer(payment), delay

    @staticmethod
    def _pay_answer(p: Payment) -> dict[str, Any]:
        status = "F" if p.status == "CLOSED" else p.status
        answer: dict[str, Any] = {
            "result": _result(status, "ORDER_IS_CLOSED" if p.status == "CLOSED" else p.result_code)
        }
        if status != "F":
            answer |= {
                "paymentId": p.payment_id,
                "paymentAmount": {"currency": "JPY", "value": p.amount},
                "paymentTime": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        return answer

    def _inquiry(self, payload: dict[str, Any]) -> tuple[dict[str, Any], float]:
        p = self.payments.get(str(payload.get("paymentRequestId")))
        if p is None:
            return {"result": _result("F", "ORDER_NOT_EXIST")}, 0.0
        if p.status == "U":
            p.pending_inquiries -= 1
            if p.pending_inquiries <= 0:
                p.status, p.result_code = "S", "SUCCESS"
        if p.status == "CLOSED":
            payment_result = _result("F", "ORDER_IS_CLOSED")
        else:
            payment_result = _result(p.status, p.result_code)
        return {
            "result": _result("S", "SUCCESS"),
            "paymentResult": payment_result,
            "paymentRequestId": p.request_id,
            "paymentId": p.payment_id,
            "paymentAmount": {"currency": "JPY", "value": p.amount},
        }, 0.0

    def _cancel(self, payload: dict[str, Any]) -> tuple[dict[str, Any], float]:
        request_id = str(payload.get("paymentRequestId"))
        p = self.payments.get(request_id)
        if p is None:
            # Nothing arrived: the cancel succeeds and closes the id for a late pay.
            self.closed_unknown.add(request_id)
            return {"result": _result("S", "SUCCESS")}, 0.0
        # Unpaid orders are closed; paid ones are reversed (the money goes back).
        p.status, p.result_code = "CLOSED", "ORDER_IS_CLOSED"
        return {"result": _result("S", "SUCCESS"), "paymentId": p.payment_id}, 0.0

    def _refund(self, payload: dict[str, Any]) -> tuple[dict[str, Any], float]:
        p = self.payments.get(str(payload.get("paymentRequestId")))
        refund_id = payload.get("refundRequestId")
        value = str((payload.get("refundAmount") or {}).get("value", ""))
        if not isinstance(refund_id, str) or not value.isdigit():
            return {"result": _result("F", "PARAM_ILLEGAL")}, 0.0
        if p is None:
            return {"result": _result("F", "ORDER_NOT_EXIST")}, 0.0
        if refund_id in self.refund_in_process_once:
            self.refund_in_process_once.discard(refund_id)
            return {"result": _result("U", "REFUND_IN_PROCESS")}, 0.0
        if refund_id in p.refunds:
            if p.refunds[refund_id] != value:
                return {"result": _result("F", "REPEAT_REQ_INCONSISTENT")}, 0.0
            return _refund_done(refund_id), 0.0
        if p.status != "S":
            return {"result": _result("F", "ORDER_STATUS_INVALID")}, 0.0
        if sum(int(v) for v in p.refunds.values()) + int(value) > int(p.amount):
            return {"result": _result("F", "REFUND_AMOUNT_EXCEED")}, 0.0
        p.refunds[refund_id] = value
        return _refund_done(refund_id), 0.0


def _refund_done(refund_id: str) -> dict[str, Any]:
    return {
        "result": _result("S", "SUCCESS"),
        "refundId": f"RF{refund_id}",
        "refundTime": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _result(status: str, code: str) -> dict[str, str]:
    return {"resultStatus": status, "resultCode": code, "resultMessage": code.lower()}
