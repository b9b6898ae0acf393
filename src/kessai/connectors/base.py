"""The one interface every wallet provider's connector implements.

One method per flow. A connector never raises for an unknown outcome: a timeout, an "in process"
answer or a status it does not recognise comes back as ``ProviderOutcome.UNKNOWN`` (pessimistic
mapping). Only a definite answer is SUCCEEDED or FAILED. A flow the provider does not offer raises
``FlowNotSupported``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from kessai.domain.errors import UnprocessableCode


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


class Connector(Protocol):
    """A wallet provider, as the gateway uses it."""

    name: str

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
