"""What the console reads: the payment list and its filters, one payment, daily totals.

Every query is scoped to one merchant; a payment of another merchant is simply absent, exactly as
in the terminal API. Every function runs inside a unit of work (``Database.run``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import repository as repo
from kessai.adapters import schema as t
from kessai.console.formats import jst_midnight
from kessai.domain import fields
from kessai.domain.errors import InvalidRequest
from kessai.domain.model import MAX_AMOUNT_YEN, PaymentStatus, RefundStatus

STATUSES: Final = tuple(s.value for s in PaymentStatus)
# Payments whose money moved: what daily totals count as sales.
PAID_STATUSES: Final = (
    PaymentStatus.COMPLETED.value,
    PaymentStatus.PARTIALLY_REFUNDED.value,
    PaymentStatus.REFUNDED.value,
)
MAX_SEARCH_LENGTH: Final = 40
MAX_PAGE: Final = 10_000
# The days a filter may name. A Japan-time day runs from its midnight to the next, in UTC: for
# 0001-01-01 the first lies before datetime's range, for 9999-12-31 the second after it. Such a day
# is refused like any unreadable date, not clamped: for the list, leaving the bound out selects
# the very rows clamping would (no payment is dated near either end), and for totals the default
# period with the notice is more use than days that cannot hold a sale.
FIRST_DAY: Final = date.min + timedelta(days=1)
LAST_DAY: Final = date.max - timedelta(days=1)


# -- the payment list -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentFilter:
    """The list's filters, parsed from the query string; bad values are dropped and named."""

    date_from: date | None = None
    date_to: date | None = None
    mid: str | None = None
    service_id: str | None = None
    status: str | None = None
    amount_min: int | None = None
    amount_max: int | None = None
    q: str = ""
    page: int = 1
    invalid: tuple[str, ...] = field(default=())

    def params(self, *, page: int | None = None) -> dict[str, str]:
        """The query parameters that reproduce this filter (empty ones left out)."""
        values = {
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
            "terminal": self.mid or "",
            "service": self.service_id or "",
            "status": self.status or "",
            "min": "" if self.amount_min is None else str(self.amount_min),
            "max": "" if self.amount_max is None else str(self.amount_max),
            "q": self.q,
        }
        chosen = page if page is not None else self.page
        if chosen > 1:
            values["page"] = str(chosen)
        return {k: v for k, v in values.items() if v}

    def query_string(self, *, page: int | None = None) -> str:
        """``params`` as a URL query string (without the ``?``)."""
        return urlencode(self.params(page=page))

    @property
    def active(self) -> bool:
        """Whether any filter narrows the list."""
        return bool(self.params(page=1))


def parse_day(raw: str) -> date:
    """A filter's ``YYYY-MM-DD``; ValueError when unreadable or outside FIRST_DAY..LAST_DAY."""
    day = date.fromisoformat(raw)
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"{raw} is at the end of the calendar")
    return day


def _amount(raw: str) -> int:
    value = int(raw.replace(",", "").replace("¥", "").strip())
    if not 0 <= value <= MAX_AMOUNT_YEN:
        raise ValueError("amount out of bounds")
    return value


def parse_filter(params: Mapping[str, str], service_ids: frozenset[str]) -> PaymentFilter:
    """Read the filters from query parameters; an unreadable value is ignored and reported."""
    invalid: list[str] = []
    values: dict[str, Any] = {}

    def take(name: str, key: str, parse: Any) -> None:
        raw = (params.get(key) or "").strip()
        if not raw:
            return
        try:
            values[name] = parse(raw)
        except (ValueError, InvalidRequest):
            invalid.append(key)

    take("date_from", "from", parse_day)
    take("date_to", "to", parse_day)
    take("mid", "terminal", lambda raw: fields.check("mid", raw))
    take("service_id", "service", lambda raw: _member(raw, service_ids))
    take("status", "status", lambda raw: _member(raw, frozenset(STATUSES)))
    take("amount_min", "min", _amount)
    take("amount_max", "max", _amount)
    take("page", "page", lambda raw: max(1, min(MAX_PAGE, int(raw))))
    q = (params.get("q") or "").strip()
    if len(q) > MAX_SEARCH_LENGTH:
        invalid.append("q")
        q = ""
    return PaymentFilter(q=q, invalid=tuple(invalid), **values)


