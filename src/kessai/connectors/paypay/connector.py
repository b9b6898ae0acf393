"""PayPay as a connector: dynamic QR codes, their payment details, cancel, refunds, webhooks.

Supported: GET-QR-CODE (Create a QRCode), sync (Get payment details of a QR payment), cancel
(Delete a QRCode when nobody paid; Cancel a payment when the state cannot be read), refund and
refund details, and the Transaction webhook (unsigned, so only a hint that a sync confirms).

Not supported: REQUEST (a customer-presented barcode). The public Open Payment API documents no
request that takes the barcode a PayPay user shows in the store; PayPay offers that "store scan"
integration to POS vendors under a separate, non-public specification. Rather than guess at it,
``pay`` raises ``FlowNotSupported`` (SERVICE_NOT_SUPPORTED); see docs/providers.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import time
from typing import Final

import httpx
import msgspec

from kessai.clock import Clock, system_clock
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
from kessai.connectors.paypay import wire
from kessai.connectors.paypay.client import PayPayClient, Reply

log = logging.getLogger("kessai.connectors.paypay")

# Read timeouts PayPay publishes per API ("Timeout: 30s" / "Timeout: 15s").
CREATE_TIMEOUT_SECONDS: Final = 30.0
QUERY_TIMEOUT_SECONDS: Final = 15.0
DELETE_TIMEOUT_SECONDS: Final = 15.0
CANCEL_TIMEOUT_SECONDS: Final = 15.0
REFUND_TIMEOUT_SECONDS: Final = 30.0

NO_CUSTOMER_CODE: Final = (
    "PayPay's public Open Payment API has no request for a customer-presented barcode "
    "(store scan); use GET-QR-CODE with PayPay, or another provider for REQUEST"
)

# Where the gateway keeps what this connector returned as provider_ref (the QR's codeId).
CodeIdLookup = Callable[[str], Awaitable[str | None]]


class PayPayConnector:
    """One merchant's PayPay account."""

    name = "paypay"
    flows: frozenset[Flow] = frozenset(
        {Flow.CREATE_QR, Flow.SYNC, Flow.CANCEL, Flow.REFUND, Flow.REFUND_SYNC, Flow.NOTIFICATION}
    )
    not_supported: Mapping[Flow, str] = {Flow.PAY: NO_CUSTOMER_CODE}
    schedule = Schedule(
        read_timeout_seconds=CREATE_TIMEOUT_SECONDS,
        # The Dynamic QR reference: "The polling interval should be about 2 to 3 seconds".
        poll_interval_seconds=3.0,
        first_poll_after_seconds=2.0,
        # Not published by PayPay; the gateway's one-minute rule applies.
        give_up_after_seconds=60.0,
        cancel_not_before_seconds=0.0,
        # "keep calling until it succeeds with an adequate interval, or till the window ends".
        cancel_retry_interval_seconds=5.0,
        # Cancel a payment: "until 00:14:59 AM on the following day" (JST); refund after that.
        cancel_window_days=1,
        cancel_cutoff=time(0, 15),
        cancel_cutoff_utc_offset_hours=9,
        notes="Cancel is asynchronous (202); an accepted cancel guarantees the money goes back.",
    )

    def __init__(
        self,
        client: PayPayClient,
        *,
        code_ids: CodeIdLookup | None = None,
        clock: Clock = system_clock,
        timeout_cap_seconds: float | None = None,
    ) -> None:
        self.client = client
        self._code_ids = code_ids
        self.clock = clock
        # Caps PayPay's per-API read timeouts (tests use it; so may an impatient operator).
        self.timeout_cap_seconds = timeout_cap_seconds

    def for_account(self, account: str) -> PayPayConnector:
        """Answer itself: this object already is one account."""
        return self

    def _epoch(self) -> int:
        return int(self.clock().timestamp())

    async def _call(
        self,
        method: str,
        path: str,
        timeout: float,
        payload: dict[str, object] | None = None,
        query: dict[str, str] | None = None,
    ) -> Reply | None:
        """One call; ``None`` when no answer arrived (timeout, connection error)."""
        try:
            if self.timeout_cap_seconds is not None:
                timeout = min(timeout, self.timeout_cap_seconds)
            return await self.client.call(
                method, path, payload=payload, query=query, timeout_seconds=timeout
            )
        except httpx.HTTPError as exc:
            log.warning("PayPay %s %s gave no answer: %s", method, path, type(exc).__name__)
            return None

    # -- flows ------------------------------------------------------------------------------

    async def pay(self, request: PayRequest) -> ProviderResult:
        """Not offered: see the module docstring."""
        raise FlowNotSupported(NO_CUSTOMER_CODE, field="code")

    async def create_qr(self, request: QrRequest) -> ProviderResult:
        """Create a Dynamic QR code; a repeat with the same transId returns the first one."""
        body = wire.qr_request(request.ref, request.amount, request.merchant_name, self._epoch())
        reply = await self._call("POST", "/v2/codes", CREATE_TIMEOUT_SECONDS, payload=body)
        if reply is None or reply.status >= 500:
            return ProviderResult(ProviderOutcome.UNKNOWN)
        if reply.code == wire.SUCCESS and reply.status in (200, 201):
            data = wire.decode((reply.body or {}).get("data"), wire.QrCodeData)
            if data is None:
                return ProviderResult(ProviderOutcome.UNKNOWN)
            return ProviderResult(
                ProviderOutcome.WAITING_FOR_CUSTOMER, provider_ref=data.code_id, qr_data=data.url
            )
        if (
            reply.code == wire.DUPLICATE_DYNAMIC_QR_REQUEST
            or reply.status == 429
            or not 400 <= reply.status < 500
        ):
            # The transId exists at PayPay already (or we are throttled), or the answer is not
            # a refusal at all (a 2xx we cannot read, a redirect): what PayPay holds is learnt
            # by a query, never assumed. Only a 4xx refuses the request.
            return ProviderResult(ProviderOutcome.UNKNOWN)
        return _rejected(reply)

    async def sync(self, ref: str) -> ProviderResult:
        """Get payment details of the QR payment ``ref``."""
        reply = await self._call("GET", f"/v2/codes/payments/{ref}", QUERY_TIMEOUT_SECONDS)
        return self._details(reply)

    def _details(self, reply: Reply | None) -> ProviderResult:
        if reply is None:
            return ProviderResult(ProviderOutcome.UNKNOWN)
        if reply.code == wire.DYNAMIC_QR_PAYMENT_NOT_FOUND:
            # "QR code is no longer available and no payment found": nothing was paid.
            return ProviderResult(ProviderOutcome.NOT_FOUND)
        if reply.code != wire.SUCCESS or reply.status != 200:
            return ProviderResult(ProviderOutcome.UNKNOWN)
        data = wire.decode((reply.body or {}).get("data"), wire.PaymentData)
        if data is None:
            return ProviderResult(ProviderOutcome.UNKNOWN)
        return wire.payment_result(data)

    async def cancel(self, ref: str) -> ProviderResult:
        """Withdraw the QR payment ``ref``; CANCELED only once PayPay confirmed it.

        Unpaid: the code is deleted. Paid meanwhile: the answer is SUCCEEDED (the gateway keeps a
        late payment). State unreadable: Cancel a payment, which PayPay guarantees to reverse.
        """
        current = await self.sync(ref)
        outcome = current.outcome
        if outcome is ProviderOutcome.NOT_FOUND:
            return ProviderResult(ProviderOutcome.CANCELED)
        if outcome is ProviderOutcome.WAITING_FOR_CUSTOMER:
            return await self._delete_code(ref)
        if outcome is ProviderOutcome.UNKNOWN:
            return await self._cancel_payment(ref)
        return current

    async def _delete_code(self, ref: str) -> ProviderResult:
        code_id = await self._code_ids(ref) if self._code_ids is not None else None
        if code_id is None:
            # Without the codeId the code cannot be deleted; it ends at PayPay's own expiry,
            # after which a query answers "not found" and the cancel is confirmed.
            log.warning("PayPay codeId of %s unknown; waiting for PayPay's expiry", ref)
            return ProviderResult(ProviderOutcome.UNKNOWN)
        reply = await self._call("DELETE", f"/v2/codes/{code_id}", DELETE_TIMEOUT_SECONDS)
        if reply is not None and reply.code == wire.SUCCESS:
            return ProviderResult(ProviderOutcome.CANCELED)
        if reply is not None and reply.code in (
            wire.DYNAMIC_QR_ALREADY_PAID,
            wire.DYNAMIC_QR_NOT_FOUND,
        ):
            # Paid a moment ago, or already gone: the payment details say which.
            after = await self.sync(ref)
            if after.outcome is ProviderOutcome.NOT_FOUND:
                return ProviderResult(ProviderOutcome.CANCELED)
            if after.outcome is ProviderOutcome.WAITING_FOR_CUSTOMER:
                return ProviderResult(ProviderOutcome.UNKNOWN)
            return after
        return ProviderResult(ProviderOutcome.UNKNOWN)

    async def _cancel_payment(self, ref: str) -> ProviderResult:
        reply = await self._call("DELETE", f"/v2/payments/{ref}", CANCEL_TIMEOUT_SECONDS)
        if reply is None:
            return ProviderResult(ProviderOutcome.UNKNOWN)
        if reply.status == 202 or reply.code == wire.REQUEST_ACCEPTED:
            # An accepted cancel is PayPay's guarantee that any money goes back. Withdraw the
            # code too, so that nobody can pay it after the cancel.
            code_id = await self._code_ids(ref) if self._code_ids is not None else None
            if code_id is not None:
                await self._call("DELETE", f"/v2/codes/{code_id}", DELETE_TIMEOUT_SECONDS)
            return ProviderResult(ProviderOutcome.CANCELED)
        if reply.code == wire.ORDER_NOT_REVERSIBLE:
            # Already final (or past the window): the details say which final state.
            after = await self.sync(ref)
            return (
                after
                if after.outcome is not ProviderOutcome.WAITING_FOR_CUSTOMER
                else (ProviderResult(ProviderOutcome.UNKNOWN))
            )
        return ProviderResult(ProviderOutcome.UNKNOWN)

    async def _payment_id(self, ref: str) -> tuple[str | None, ProviderOutcome]:
        reply = await self._call("GET", f"/v2/codes/payments/{ref}", QUERY_TIMEOUT_SECONDS)
        result = self._details(reply)
        if result.outcome is not ProviderOutcome.SUCCEEDED or reply is None:
            return None, result.outcome
        data = wire.decode((reply.body or {}).get("data"), wire.PaymentData)
        return (data.payment_id if data is not None else None), result.outcome

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Refund a completed payment; PayPay refunds asynchronously, so a details check follows."""
        payment_id, outcome = await self._payment_id(ref)
        if payment_id is None:
            if outcome in (ProviderOutcome.UNKNOWN,):
                return RefundResult(ProviderOutcome.UNKNOWN)
            return RefundResult(ProviderOutcome.FAILED, "PayPay has no completed payment to refund")
        body = wire.refund_request(refund_ref, payment_id, amount, self._epoch())
        reply = await self._call("POST", "/v2/refunds", REFUND_TIMEOUT_SECONDS, payload=body)
        if reply is None or reply.status >= 500:
            return RefundResult(ProviderOutcome.UNKNOWN)
        if reply.code == wire.SUCCESS:
            data = wire.decode((reply.body or {}).get("data"), wire.RefundData)
            first = wire.refund_result(data) if data is not None else None
            if first is not None and first.outcome is not ProviderOutcome.UNKNOWN:
                return first
            return await self._refund_details(refund_ref, payment_id)
        if reply.code in wire.REFUND_REJECTIONS or reply.code == wire.UNAUTHORIZED:
            return RefundResult(ProviderOutcome.FAILED, _message(reply))
        return RefundResult(ProviderOutcome.UNKNOWN)

    async def _refund_details(self, refund_ref: str, payment_id: str) -> RefundResult:
        reply = await self._call(
            "GET",
            f"/v2/refunds/{refund_ref}",
            QUERY_TIMEOUT_SECONDS,
            query={"paymentId": payment_id},
        )
        if reply is None:
            return RefundResult(ProviderOutcome.UNKNOWN)
        if reply.code == wire.NO_SUCH_REFUND_ORDER:
            return RefundResult(ProviderOutcome.NOT_FOUND, "PayPay has no such refund")
        if reply.code != wire.SUCCESS:
            return RefundResult(ProviderOutcome.UNKNOWN)
        data = wire.decode((reply.body or {}).get("data"), wire.RefundData)
        return (
            wire.refund_result(data) if data is not None else RefundResult(ProviderOutcome.UNKNOWN)
        )

    async def refund_sync(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Get refund details (NOT_FOUND: PayPay never received the refund)."""
        payment_id, _outcome = await self._payment_id(ref)
        if payment_id is None:
            return RefundResult(ProviderOutcome.UNKNOWN)
        return await self._refund_details(refund_ref, payment_id)

    async def parse_notification(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> Notification:
        """Read a Transaction webhook; PayPay does not sign them, so it is only a hint."""
        try:
            hook = msgspec.json.decode(body, type=wire.Webhook)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise NotificationRejected("body", "not a PayPay Transaction webhook") from exc
        if hook.notification_type != "Transaction" or not hook.merchant_order_id:
            raise NotificationRejected("body", "not a Transaction event for a merchant order")
        if hook.merchant_id and hook.merchant_id != self.client.merchant_id:
            raise NotificationRejected("merchant", "the webhook names another PayPay merchant")
        return Notification(
            ref=hook.merchant_order_id,
            outcome=wire.webhook_outcome(hook.state),
            verified=False,
            provider_ref=hook.order_id,
            ack_status=200,
            ack_headers={"Content-Type": "text/plain"},
            ack_body=b"OK",
        )


def notification_ref(body: bytes) -> str | None:
    """The transId a webhook is about, read before its account is known (for routing)."""
    try:
        hook = msgspec.json.decode(body, type=wire.Webhook)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return hook.merchant_order_id or None


def _message(reply: Reply) -> str:
    info = (reply.body or {}).get("resultInfo")
    text = str(info.get("message", "")) if isinstance(info, dict) else ""
    return f"PayPay rejected the request: {reply.code or reply.status} {text}".strip()


def _rejected(reply: Reply) -> ProviderResult:
    """A 4xx answer to a create: the request was refused, so nothing can be paid."""
    hint = " (check the API key, secret and MERCHANT_ID)" if reply.status in (401, 403) else ""
    return ProviderResult(
        ProviderOutcome.FAILED,
        failure_code="PROVIDER_ERROR",
        failure_message=(_message(reply) + hint)[:200],
    )
