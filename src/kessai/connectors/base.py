"""The one interface every wallet provider's connector implements.

One method per flow: pay with a customer code, create a dynamic QR, sync (query), cancel/reverse,
refund, refund sync, and parse a notification. A connector never raises for an unknown outcome: a
timeout, an "in process" answer or a status it does not recognise comes back as
``ProviderOutcome.UNKNOWN`` (pessimistic mapping). Only a definite answer is SUCCEEDED or FAILED.
A flow the provider does not offer raises ``FlowNotSupported`` (SERVICE_NOT_SUPPORTED on the wire).

Each connector also carries its provider's published timing rules as data (``Schedule``): how long
to wait for an answer, how often to poll, when to give up and cancel, and until when a cancel is
accepted. The gateway and its workers read them; connectors never sleep or loop by themselves.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Protocol

from kessai.domain.errors import UnprocessableCode

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection


class ProviderOutcome(enum.StrEnum):
    """What a provider said about a payment."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    WAITING_FOR_CUSTOMER = "WAITING_FOR_CUSTOMER"
    UNKNOWN = "UNKNOWN"  # in flight, timed out, or a status we do not recognise
    NOT_FOUND = "NOT_FOUND"  # the provider has no payment with this reference
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class ProviderResult:
    """A provider's answer about one payment."""

    outcome: ProviderOutcome
    provider_ref: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    qr_data: str | None = None


@dataclass(frozen=True, slots=True)
class RefundResult:
    """A provider's answer about one refund."""

    outcome: ProviderOutcome  # SUCCEEDED, FAILED or UNKNOWN
    failure_message: str | None = None


@dataclass(frozen=True, slots=True)
class PayRequest:
    """A customer-code payment (the terminal scanned the customer's code)."""

    ref: str  # our transId: the provider's idempotency key for this payment
    service_id: str
    amount: int
    code: str
    merchant_name: str


@dataclass(frozen=True, slots=True)
class QrRequest:
    """A dynamic merchant-presented QR code for one payment."""

    ref: str
    service_id: str
    amount: int
    expires_at: datetime
    merchant_name: str


class FlowNotSupported(UnprocessableCode):
    """The provider does not offer this flow."""

    default_code = "SERVICE_NOT_SUPPORTED"


class Flow(enum.StrEnum):
    """The flows of the interface, one per method."""

    PAY = "PAY"  # REQUEST: the customer's code
    CREATE_QR = "CREATE_QR"  # GET-QR-CODE
    SYNC = "SYNC"
    CANCEL = "CANCEL"
    REFUND = "REFUND"
    REFUND_SYNC = "REFUND_SYNC"
    NOTIFICATION = "NOTIFICATION"


ALL_FLOWS: frozenset[Flow] = frozenset(Flow)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A provider's published timing rules for payments whose outcome is not known yet.

    All durations are in seconds. The cancel window is "until ``cancel_cutoff`` (local time at
    ``cancel_cutoff_utc_offset_hours``) ``cancel_window_days`` days after the payment", or, with
    no cutoff, simply ``cancel_window_days`` days after it.
    """

    # Read timeout of one call; the provider's own advice (PayPay: 30 s for creating).
    read_timeout_seconds: float
    # How often to query a payment whose outcome is unknown or that waits for the customer.
    poll_interval_seconds: float
    # Wait this long after the payment began before the first query (WeChat: 5 s on SYSTEMERROR).
    first_poll_after_seconds: float
    # An outcome still unknown this long after the payment began is cancelled (reversed).
    give_up_after_seconds: float
    # A cancel must not be sent earlier than this after the payment began (WeChat: 15 s).
    cancel_not_before_seconds: float
    # How often to retry a cancel that was not confirmed.
    cancel_retry_interval_seconds: float
    cancel_window_days: int
    cancel_cutoff: time | None = None
    cancel_cutoff_utc_offset_hours: int = 0
    notes: str = ""

    def cancel_deadline(self, began_at: datetime) -> datetime:
        """The last instant a cancel is accepted for a payment that began at ``began_at``."""
        if self.cancel_cutoff is None:
            return began_at + timedelta(days=self.cancel_window_days)
        zone = timezone(timedelta(hours=self.cancel_cutoff_utc_offset_hours))
        local = began_at.astimezone(zone)
        day = local.date() + timedelta(days=self.cancel_window_days)
        return datetime.combine(day, self.cancel_cutoff, tzinfo=zone)

    def can_cancel(self, began_at: datetime, now: datetime) -> bool:
        """Whether a cancel sent at ``now`` falls inside the provider's window."""
        earliest = began_at + timedelta(seconds=self.cancel_not_before_seconds)
        return earliest <= now < self.cancel_deadline(began_at)


