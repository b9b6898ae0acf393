"""WeChat Pay (API v2, 付款码支付 / Quick Pay) as a connector.

Supported: REQUEST (micropay with the code the customer shows), sync (orderquery), cancel
(reverse: closes an unpaid order, gives back a paid one), refund (orderquery for the order total,
then refund and one refundquery) and refund sync (refundquery).

Not supported: GET-QR-CODE (Native payment through unifiedorder is another product, not
implemented here) and notifications (micropay answers synchronously and sends none).

Unknown outcomes follow the micropay guide (Global edition): on SYSTEMERROR wait 5 s, then query;
on USERPAYING query every 10 s until success or about 30 s; then reverse, never earlier than 15 s
after the order; reverse works for orders of the last 7 days and must be repeated while it answers
``recall=Y`` or fails.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

import httpx

from kessai.connectors.base import (
    Flow,
    FlowNotSupported,
    Notification,
    PayRequest,
    ProviderOutcome,
    ProviderResult,
    QrRequest,
    RefundResult,
    Schedule,
)
from kessai.connectors.wechatpay import wire
from kessai.connectors.wechatpay.client import Reply, WeChatPayClient

log = logging.getLogger("kessai.connectors.wechatpay")

MICROPAY_PATH: Final = "/pay/micropay"
ORDERQUERY_PATH: Final = "/pay/orderquery"
REVERSE_PATH: Final = "/secapi/pay/reverse"
REFUND_PATH: Final = "/secapi/pay/refund"
REFUNDQUERY_PATH: Final = "/pay/refundquery"
CALL_TIMEOUT_SECONDS: Final = 10.0

NO_QR: Final = (
    "the WeChat Pay connector implements Quick Pay (micropay, the customer shows a code) only; "
    "Native QR payment is not implemented"
)
NO_NOTIFICATIONS: Final = "WeChat Pay micropay sends no payment notifications"


class WeChatPayConnector:
    """One WeChat Pay merchant (or an institution's sub-merchant)."""

    name = "wechatpay"
    flows: frozenset[Flow] = frozenset(
        {Flow.PAY, Flow.SYNC, Flow.CANCEL, Flow.REFUND, Flow.REFUND_SYNC}
    )
    not_supported: Mapping[Flow, str] = {
        Flow.CREATE_QR: NO_QR,
        Flow.NOTIFICATION: NO_NOTIFICATIONS,
    }
    schedule = Schedule(
        read_timeout_seconds=CALL_TIMEOUT_SECONDS,
        # USERPAYING: "query at an interval (10 seconds suggested) ... until success or a
        # timeout (30 seconds suggested)"; SYSTEMERROR: "wait 5 seconds, then query".
        poll_interval_seconds=10.0,
        first_poll_after_seconds=5.0,
        give_up_after_seconds=30.0,
        # "Revoke Order API should be called at least 15s later after the order is created."
        cancel_not_before_seconds=15.0,
        cancel_retry_interval_seconds=10.0,
        # "This API can be called to cancel a transaction made within 7 days".
        cancel_window_days=7,
        notes="reverse and refund need the merchant's API client certificate (mutual TLS).",
    )

    def __init__(
        self,
        client: WeChatPayClient,
        *,
        client_ip: str = "127.0.0.1",
        timeout_cap_seconds: float | None = None,
    ) -> None:
        self.client = client
        self.client_ip = client_ip
        self.timeout_seconds = min(
            CALL_TIMEOUT_SECONDS, timeout_cap_seconds or CALL_TIMEOUT_SECONDS
        )

    def for_account(self, account: str) -> WeChatPayConnector:
        """Answer itself: this object already is one account."""
        return self

    async def _call(self, path: str, fields: dict[str, str], *, tls: bool = False) -> Reply | None:
        """One call; ``None`` when no trustworthy answer arrived."""
        try:
            reply = await self.client.call(
                path, fields, timeout_seconds=self.timeout_seconds, tls=tls
            )
        except httpx.HTTPError as exc:
            log.warning("WeChat Pay %s gave no answer: %s", path, type(exc).__name__)
            return None
        if reply.fields is None or not reply.verified:
            log.warning("WeChat Pay %s answer unreadable or unsigned (%s)", path, reply.status)
            return None
        return reply

    async def pay(self, request: PayRequest) -> ProviderResult:
        """micropay; out_trade_no (our transId) identifies the order in every later call."""
        fields = wire.micropay_request(
            request.ref, request.amount, request.code, request.merchant_name, self.client_ip
        )
        reply = await self._call(MICROPAY_PATH, fields)
        if reply is None or reply.fields is None:
            return ProviderResult(ProviderOutcome.UNKNOWN)
        return wire.micropay_outcome(reply.fields)

    async def create_qr(self, request: QrRequest) -> ProviderResult:
        """Not offered by this connector: see the module docstring."""
        raise FlowNotSupported(NO_QR, field="serviceId")

    async def sync(self, ref: str) -> ProviderResult:
        """Query the order (orderquery) by out_trade_no."""
        reply = await self._call(ORDERQUERY_PATH, {"out_trade_no": ref})
        if reply is None or reply.fields is None:
            return ProviderResult(ProviderOutcome.UNKNOWN)
        return wire.orderquery_outcome(reply.fields)

    async def cancel(self, ref: str) -> ProviderResult:
        """reverse; CANCELED only when WeChat Pay confirms (SUCCESS with recall=N)."""
        reply = await self._call(REVERSE_PATH, {"out_trade_no": ref}, tls=True)
        if reply is None or reply.fields is None:
            return ProviderResult(ProviderOutcome.UNKNOWN)
        result = wire.reverse_outcome(reply.fields)
        if reply.get("err_code") == "REVERSE_EXPIRE":
            # Past the 7 days a reverse allows: the order's own state is the answer.
            return await self.sync(ref)
        return result

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Refund (the order total comes from orderquery), then one refundquery."""
        order = await self._call(ORDERQUERY_PATH, {"out_trade_no": ref})
        if order is None or order.fields is None:
            return RefundResult(ProviderOutcome.UNKNOWN)
        state = wire.orderquery_outcome(order.fields)
        total = order.get("total_fee")
        if state.outcome is not ProviderOutcome.SUCCEEDED or not total.isdigit():
            if state.outcome is ProviderOutcome.UNKNOWN:
                return RefundResult(ProviderOutcome.UNKNOWN)
            return RefundResult(ProviderOutcome.FAILED, "WeChat Pay has no paid order to refund")
        fields = {
            "out_trade_no": ref,
            "out_refund_no": refund_ref,
            "total_fee": total,
            "refund_fee": str(amount),
            "refund_fee_type": wire.CURRENCY,
        }
        reply = await self._call(REFUND_PATH, fields, tls=True)
        if reply is None or reply.fields is None:
            return RefundResult(ProviderOutcome.UNKNOWN)
        first = wire.refund_outcome(reply.fields)
        if first is not None:
            return first
        return await self.refund_sync(ref, refund_ref, amount)

    async def refund_sync(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Query the refund (refundquery) by out_refund_no."""
        reply = await self._call(REFUNDQUERY_PATH, {"out_refund_no": refund_ref})
        if reply is None or reply.fields is None:
            return RefundResult(ProviderOutcome.UNKNOWN)
        return wire.refundquery_outcome(reply.fields)

    async def parse_notification(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> Notification:
        """Not offered: micropay sends no notifications."""
        raise FlowNotSupported(NO_NOTIFICATIONS)


def notification_ref(body: bytes) -> str | None:
    """WeChat Pay micropay sends no notifications, so none is routed."""
    return None
