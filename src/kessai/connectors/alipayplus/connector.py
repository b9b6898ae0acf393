"""Alipay+ as a connector (acquirer side): User-presented Mode pay, inquiry, cancel, refund.

Supported: REQUEST (pay with the code the customer shows), sync (inquiryPayment), cancel
(cancelPayment, which also reverses a payment that went through), refund, refund sync (the
documented way is to re-send the refund with the same refundRequestId), and the notifyPayment
notification, whose signature is verified and whose answer is signed.

Not supported: GET-QR-CODE. Alipay+ offers Merchant-presented Mode (order codes) too, but this
connector implements the User-presented Mode integration only.

Unknown outcomes follow the ACQP guide: on U, inquire every 3 s; if still U after 60 s, cancel;
mark the payment failed only after the cancel succeeded (``Schedule``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, time
from typing import Any, Final

import httpx
import msgspec

from kessai.clock import Clock, system_clock
from kessai.connectors.alipayplus import wire
from kessai.connectors.alipayplus.client import AlipayPlusClient, Reply, header
from kessai.connectors.base import (
    Flow,
    FlowNotSupported,
    Notification,
    NotificationRejected,
    PayRequest,
    ProviderOutcome,
    ProviderResult,
    QrRequest,
    RefundResult,
    Schedule,
)

log = logging.getLogger("kessai.connectors.alipayplus")

PAY_PATH: Final = "/aps/api/v1/payments/pay"
INQUIRY_PATH: Final = "/aps/api/v1/payments/inquiryPayment"
CANCEL_PATH: Final = "/aps/api/v1/payments/cancelPayment"
REFUND_PATH: Final = "/aps/api/v1/payments/refund"
CALL_TIMEOUT_SECONDS: Final = 15.0
# A notification whose Request-Time is further than this from our clock is refused.
NOTIFICATION_CLOCK_SKEW_SECONDS: Final = 600

NO_QR: Final = (
    "this Alipay+ connector implements User-presented Mode only (the customer shows a code); "
    "Merchant-presented Mode order codes are not implemented"
)


class AlipayPlusConnector:
    """One acquirer account at Alipay+."""

    name = "alipayplus"
    flows: frozenset[Flow] = frozenset(
        {Flow.PAY, Flow.SYNC, Flow.CANCEL, Flow.REFUND, Flow.REFUND_SYNC, Flow.NOTIFICATION}
    )
    not_supported: Mapping[Flow, str] = {Flow.CREATE_QR: NO_QR}
    schedule = Schedule(
        read_timeout_seconds=CALL_TIMEOUT_SECONDS,
        # "The polling of inquiryPayment must be performed with an interval of 3 seconds in 60
        # seconds. After 60 seconds, if ... still U, ... use the cancelPayment interface".
        poll_interval_seconds=3.0,
        first_poll_after_seconds=3.0,
        give_up_after_seconds=60.0,
        cancel_not_before_seconds=0.0,
        # "If the cancellation fails, you need to retry the cancelPayment request until the
        # cancellation succeeds."
        cancel_retry_interval_seconds=3.0,
        # "A payment can be canceled before 00:15 UTC+8 of the T+1 day."
        cancel_window_days=1,
        cancel_cutoff=time(0, 15),
        cancel_cutoff_utc_offset_hours=8,
        notes="Only after the cancel succeeded may the payment be marked failed.",
    )

    def __init__(
        self,
        client: AlipayPlusClient,
        *,
        reference_merchant_id: str,
        merchant_mcc: str = "5999",
        store_id: str | None = None,
        notify_url: str | None = None,
        terminal_id: str | None = None,
        clock: Clock = system_clock,
        timeout_cap_seconds: float | None = None,
    ) -> None:
        self.client = client
        self.timeout_seconds = min(
            CALL_TIMEOUT_SECONDS, timeout_cap_seconds or CALL_TIMEOUT_SECONDS
        )
        self.reference_merchant_id = reference_merchant_id
        self.merchant_mcc = merchant_mcc
        self.store_id = store_id or reference_merchant_id
        self.notify_url = notify_url
        self.terminal_id = terminal_id
        self.clock = clock

    def for_account(self, account: str) -> AlipayPlusConnector:
        """Answer itself: this object already is one account."""
        return self

    async def _call(self, path: str, payload: dict[str, Any]) -> Reply | None:
        """One signed call; ``None`` when no trustworthy answer arrived."""
        try:
            reply = await self.client.call(path, payload, self.timeout_seconds)
        except httpx.HTTPError as exc:
            log.warning("Alipay+ %s gave no answer: %s", path, type(exc).__name__)
            return None
        if not reply.verified:
            # An answer whose signature does not hold could come from anyone: not an answer.
            log.warning("Alipay+ %s answer failed signature validation (%s)", path, reply.status)
            return None
        return reply

    async def pay(self, request: PayRequest) -> ProviderResult:
        """Send pay in User-presented Mode; paymentRequestId (our transId) is idempotent."""
        body = wire.pay_request(
            ref=request.ref,
            value=request.amount,
            code=request.code,
            merchant_name=request.merchant_name,
            reference_merchant_id=self.reference_merchant_id,
            merchant_mcc=self.merchant_mcc,
            store_id=self.store_id,
            terminal_id=self.terminal_id,
            request_time=self.client.now_text(),
            notify_url=self.notify_url,
        )
        reply = await self._call(PAY_PATH, body)
        if reply is None:
            return ProviderResult(ProviderOutcome.UNKNOWN)
        status, code, message = reply.result()
        result = wire.payment_outcome(status, code, message)
        if result.outcome is ProviderOutcome.NOT_FOUND:
            # pay never answers "not found" for the order it is creating; take it as unknown.
            return ProviderResult(ProviderOutcome.UNKNOWN)
        return _with_ref(result, reply)

    async def create_qr(self, request: QrRequest) -> ProviderResult:
        """Not offered by this connector: see the module docstring."""
        raise FlowNotSupported(NO_QR, field="serviceId")

    async def sync(self, ref: str) -> ProviderResult:
        """Send inquiryPayment: ``result`` is the inquiry, ``paymentResult`` the payment."""
        reply = await self._call(INQUIRY_PATH, {"paymentRequestId": ref})
        if reply is None:
            return ProviderResult(ProviderOutcome.UNKNOWN)
        status, code, _message = reply.result()
        if status == "F" and code == wire.ORDER_NOT_EXIST:
            return ProviderResult(ProviderOutcome.NOT_FOUND)
        if status != "S":
            return ProviderResult(ProviderOutcome.UNKNOWN)
        p_status, p_code, p_message = reply.result("paymentResult")
        return _with_ref(wire.payment_outcome(p_status, p_code, p_message), reply)

    async def cancel(self, ref: str) -> ProviderResult:
        """cancelPayment; CANCELED only when Alipay+ says SUCCESS (it then also reverses funds)."""
        reply = await self._call(CANCEL_PATH, {"paymentRequestId": ref})
        if reply is None:
            return ProviderResult(ProviderOutcome.UNKNOWN)
        status, code, _message = reply.result()
        if status == "S":
            return ProviderResult(ProviderOutcome.CANCELED)
        if status == "F" and code == wire.ORDER_NOT_EXIST:
            return ProviderResult(ProviderOutcome.NOT_FOUND)
        if status == "F":
            # Not cancelled (for example, past the window): where the payment stands decides.
            current = await self.sync(ref)
            if current.outcome in (ProviderOutcome.SUCCEEDED, ProviderOutcome.CANCELED):
                return current
        return ProviderResult(ProviderOutcome.UNKNOWN)

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """refund; refundRequestId is idempotent, so the same call also serves as refund sync."""
        body = {
            "paymentRequestId": ref,
            "refundRequestId": refund_ref,
            "refundAmount": wire.amount(amount),
            "refundReason": "refund requested by the merchant",
        }
        reply = await self._call(REFUND_PATH, body)
        if reply is None:
            return RefundResult(ProviderOutcome.UNKNOWN)
        return wire.refund_outcome(*reply.result())

    async def refund_sync(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Alipay+ has no refund query for acquirers: "use the same refundRequestId to retry"."""
        return await self.refund(ref, refund_ref, amount)

    async def parse_notification(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> Notification:
        """Verify a notifyPayment request and build the signed acknowledgement."""
        text = body.decode(errors="replace")
        failed = self.client.verify_message("POST", path, headers, text, "Request-Time")
        if failed is not None:
            raise NotificationRejected(failed, "the notification's signature does not verify")
        sent = header(headers, "Request-Time") or ""
        if not _close_in_time(sent, self.clock().timestamp()):
            raise NotificationRejected("clock", f"Request-Time {sent} is too far from our clock")
        try:
            note = msgspec.json.decode(body, type=wire.NotifyPayment)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise NotificationRejected("body", "not a notifyPayment body") from exc
        result = wire.payment_outcome(
            note.payment_result.result_status,
            note.payment_result.result_code,
            note.payment_result.result_message,
        )
        answer = json.dumps(wire.ack(), separators=(",", ":"))
        return Notification(
            ref=note.payment_request_id,
            outcome=result.outcome,
            verified=True,
            provider_ref=note.payment_id,
            ack_status=200,
            ack_headers=self.client.signed_headers("POST", path, answer, "Response-Time"),
            ack_body=answer.encode(),
        )


def notification_ref(body: bytes) -> str | None:
    """The transId a notification is about, read before its account is known (for routing)."""
    try:
        return msgspec.json.decode(body, type=wire.NotifyPayment).payment_request_id
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def _with_ref(result: ProviderResult, reply: Reply) -> ProviderResult:
    payment_id = (reply.body or {}).get("paymentId")
    if not isinstance(payment_id, str) or not payment_id:
        return result
    return ProviderResult(
        result.outcome,
        provider_ref=payment_id,
        failure_code=result.failure_code,
        failure_message=result.failure_message,
    )


def _close_in_time(text: str, now_epoch: float) -> bool:
    try:
        sent = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    if sent.tzinfo is None:
        return False
    return abs(sent.timestamp() - now_epoch) <= NOTIFICATION_CLOCK_SKEW_SECONDS
