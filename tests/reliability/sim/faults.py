"""The faults the simulation injects, how often, and the tally of what it injected.

Every decision is drawn from the simulation's one ``random.Random``: a fault is a property of the
seed, never of timing. Rates are per call (or per unit of work, or per delivered notification).
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final


class Fault(enum.StrEnum):
    """What can go wrong with one call to the wallet provider."""

    NONE = "none"
    # The wallet did the work; its answer never reached the gateway (a reset connection).
    LOST_REPLY = "lost_reply"
    # The wallet did the work; its answer came after the gateway's read timeout.
    TIMEOUT = "timeout"
    # The request sat in the network and reaches the wallet after the gateway stopped waiting.
    LATE_ARRIVAL = "late_arrival"
    # The wallet did the work but answers "in process", and hides the outcome for a while.
    IN_PROCESS = "in_process"
    # The wallet failed before doing anything (a 5xx): the outcome is unknown to the gateway.
    ERROR_BEFORE = "error_before"
    # The wallet refused outright and definitely did nothing (it remembers the refusal).
    REFUSED = "refused"
    # The request is delivered to the wallet twice (a retrying proxy).
    DUPLICATE = "duplicate"
    # A query answers "in process" although the outcome is known.
    STALE = "stale"


class CallKind(enum.StrEnum):
    """The wallet calls that can fail, one per connector method."""

    PAY = "pay"
    CREATE_QR = "create_qr"
    SYNC = "sync"
    CANCEL = "cancel"
    REFUND = "refund"
    REFUND_SYNC = "refund_sync"


# Sim-level faults outside the connector, counted in the same tally.
DB_WRITE_FAILURE: Final = "db_write_failure"
NOTIFICATION_DUPLICATED: Final = "notification_duplicated"
NOTIFICATION_REORDERED: Final = "notification_reordered"
NOTIFICATION_DROPPED: Final = "notification_dropped"
NOTIFICATION_FORGED: Final = "notification_forged"

F = Fault
K = CallKind

DEFAULT_CALL_RATES: Final[Mapping[CallKind, Mapping[Fault, float]]] = {
    K.PAY: {
        F.LOST_REPLY: 0.04,
        F.TIMEOUT: 0.03,
        F.LATE_ARRIVAL: 0.03,
        F.IN_PROCESS: 0.04,
        F.ERROR_BEFORE: 0.03,
        F.REFUSED: 0.02,
        F.DUPLICATE: 0.04,
    },
    K.CREATE_QR: {
        F.LOST_REPLY: 0.04,
        F.TIMEOUT: 0.02,
        F.ERROR_BEFORE: 0.04,
        F.REFUSED: 0.02,
        F.DUPLICATE: 0.03,
    },
    K.SYNC: {F.LOST_REPLY: 0.04, F.TIMEOUT: 0.02, F.ERROR_BEFORE: 0.03, F.STALE: 0.05},
    K.CANCEL: {F.LOST_REPLY: 0.05, F.TIMEOUT: 0.02, F.ERROR_BEFORE: 0.04, F.DUPLICATE: 0.02},
    K.REFUND: {
        F.LOST_REPLY: 0.05,
        F.TIMEOUT: 0.03,
        F.LATE_ARRIVAL: 0.03,
        F.ERROR_BEFORE: 0.03,
        F.REFUSED: 0.02,
        F.DUPLICATE: 0.04,
    },
    K.REFUND_SYNC: {F.LOST_REPLY: 0.04, F.ERROR_BEFORE: 0.03, F.STALE: 0.04},
}


@dataclass(frozen=True)
class FaultRates:
    """How often each fault happens; ``quiet()`` is the same shape with every rate zero."""

    calls: Mapping[CallKind, Mapping[Fault, float]] = field(
        default_factory=lambda: DEFAULT_CALL_RATES
    )
    # A LATE_ARRIVAL request reaches the wallet up to this long after the gateway stopped
    # waiting. The gateway calls a payment the wallet has not seen NOT_RECEIVED once it is
    # ``provider_not_found_grace_seconds`` old (docs/decisions.md), so delays are kept well
    # inside that; raising this explores what happens when the assumption breaks.
    late_arrival_max_seconds: float = 20.0
    # Per writing unit of work: it fails before its commit.
    db_write_failure: float = 0.01
    # Per notification delivered: it stays in the outbox to be delivered again later.
    notification_duplicate: float = 0.2
    # Per notification taken from the outbox: it is lost.
    notification_drop: float = 0.05
    # Per notification delivery step: a forged one (bad signature) is sent instead.
    notification_forged: float = 0.03

    @classmethod
    def quiet(cls) -> FaultRates:
        """No faults at all: what the quiescent reconciliation runs under."""
        return cls(
            calls={},
            db_write_failure=0.0,
            notification_duplicate=0.0,
            notification_drop=0.0,
            notification_forged=0.0,
        )


class FaultPlan:
    """Draws faults from the seeded generator and counts every one it hands out."""

    def __init__(self, rng: random.Random, rates: FaultRates) -> None:
        self.rng = rng
        self.rates = rates
        self.armed = True
        self.counts: Counter[str] = Counter()
        # Told of every fault injected (its name, and what it struck), for the trace.
        self.on_fault: Callable[[str, str], None] | None = None

    def call(self, kind: CallKind, about: str = "") -> Fault:
        """The fault for one call of ``kind`` (``Fault.NONE`` when disarmed or unlucky)."""
        table = self.rates.calls.get(kind)
        if not self.armed or not table:
            return Fault.NONE
        draw = self.rng.random()
        # Dict order is insertion order, so the same draw always picks the same fault.
        for fault, rate in table.items():
            if draw < rate:
                self.count(f"{kind}.{fault}", about)
                return fault
            draw -= rate
        return Fault.NONE

    def chance(self, name: str, rate: float, about: str = "") -> bool:
        """Whether the sim-level fault ``name`` happens now (counted when it does)."""
        if not self.armed or rate <= 0.0:
            return False
        if self.rng.random() < rate:
            self.count(name, about)
            return True
        return False

    def count(self, name: str, about: str = "") -> None:
        """Record one injected fault."""
        self.counts[name] += 1
        if self.on_fault is not None:
            self.on_fault(name, about)

    def total(self) -> int:
        """Every fault injected so far."""
        return sum(self.counts.values())