def _member(raw: str, allowed: frozenset[str]) -> str:
    if raw not in allowed:
        raise ValueError(raw)
    return raw


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """One line of the payment list (and of the CSV)."""

    trans_id: str
    trans_key: str
    kind: str
    created_at: datetime
    mid: str
    terminal_name: str | None
    service_id: str
    amount: int
    refunded_amount: int
    status: str
    pending_reason: str | None
    voucher_no: str | None


@dataclass(frozen=True, slots=True)
class PaymentPage:
    """A page of the list, newest first."""

    rows: list[PaymentRow]
    total: int
    page: int
    pages: int
    page_size: int

    @property
    def first_index(self) -> int:
        """The 1-based position of the page's first row (0 for an empty list)."""
        return 0 if not self.rows else (self.page - 1) * self.page_size + 1

    @property
    def last_index(self) -> int:
        """The 1-based position of the page's last row."""
        return (self.page - 1) * self.page_size + len(self.rows)


_P = t.payments
_T = t.terminals


def _filtered(merchant_id: int, f: PaymentFilter) -> sa.Select[Any]:
    query = (
        sa.select(
            _P.c.trans_id,
            _P.c.trans_key,
            _P.c.kind,
            _P.c.created_at,
            _T.c.mid,
            _T.c.name.label("terminal_name"),
            _P.c.service_id,
            _P.c.amount,
            _P.c.refunded_amount,
            _P.c.status,
            _P.c.pending_reason,
            _P.c.voucher_no,
        )
        .select_from(_P.join(_T, _T.c.id == _P.c.terminal_id))
        .where(_P.c.merchant_id == merchant_id)
    )
    if f.date_from is not None:
        query = query.where(_P.c.created_at >= jst_midnight(f.date_from))
    if f.date_to is not None:
        query = query.where(_P.c.created_at < jst_midnight(f.date_to + timedelta(days=1)))
    if f.mid is not None:
        query = query.where(_T.c.mid == f.mid)
    if f.service_id is not None:
        query = query.where(_P.c.service_id == f.service_id)
    if f.status is not None:
        query = query.where(_P.c.status == f.status)
    if f.amount_min is not None:
        query = query.where(_P.c.amount >= f.amount_min)
    if f.amount_max is not None:
        query = query.where(_P.c.amount <= f.amount_max)
    if f.q:
        # One box for the three numbers a merchant holds: the gateway's transId, the POS's
        # transKey, the slip's voucherNo. Exact, or the beginning of transKey/voucherNo.
        query = query.where(
            sa.or_(
                _P.c.trans_id == f.q,
                _P.c.trans_key == f.q,
                _P.c.voucher_no == f.q,
                _P.c.trans_key.startswith(f.q, autoescape=True),
                _P.c.voucher_no.startswith(f.q, autoescape=True),
            )
        )
    return query


def _row(row: sa.Row[Any]) -> PaymentRow:
    return PaymentRow(
        trans_id=row.trans_id,
        trans_key=row.trans_key,
        kind=row.kind,
        created_at=row.created_at,
        mid=row.mid,
        terminal_name=row.terminal_name,
        service_id=row.service_id,
        amount=row.amount,
        refunded_amount=row.refunded_amount,
        status=row.status,
        pending_reason=row.pending_reason,
        voucher_no=row.voucher_no,
    )


