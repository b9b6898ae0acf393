"""The simulation's only time: an aware UTC clock that moves when the simulation moves it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

START: Final = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class SimClock:
    """A fake clock for the gateway, its worker and the simulated wallet alike."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        """Move time forward (never back) by ``seconds``."""
        if seconds < 0:
            raise ValueError("the simulated clock never goes back")
        self.now += timedelta(seconds=seconds)
        return self.now

    def advance_to(self, instant: datetime) -> datetime:
        """Move time forward to ``instant`` (no change when it is already past)."""
        if instant > self.now:
            self.now = instant
        return self.now

    def elapsed(self) -> float:
        """Simulated seconds since the start."""
        return (self.now - START).total_seconds()
