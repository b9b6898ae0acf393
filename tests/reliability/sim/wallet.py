"""A simulated wallet provider: a ``Connector`` whose failures are drawn from the seed.

It behaves like the real wallets behind the gateway: a payment reference (our transId) is its
idempotency key, a refund reference likewise; a cancel withdraws an unpaid charge, reverses one
whose outcome was still "in process" (optionally any paid one, as Alipay+ and WeChat Pay do), and
leaves a tombstone for a reference it has not seen yet, so that a request that arrives late is
refused; a customer approves or declines in the app. On top of that, every call
may suffer a ``Fault`` (lost reply, delay past the read timeout, late arrival, "in process",
provider error, refusal, duplicate delivery, stale answer).

Its ledger (``entries``) records every yen a customer was charged, refunded or given back by a
reversal. At a quiescent point it must equal the gateway's books.

Nothing here reads the wall clock or the OS's randomness: time is the simulation's clock, and every
draw comes from the simulation's one generator.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from kessai.connectors.base import (
    ALL_FLOWS,
    Notification,
    NotificationRejected,
    PayRequest,
    ProviderOutcome,
    ProviderResult,
    QrRequest,
    RefundResult,
    Schedule,
)
from kessai.domain.identify import generate_code

from .clock import SimClock
from .faults import CallKind, Fault, FaultPlan

NAME: Final = "vopr"
NOTIFY_PATH: Final = f"/v1/notifications/{NAME}"
SIGNATURE_HEADER: Final = "x-vopr-signature"
# Fixed, so that notification bodies (and the trace) are the same on every replay.
_SECRET: Final = b"vopr-notification-key"

# Charge statuses in the wallet's own books.
WAITING: Final = "WAITING"
SUCCEEDED: Final = "SUCCEEDED"
FAILED: Final = "FAILED"
CANCELED: Final = "CANCELED"
EXPIRED: Final = "EXPIRED"

# What a customer code does when it is charged.
SUCCESS: Final = "success"
DECLINED: Final = "declined"
PASSWORD: Final = "password"  # the customer must confirm in the app
BEHAVIOURS: Final = (SUCCESS, DECLINED, PASSWORD)

_OUTCOMES: Final = {
    WAITING: ProviderOutcome.WAITING_FOR_CUSTOMER,
    SUCCEEDED: ProviderOutcome.SUCCEEDED,
    FAILED: ProviderOutcome.FAILED,
    CANCELED: ProviderOutcome.CANCELED,
    EXPIRED: ProviderOutcome.EXPIRED,
}

# How long the gateway waits for an answer, in simulated time: a TIMEOUT or LATE_ARRIVAL fault
# moves the clock this far. The schedule's own read timeout bounds *real* time in the gateway's
# ``asyncio.wait_for``; it is set far out of reach so that a stalled machine never turns into a
# timeout the seed did not choose.
SIMULATED_READ_TIMEOUT_SECONDS: Final = 10.0

# Turns of the event loop a call gives away on its way out and on its way back: mostly a few, now
# and then many, so that a slow call can span most of a concurrent operation.
_PAUSES: Final = (0, 0, 1, 1, 2, 3, 8, 24)

SCHEDULE: Final = Schedule(
    read_timeout_seconds=3600.0,
    poll_interval_seconds=1.0,
    first_poll_after_seconds=0.0,
    give_up_after_seconds=60.0,
    cancel_not_before_seconds=0.0,
    cancel_retry_interval_seconds=1.0,
    cancel_window_days=365,
)


class ProviderUnavailable(Exception):
    """The wallet answered 503 before doing anything."""


@dataclass
class Charge:
    """One payment reference at the wallet."""

    ref: str
    kind: str  # CUSTOMER_CODE or MERCHANT_QR
    service_id: str
    amount: int
    status: str
    created_at: datetime
    expires_at: datetime | None = None
    hidden_until: datetime | None = None
    failure_code: str | None = None
    # Money: what the customer paid for this reference, and what went back.
    captured: int = 0
    refunded: int = 0
    reversed: int = 0

    @property
    def net(self) -> int:
        """What the customer is out of pocket for this reference."""
        return self.captured - self.refunded - self.reversed


@dataclass(frozen=True)
class Entry:
    """One movement of money in the wallet's ledger."""

    at: datetime
    ref: str
    kind: str  # charge, refund or reversal
    amount: int
    refund_ref: str | None = None