def list_payments(
    conn: Connection, merchant_id: int, f: PaymentFilter, page_size: int
) -> PaymentPage:
    """One page of the merchant's payments matching ``f``, newest first, with the total count."""
    query = _filtered(merchant_id, f)
    total = int(conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one())
    pages = max(1, -(-total // page_size))
    page = min(f.page, pages)
    rows = conn.execute(
        query.order_by(_P.c.created_at.desc(), _P.c.id.desc())
        .limit(page_size)
        .offset((page - 1) * page_size)
    ).all()
    return PaymentPage([_row(r) for r in rows], total, page, pages, page_size)


def export_payments(
    conn: Connection, merchant_id: int, f: PaymentFilter, limit: int
) -> list[PaymentRow]:
    """Every payment matching ``f`` (up to ``limit``), newest first, for the CSV."""
    rows = conn.execute(
        _filtered(merchant_id, f).order_by(_P.c.created_at.desc(), _P.c.id.desc()).limit(limit)
    ).all()
    return [_row(r) for r in rows]


@dataclass(frozen=True, slots=True)
class TerminalOption:
    """A terminal in the filter's drop-down."""

    mid: str
    name: str | None


def terminal_options(conn: Connection, merchant_id: int) -> list[TerminalOption]:
    """The merchant's terminals, oldest first."""
    rows = conn.execute(
        sa.select(_T.c.mid, _T.c.name).where(_T.c.merchant_id == merchant_id).order_by(_T.c.id)
    ).all()
    return [TerminalOption(r.mid, r.name) for r in rows]


# -- one payment ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefundRow:
    """A refund as the detail page shows it, with who asked for it."""

    refund_id: str
    refund_key: str
    amount: int
    status: str
    failure_reason: str | None
    actor: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of a payment's history, from the audit trail."""

    at: datetime
    action: str
    actor: str
    from_status: str | None
    to_status: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PaymentDetail:
    """Everything the detail page shows about a payment."""

    stored: repo.StoredPayment
    mid: str
    terminal_name: str | None
    refunds: list[RefundRow]
    timeline: list[TimelineEntry]


def payment_detail(conn: Connection, merchant_id: int, trans_id: str) -> PaymentDetail | None:
    """A payment of the merchant with its terminal, refunds and history; None when absent."""
    stored = repo.find_payment(conn, merchant_id, trans_id=trans_id)
    if stored is None:
        return None
    terminal = conn.execute(
        sa.select(_T.c.mid, _T.c.name).where(_T.c.id == stored.payment.terminal_id)
    ).one()
    refunds = [
        RefundRow(
            refund_id=r.refund_id,
            refund_key=r.refund_key,
            amount=r.amount,
            status=r.status,
            failure_reason=r.failure_reason,
            actor=r.actor,
            created_at=r.created_at,
            updated_at=r.updated_at,
        )
        for r in conn.execute(
            sa.select(t.refunds).where(t.refunds.c.payment_id == stored.pk).order_by(t.refunds.c.id)
        )
    ]
    timeline = [
        TimelineEntry(
            at=entry["at"],
            action=str(entry["action"]),
            actor=str(entry["actor"]),
            from_status=entry["from_status"],
            to_status=entry["to_status"],
            detail=_detail(entry["detail"]),
        )
        for entry in repo.audit_trail(conn, stored.pk)
    ]
    return PaymentDetail(stored, terminal.mid, terminal.name, refunds, timeline)


def _detail(raw: object) -> dict[str, Any]:
    if not isinstance(raw, str) or not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- daily totals ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sums:
    """Counts and yen of payments and refunds; net is what stays with the merchant."""

    payments: int = 0
    paid: int = 0
    refunds: int = 0
    refunded: int = 0

    @property
    def net(self) -> int:
        """Paid minus refunded, in yen."""
        return self.paid - self.refunded

    def plus(self, other: Sums) -> Sums:
        """The sum of two tallies."""
        return Sums(
            self.payments + other.payments,
            self.paid + other.paid,
            self.refunds + other.refunds,
            self.refunded + other.refunded,
        )


@dataclass(frozen=True, slots=True)
class Totals:
    """Daily totals over a range of Japan-time days, and the same split by terminal and service."""

    day_from: date
    day_to: date
    by_day: list[tuple[date, Sums]]
    by_terminal: list[tuple[str, str | None, Sums]]
    by_service: list[tuple[str, Sums]]
    total: Sums


def _jst_day(conn: Connection, column: Any) -> Any:
    """The Japan-time calendar day of a stored UTC timestamp, as ``YYYY-MM-DD`` text, in SQL."""
    if conn.dialect.name == "sqlite":
        return sa.func.strftime("%Y-%m-%d", column, "+9 hours")
    return sa.func.to_char(sa.func.timezone("Asia/Tokyo", column), "YYYY-MM-DD")


def daily_totals(
    conn: Connection,
    merchant_id: int,
    day_from: date,
    day_to: date,
    *,
    mid: str | None = None,
    service_id: str | None = None,
) -> Totals:
    """Sales and refunds per Japan-time day, terminal and service.

    A payment counts on the day it was made (created), when its money moved (COMPLETED, then
    possibly refunded); a refund counts on the day the wallet confirmed it. The database groups;
    at most days x terminals x services rows come back.
    """
    start, end = jst_midnight(day_from), jst_midnight(day_to + timedelta(days=1))
    scope = [_P.c.merchant_id == merchant_id]
    if mid is not None:
        scope.append(_T.c.mid == mid)
    if service_id is not None:
        scope.append(_P.c.service_id == service_id)
    joined = _P.join(_T, _T.c.id == _P.c.terminal_id)
    pay_day = _jst_day(conn, _P.c.created_at).label("day")
    paid = conn.execute(
        sa.select(pay_day, _T.c.mid, _P.c.service_id, sa.func.count(), sa.func.sum(_P.c.amount))
        .select_from(joined)
        .where(
            *scope,
            _P.c.status.in_(PAID_STATUSES),
            _P.c.created_at >= start,
            _P.c.created_at < end,
        )
        .group_by(pay_day, _T.c.mid, _P.c.service_id)
    ).all()
    refund_day = _jst_day(conn, t.refunds.c.updated_at).label("day")
    refunded = conn.execute(
        sa.select(
            refund_day, _T.c.mid, _P.c.service_id, sa.func.count(), sa.func.sum(t.refunds.c.amount)
        )
        .select_from(joined.join(t.refunds, t.refunds.c.payment_id == _P.c.id))
        .where(
            *scope,
            t.refunds.c.status == RefundStatus.SUCCEEDED.value,
            t.refunds.c.updated_at >= start,
            t.refunds.c.updated_at < end,
        )
        .group_by(refund_day, _T.c.mid, _P.c.service_id)
    ).all()
    days: dict[date, Sums] = {}
    terminals: dict[str, Sums] = {}
    services: dict[str, Sums] = {}
    for rows, as_refund in ((paid, False), (refunded, True)):
        for day_text, row_mid, row_service, count, amount in rows:
            sums = Sums(refunds=count, refunded=amount) if as_refund else Sums(count, amount)
            day = date.fromisoformat(day_text)
            days[day] = days.get(day, Sums()).plus(sums)
            terminals[row_mid] = terminals.get(row_mid, Sums()).plus(sums)
            services[row_service] = services.get(row_service, Sums()).plus(sums)
    names = dict(
        conn.execute(sa.select(_T.c.mid, _T.c.name).where(_T.c.merchant_id == merchant_id)).all()
    )
    by_day = []
    day = day_from
    while day <= day_to:
        by_day.append((day, days.get(day, Sums())))
        day += timedelta(days=1)
    total = Sums()
    for sums in days.values():
        total = total.plus(sums)
    return Totals(
        day_from=day_from,
        day_to=day_to,
        by_day=by_day,
        by_terminal=[(m, names.get(m), s) for m, s in sorted(terminals.items())],
        by_service=sorted(services.items()),
        total=total,
    )


def with_page(f: PaymentFilter, page: int) -> PaymentFilter:
    """The same filter on another page."""
    return replace(f, page=page)
