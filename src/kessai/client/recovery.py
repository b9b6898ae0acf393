"""What ``recover()`` found: for each unresolved journal entry, where it stood and where it ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kessai.client.journal import UNRESOLVED_STATUSES


@dataclass(frozen=True, slots=True)
class RecoveredPayment:
    """One payment recovery looked at."""

    trans_key: str
    trans_id: str | None
    amount: int
    before: str  # the journal's status before recovery
    after: str  # the journal's status after it
    note: str  # what was found, in words a clerk can act on

    @property
    def resolved(self) -> bool:
        """True when the outcome is now known."""
        return self.after not in UNRESOLVED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """For JSON output."""
        return {
            "transKey": self.trans_key,
            "transId": self.trans_id,
            "amount": self.amount,
            "before": self.before,
            "after": self.after,
            "resolved": self.resolved,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class RecoveredRefund:
    """One refund recovery looked at."""

    refund_key: str
    trans_id: str
    amount: int | None
    before: str
    after: str
    note: str

    @property
    def resolved(self) -> bool:
        """True when the outcome is now known."""
        return self.after not in UNRESOLVED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """For JSON output."""
        return {
            "refundKey": self.refund_key,
            "transId": self.trans_id,
            "amount": self.amount,
            "before": self.before,
            "after": self.after,
            "resolved": self.resolved,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """Everything one ``recover()`` looked at."""

    payments: tuple[RecoveredPayment, ...] = ()
    refunds: tuple[RecoveredRefund, ...] = ()

    @property
    def unresolved(self) -> int:
        """How many entries are still unresolved."""
        return sum(not p.resolved for p in self.payments) + sum(
            not r.resolved for r in self.refunds
        )

    @property
    def all_resolved(self) -> bool:
        """True when the journal has no entry left whose outcome is unknown."""
        return self.unresolved == 0

    def to_dict(self) -> dict[str, Any]:
        """For JSON output."""
        return {
            "payments": [p.to_dict() for p in self.payments],
            "refunds": [r.to_dict() for r in self.refunds],
            "unresolved": self.unresolved,
        }