@dataclass(frozen=True)
class RefundRecord:
    """A refund reference the wallet decided (it answers the same decision forever)."""

    ref: str
    amount: int
    succeeded: bool
    reason: str | None = None


@dataclass
class _Code:
    service_id: str
    behaviour: str
    used: bool = False


@dataclass(order=True)
class _Delivery:
    due: datetime
    seq: int
    kind: CallKind = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)


class SimWallet:
    """The simulated wallets of every service, as one connector named ``vopr``."""

    name = NAME
    flows = ALL_FLOWS
    schedule = SCHEDULE

    def __init__(
        self,
        clock: SimClock,
        plan: FaultPlan,
        *,
        double_charge: bool = False,
        reverse_paid: bool = False,
        password_window_seconds: float = 120.0,
        max_hide_seconds: float = 20.0,
    ) -> None:
        self.clock = clock
        self.plan = plan
        self.rng: random.Random = plan.rng
        # A deliberately broken wallet: a second delivery of a payment charges the customer again.
        self.double_charge = double_charge
        # A cancel reverses even a payment whose success was visible (see ``_cancel``).
        self.reverse_paid = reverse_paid
        self.password_window = timedelta(seconds=password_window_seconds)
        self.max_hide = max_hide_seconds
        self.max_late = plan.rates.late_arrival_max_seconds
        self.timeout = SIMULATED_READ_TIMEOUT_SECONDS
        self.charges: dict[str, Charge] = {}
        self.tombstones: set[str] = set()  # membership only, never iterated
        self.refunds: dict[str, RefundRecord] = {}
        self.entries: list[Entry] = []
        self.codes: dict[str, _Code] = {}
        self.waiting: dict[str, Charge] = {}  # insertion-ordered: the customers still deciding
        self.outbox: list[tuple[str, str]] = []  # notifications not yet delivered (ref, status)
        self.dirty: dict[str, None] = {}  # references whose money moved since the last check
        self._deliveries: list[_Delivery] = []
        self._seq = 0
        self.calls = 0

    # -- the customer's side -------------------------------------------------------------------

    def issue_code(self, service_id: str, behaviour: str) -> str:
        """A fresh one-time customer code of ``service_id`` that will do ``behaviour``."""
        while True:
            code = generate_code(service_id, self.rng)
            if code not in self.codes:
                self.codes[code] = _Code(service_id, behaviour)
                return code

    def deciding(self) -> list[str]:
        """References a customer can still approve or decline, oldest first."""
        now = self.clock()
        return [
            ref
            for ref, charge in self.waiting.items()
            if charge.expires_at is None or now < charge.expires_at
        ]

    def customer_acts(self, ref: str, approve: bool) -> str:
        """The customer approves (pays) or declines a waiting charge; answers its new status."""
        charge = self.charges[ref]
        self._expire_if_due(charge)
        if charge.status != WAITING:
            return charge.status
        if approve:
            self._capture(charge)
        else:
            self._finish(charge, FAILED, "CUSTOMER_DECLINED")
        return charge.status

    # -- time ------------------------------------------------------------------------------------

    def tick(self) -> int:
        """Deliver requests whose time has come and end charges nobody approved in time."""
        now = self.clock()
        delivered = 0
        while self._deliveries and self._deliveries[0].due <= now:
            item = heapq.heappop(self._deliveries)
            self._deliver(item.kind, item.args)
            delivered += 1
        for charge in [c for c in self.waiting.values() if c.expires_at and now >= c.expires_at]:
            self._expire_if_due(charge)
        return delivered

    def in_flight(self) -> set[str]:
        """References with a request still on its way to the wallet (for membership tests)."""
        return {_ref_of(item.args) for item in self._deliveries}

    def settled_net(self, ref: str, in_flight: set[str]) -> int | None:
        """The customer's net payment for ``ref`` once nothing about it can change any more.

        None while the customer may still act, the outcome is hidden, or a request is on its way.
        """
        if ref in in_flight:
            return None
        charge = self.charges.get(ref)
        if charge is None:
            return 0
        if charge.status == WAITING or (
            charge.hidden_until is not None and self.clock() < charge.hidden_until
        ):
            return None
        return charge.net

    def ledger_nets(self) -> dict[str, int]:
        """What each customer is out of pocket per reference, summed from the ledger's entries."""
        nets: dict[str, int] = {}
        for entry in self.entries:
            sign = 1 if entry.kind == "charge" else -1
            nets[entry.ref] = nets.get(entry.ref, 0) + sign * entry.amount
        return nets

    def next_delivery(self) -> datetime | None:
        """When the next delayed request reaches the wallet."""
        return self._deliveries[0].due if self._deliveries else None

    def _schedule(self, delay: float, kind: CallKind, args: tuple[Any, ...]) -> None:
        self._seq += 1
        due = self.clock() + timedelta(seconds=delay)
        heapq.heappush(self._deliveries, _Delivery(due, self._seq, kind, args))

    def _deliver(self, kind: CallKind, args: tuple[Any, ...]) -> None:
        if kind is CallKind.PAY:
            self._pay(*args)
        elif kind is CallKind.CREATE_QR:
            self._create_qr(*args)
        elif kind is CallKind.CANCEL:
            self._cancel(*args)
        elif kind is CallKind.REFUND:
            self._refund(*args)

    # -- the connector -------------------------------------------------------------------------

    def for_account(self, account: str) -> SimWallet:
        """One account for every merchant: this wallet."""
        return self

    async def pay(self, request: PayRequest) -> ProviderResult:
        """Charge a customer code (REQUEST)."""
        return await self._call(CallKind.PAY, (request,), lambda: self._pay(request))

    async def create_qr(self, request: QrRequest) -> ProviderResult:
        """Open a charge the customer scans and approves (GET-QR-CODE)."""
        return await self._call(CallKind.CREATE_QR, (request,), lambda: self._create_qr(request))

    async def sync(self, ref: str) -> ProviderResult:
        """Where the charge ``ref`` stands."""
        return await self._call(CallKind.SYNC, (ref,), lambda: self._query(ref))

    async def cancel(self, ref: str) -> ProviderResult:
        """Withdraw an unpaid charge or reverse one whose answer was lost."""
        return await self._call(CallKind.CANCEL, (ref,), lambda: self._cancel(ref))

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Give back ``amount`` yen of the charge ``ref``, once per ``refund_ref``."""
        args = (ref, refund_ref, amount)
        return await self._call(CallKind.REFUND, args, lambda: self._refund(*args))

    async def refund_sync(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Where the refund ``refund_ref`` stands (NOT_FOUND: it never arrived)."""
        return await self._call(
            CallKind.REFUND_SYNC, (ref, refund_ref), lambda: self._refund_query(refund_ref)
        )

    async def parse_notification(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> Notification:
        """Check a notification's signature and read it."""
        if headers.get(SIGNATURE_HEADER) != _sign(body):
            raise NotificationRejected("signature", "the signature does not match the body")
        try:
            data = json.loads(body)
            ref, status = str(data["ref"]), str(data["status"])
            outcome = _OUTCOMES[status]
        except (ValueError, KeyError, TypeError) as exc:
            raise NotificationRejected("body", "not a notification") from exc
        return Notification(ref=ref, outcome=outcome, verified=True, provider_ref=ref)

    def notification(
        self, ref: str, status: str, *, forged: bool = False
    ) -> tuple[dict[str, str], bytes]:
        """The headers and body the wallet POSTs about ``ref`` (``forged``: a bad signature)."""
        body = json.dumps({"ref": ref, "status": status}, sort_keys=True).encode()
        signature = "0" * 64 if forged else _sign(body)
        return {SIGNATURE_HEADER: signature}, body

    # -- faults --------------------------------------------------------------------------------

    async def _pause(self) -> None:
        """Let other tasks run for a few turns of the event loop, as a network round trip would.

        Only the seed decides how many turns, so concurrent operations interleave the same way
        on every replay.
        """
        for _ in range(self.rng.choice(_PAUSES)):
            await asyncio.sleep(0)

    async def _call(self, kind: CallKind, args: tuple[Any, ...], do: Callable[[], Any]) -> Any:
        """The request travels, the wallet acts (or a fault strikes), the answer travels back."""
        self.calls += 1
        # A call that times out ends this long after it began; calls that wait at the same
        # time wait together, so their timeouts overlap instead of adding up.
        deadline = self.clock() + timedelta(seconds=self.timeout)
        await self._pause()
        try:
            return self._act(kind, args, do, deadline)
        finally:
            await self._pause()

    def _act(
        self, kind: CallKind, args: tuple[Any, ...], do: Callable[[], Any], deadline: datetime
    ) -> Any:
        fault = self.plan.call(kind, _ref_of(args))
        if fault is Fault.ERROR_BEFORE:
            raise ProviderUnavailable(f"{kind}: 503")
        if fault is Fault.LATE_ARRIVAL:
            # The gateway waits its whole read timeout; the request lands some time after.
            self.clock.advance_to(deadline)
            self._schedule(self.rng.uniform(0.0, self.max_late), kind, args)
            raise TimeoutError(f"{kind}: no answer within the read timeout")
        if fault is Fault.REFUSED:
            return self._refuse(kind, args)
        result = do()
        if fault is Fault.DUPLICATE:
            # The copy lands at once or a little later; either way the wallet sees it twice.
            delay = self.rng.choice((0.0, self.rng.uniform(0.0, 30.0)))
            if delay == 0.0:
                result = do()
            else:
                self._schedule(delay, kind, args)
        if fault is Fault.LOST_REPLY:
            raise ConnectionResetError(f"{kind}: connection reset before the answer")
        if fault is Fault.TIMEOUT:
            self.clock.advance_to(deadline)
            raise TimeoutError(f"{kind}: the answer came after the read timeout")
        if fault is Fault.IN_PROCESS and kind is CallKind.PAY:
            charge = self.charges.get(args[0].ref)
            if charge is not None:
                hide = self.rng.uniform(1.0, self.max_hide)
                charge.hidden_until = self.clock() + timedelta(seconds=hide)
            return ProviderResult(ProviderOutcome.UNKNOWN, provider_ref=args[0].ref)
        if fault is Fault.STALE:
            if kind is CallKind.REFUND_SYNC:
                return RefundResult(ProviderOutcome.UNKNOWN, "in process")
            return ProviderResult(ProviderOutcome.UNKNOWN, provider_ref=args[0])
        return result

    def _refuse(self, kind: CallKind, args: tuple[Any, ...]) -> Any:
        """A definite refusal; the wallet remembers it, so a later copy is refused too."""
        if kind is CallKind.REFUND:
            ref, refund_ref, amount = args
            record = self.refunds.setdefault(
                refund_ref, RefundRecord(ref, amount, False, "refused by the wallet")
            )
            if record.succeeded:
                return RefundResult(ProviderOutcome.SUCCEEDED)
            return RefundResult(ProviderOutcome.FAILED, record.reason)
        if kind not in (CallKind.PAY, CallKind.CREATE_QR):
            raise ProviderUnavailable(f"{kind}: refused")
        request = args[0]
        if request.ref not in self.charges and request.ref not in self.tombstones:
            kind_name = "CUSTOMER_CODE" if kind is CallKind.PAY else "MERCHANT_QR"
            self.charges[request.ref] = Charge(
                ref=request.ref,
                kind=kind_name,
                service_id=request.service_id,
                amount=request.amount,
                status=FAILED,
                created_at=self.clock(),
                failure_code="PROVIDER_ERROR",
            )
        return self._query(request.ref)

    # -- the wallet's books --------------------------------------------------------------------

    def _pay(self, request: PayRequest) -> ProviderResult:
        now = self.clock()
        existing = self.charges.get(request.ref)
        if existing is not None:
            if self.double_charge and existing.status == SUCCEEDED:
                self._book(existing, "charge", existing.amount)
            return self._query(request.ref)
        if request.ref in self.tombstones:
            return ProviderResult(ProviderOutcome.CANCELED, provider_ref=request.ref)
        charge = Charge(
            ref=request.ref,
            kind="CUSTOMER_CODE",
            service_id=request.service_id,
            amount=request.amount,
            status=WAITING,
            created_at=now,
        )
        self.charges[request.ref] = charge
        code = self.codes.get(request.code)
        if code is None or code.service_id != request.service_id:
            self._finish(charge, FAILED, "UNKNOWN_CODE")
        elif code.used:
            self._finish(charge, FAILED, "CODE_ALREADY_USED")
        else:
            code.used = True
            if code.behaviour == SUCCESS:
                self._capture(charge)
            elif code.behaviour == DECLINED:
                self._finish(charge, FAILED, "DECLINED")
            else:
                charge.expires_at = now + self.password_window
                self.waiting[charge.ref] = charge
        return self._query(request.ref)

    def _create_qr(self, request: QrRequest) -> ProviderResult:
        if request.ref in self.tombstones:
            return ProviderResult(ProviderOutcome.CANCELED, provider_ref=request.ref)
        if request.ref not in self.charges:
            charge = Charge(
                ref=request.ref,
                kind="MERCHANT_QR",
                service_id=request.service_id,
                amount=request.amount,
                status=WAITING,
                created_at=self.clock(),
                expires_at=request.expires_at,
            )
            self.charges[request.ref] = charge
            self.waiting[request.ref] = charge
        return self._query(request.ref)

    def _query(self, ref: str) -> ProviderResult:
        charge = self.charges.get(ref)
        if charge is None:
            if ref in self.tombstones:
                return ProviderResult(ProviderOutcome.CANCELED, provider_ref=ref)
            return ProviderResult(ProviderOutcome.NOT_FOUND, provider_ref=ref)
        if charge.hidden_until is not None and self.clock() < charge.hidden_until:
            return ProviderResult(ProviderOutcome.UNKNOWN, provider_ref=ref)
        self._expire_if_due(charge)
        qr_data = f"vopr://pay/{ref}" if charge.kind == "MERCHANT_QR" else None
        if charge.status == FAILED:
            return ProviderResult(
                ProviderOutcome.FAILED,
                provider_ref=ref,
                failure_code=charge.failure_code,
                failure_message="the wallet did not take the payment",
                qr_data=qr_data,
            )
        return ProviderResult(_OUTCOMES[charge.status], provider_ref=ref, qr_data=qr_data)

    def _cancel(self, ref: str) -> ProviderResult:
        charge = self.charges.get(ref)
        if charge is None:
            # Not seen yet: refuse the reference from now on, as real wallets do.
            self.tombstones.add(ref)
            return ProviderResult(ProviderOutcome.CANCELED, provider_ref=ref)
        self._expire_if_due(charge)
        hidden = charge.hidden_until is not None and self.clock() < charge.hidden_until
        charge.hidden_until = None
        if charge.status == WAITING:
            self._finish(charge, CANCELED, None)
        elif charge.status == SUCCEEDED and charge.refunded == 0 and (hidden or self.reverse_paid):
            # The connector contract: a cancel withdraws what the gateway could not have seen
            # paid (an outcome still "in process"); a visible payment stays paid. Some wallets
            # (Alipay+ cancelPayment, WeChat Pay reverse) reverse paid payments too.
            self._book(charge, "reversal", charge.captured - charge.reversed)
            self._finish(charge, CANCELED, None)
        return self._query(ref)

    def _refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        record = self.refunds.get(refund_ref)
        if record is None:
            charge = self.charges.get(ref)
            if charge is None or charge.status != SUCCEEDED:
                record = RefundRecord(ref, amount, False, "no completed charge to refund")
            elif charge.refunded + amount > charge.amount:
                record = RefundRecord(ref, amount, False, "more than the charge")
            else:
                record = RefundRecord(ref, amount, True)
                self._book(charge, "refund", amount, refund_ref)
            self.refunds[refund_ref] = record
        if record.succeeded:
            return RefundResult(ProviderOutcome.SUCCEEDED)
        return RefundResult(ProviderOutcome.FAILED, record.reason)

    def _refund_query(self, refund_ref: str) -> RefundResult:
        record = self.refunds.get(refund_ref)
        if record is None:
            return RefundResult(ProviderOutcome.NOT_FOUND, "no such refund")
        if record.succeeded:
            return RefundResult(ProviderOutcome.SUCCEEDED)
        return RefundResult(ProviderOutcome.FAILED, record.reason)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _capture(self, charge: Charge) -> None:
        self._book(charge, "charge", charge.amount)
        self._finish(charge, SUCCEEDED, None)

    def _finish(self, charge: Charge, status: str, failure_code: str | None) -> None:
        charge.status = status
        charge.failure_code = failure_code
        self.waiting.pop(charge.ref, None)
        self.outbox.append((charge.ref, status))

    def _expire_if_due(self, charge: Charge) -> None:
        if charge.status != WAITING or charge.expires_at is None:
            return
        if self.clock() >= charge.expires_at:
            if charge.kind == "MERCHANT_QR":
                self._finish(charge, EXPIRED, None)
            else:
                self._finish(charge, FAILED, "CUSTOMER_DECLINED")

    def _book(self, charge: Charge, kind: str, amount: int, refund_ref: str | None = None) -> None:
        if kind == "charge":
            charge.captured += amount
        elif kind == "refund":
            charge.refunded += amount
        else:
            charge.reversed += amount
        self.entries.append(Entry(self.clock(), charge.ref, kind, amount, refund_ref))
        self.dirty[charge.ref] = None


def _ref_of(args: tuple[Any, ...]) -> str:
    first = args[0]
    return first if isinstance(first, str) else str(first.ref)


def _sign(body: bytes) -> str:
    return hmac.new(_SECRET, body, hashlib.sha256).hexdigest()
