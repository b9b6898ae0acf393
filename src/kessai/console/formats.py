"""How the console writes money and time: ¥1,234 and Japan time.

Japan has had no daylight saving time since 1951, so a fixed +09:00 offset is exact and needs no
time zone database on the server.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Final

JST: Final = timezone(timedelta(hours=9), "JST")


def yen(amount: int) -> str:
    """Integer yen as ¥1,234 (and -¥1,234 for a negative net)."""
    sign = "-" if amount < 0 else ""
    return f"{sign}¥{abs(amount):,}"


def jst(moment: datetime | None, *, seconds: bool = True) -> str:
    """A moment in Japan time, ``2026/01/31 18:05:09``; empty for None."""
    if moment is None:
        return ""
    local = moment.astimezone(JST)
    return local.strftime("%Y/%m/%d %H:%M:%S" if seconds else "%Y/%m/%d %H:%M")


def jst_today(now: datetime) -> date:
    """The calendar date in Japan at ``now``."""
    return now.astimezone(JST).date()


def jst_midnight(day: date) -> datetime:
    """The first instant of ``day`` in Japan, in UTC (for comparing with stored timestamps)."""
    return datetime.combine(day, time(0), tzinfo=JST).astimezone(UTC)
