"""The daily totals chart, laid out on the server: bars and ticks the template draws as SVG.

Computing the geometry here keeps the template free of arithmetic and the page free of
JavaScript; the SVG scales with the page through its viewBox.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import Final

from kessai.console.formats import yen
from kessai.console.queries import Sums

WIDTH: Final = 1100  # about the card's width on a desktop, so text keeps its size
HEIGHT: Final = 280
LEFT: Final = 84  # room for the yen labels of the axis
RIGHT: Final = 12
TOP: Final = 14
BOTTOM: Final = 30  # room for the day labels
MAX_DAY_LABELS: Final = 16
TICKS: Final = 4


@dataclass(frozen=True, slots=True)
class Bar:
    """One rectangle, with the text a pointer shows over it."""

    x: float
    y: float
    width: float
    height: float
    kind: str  # "paid" or "refunded"
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    """A horizontal grid line and its label."""

    y: float
    label: str


@dataclass(frozen=True, slots=True)
class DayLabel:
    """A day's label under the bars."""

    x: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """Everything the template needs to draw the chart."""

    width: int
    height: int
    left: int
    right_edge: int
    baseline: float
    bars: list[Bar]
    ticks: list[Tick]
    days: list[DayLabel]
    net_points: str  # the net line, as an SVG polyline "x,y x,y …"


def nice_step(top: int, ticks: int = TICKS) -> int:
    """A round step (1, 2 or 5 times a power of ten) so that ``ticks`` steps cover ``top``."""
    if top <= 0:
        return 1
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return max(1, int(factor * power))
    return max(1, int(10 * power))


def daily_chart(by_day: list[tuple[date, Sums]], labels: dict[str, str]) -> Chart:
    """Lay out sales and refunds per day as paired bars, with the net as a line.

    ``labels`` gives the words of the bar titles: keys ``paid``, ``refunded`` and ``net``.
    """
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    baseline = TOP + plot_height
    top_value = max([s.paid for _, s in by_day] + [s.refunded for _, s in by_day] + [0])
    step = nice_step(top_value)
    scale_top = max(step, math.ceil(top_value / step) * step)

    def y_of(value: int) -> float:
        return baseline - plot_height * max(value, 0) / scale_top

    slot = plot_width / max(1, len(by_day))
    bar_width = max(1.0, slot * 0.36)
    bars: list[Bar] = []
    days: list[DayLabel] = []
    points: list[str] = []
    every = max(1, math.ceil(len(by_day) / MAX_DAY_LABELS))
    for index, (day, sums) in enumerate(by_day):
        x0 = LEFT + index * slot + slot * 0.12
        day_text = f"{day.month}/{day.day}"
        pair = ((0.0, "paid", sums.paid), (bar_width, "refunded", sums.refunded))
        for offset, kind, value in pair:
            top = y_of(value)
            bars.append(
                Bar(
                    x=round(x0 + offset, 2),
                    y=round(top, 2),
                    width=round(bar_width, 2),
                    height=round(baseline - top, 2),
                    kind=kind,
                    title=f"{day_text} {labels[kind]} {yen(value)}",
                )
            )
        centre = LEFT + index * slot + slot / 2
        points.append(f"{round(centre, 2)},{round(y_of(sums.net), 2)}")
        if index % every == 0:
            days.append(DayLabel(round(centre, 2), day_text))
    ticks = [Tick(round(y_of(value), 2), yen(value)) for value in range(0, scale_top + 1, step)]
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right_edge=WIDTH - RIGHT,
        baseline=baseline,
        bars=bars,
        ticks=ticks,
        days=days,
        net_points=" ".join(points),
    )