@dataclass(frozen=True, slots=True)
class Notification:
    """A provider's notification about one payment, after its signature was checked.

    A notification is a hint: the gateway confirms the outcome with ``sync`` before it moves a
    payment, unless ``verified`` says the provider signed it (and even then a sync is cheap).
    ``ack_*`` is what the HTTP endpoint must answer so that the provider stops retrying.
    """

    ref: str  # our transId
    outcome: ProviderOutcome
    verified: bool
    provider_ref: str | None = None
    ack_status: int = 200
    ack_headers: Mapping[str, str] = field(default_factory=dict)
    ack_body: bytes = b""


class Connector(Protocol):
    """A wallet provider, as the gateway uses it."""

    name: str
    schedule: Schedule
    # The flows this provider offers; the others raise FlowNotSupported.
    flows: frozenset[Flow]

    def for_account(self, account: str) -> Connector:
        """Narrow to one merchant's configured account (``kind:account`` in routing).

        A connector with a single built-in account, like the sandbox, answers itself.
        """
        ...

    async def pay(self, request: PayRequest) -> ProviderResult:
        """Charge a customer-presented code."""
        ...

    async def create_qr(self, request: QrRequest) -> ProviderResult:
        """Create a dynamic QR code the customer scans; the result carries ``qr_data``."""
        ...

    async def sync(self, ref: str) -> ProviderResult:
        """Ask the provider where the payment ``ref`` stands."""
        ...

    async def cancel(self, ref: str) -> ProviderResult:
        """Withdraw an unpaid payment (expired QR, unknown outcome); answers its final state."""
        ...

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Refund ``amount`` yen of a completed payment, idempotently per ``refund_ref``."""
        ...

    async def refund_sync(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Ask where the refund ``refund_ref`` of payment ``ref`` stands.

        ``amount`` lets a provider without a refund query re-send its idempotent refund request.
        """
        ...

    async def parse_notification(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> Notification:
        """Verify and read a notification the provider POSTed to ``path``.

        Raises ``NotificationRejected`` when the signature or the payload does not hold up.
        """
        ...


@dataclass(frozen=True, eq=False)
class Along:
    """One row of a provider's own table, read by a new payment's session lookup in its statement.

    ``table`` is joined (outer: no row reads as None in every column) on ``on``, whose bound
    parameters the caller gives; ``columns`` are what is read, each labelled with a name of its
    own. On PostgreSQL a read folded in this way is a round trip less for the payment's unit.
    """

    table: sa.Table
    on: sa.ColumnElement[bool]
    columns: tuple[sa.Label[object], ...]


class InDatabase(Protocol):
    """A provider whose books are tables of the gateway's own database (the sandbox wallets).

    The gateway asks such a provider inside the unit of work that writes the payment: the charge
    and the payment commit together or not at all, so no crash can leave one without the other,
    and REQUEST is one hop to the database instead of three.
    """

    # The customer code's row, for the session lookup to read along (its bound parameter is
    # ``code_digest``), or None when the provider reads it itself.
    code_along: Along | None

    def in_database(self, database: object) -> bool:
        """Whether this provider's books live in ``database``."""
        ...

    def pay_within(
        self,
        conn: Connection,
        request: PayRequest,
        now: datetime,
        *,
        code_digest: str | None = None,
        along: object | None = None,
    ) -> ProviderResult:
        """``pay``, as part of the caller's unit of work (``request.ref`` is new in it).

        ``code_digest``, when given, is the keyed hash of ``request.code`` under the database's
        code key, made by the caller ahead of the unit; without it the provider makes it.
        ``along``, when given, is a row that carries ``code_along``'s columns, read with that
        ``code_digest`` in this unit: the provider then reads the code no more.
        """
        ...


class NotificationRejected(Exception):
    """A notification whose signature, clock or body failed verification; ``part`` says which."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"{part}: {message}")
        self.part = part
        self.message = message


class AccountUnusable(UnprocessableCode):
    """A merchant's provider account exists but cannot be used (for example, no decryption key)."""

    default_code = "SERVICE_NOT_SUPPORTED"
