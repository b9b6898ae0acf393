"""Turning stored facts into the words a page shows: history lines, actors, terminal rows, CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from kessai.console.formats import jst, yen
from kessai.console.i18n import Translator
from kessai.console.queries import PaymentRow, TimelineEntry
from kessai.console.render import service_name

UTF8_BOM: Final = "\ufeff"
# A cell starting with one of these is a formula to a spreadsheet; it is written as text instead.
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def actor_label(t: Translator, actor: str) -> str:
    """Who did something, in words: a terminal, the wallet, a console user, an administrator."""
    kind, _, rest = actor.partition(":")
    if kind == "terminal":
        return t("actor.terminal", mid=rest)
    if kind == "provider":
        return t("actor.provider", name=rest)
    if kind == "console":
        return t("actor.console", who=rest)
    if kind == "admin":
        return t("actor.admin")
    return actor


@dataclass(frozen=True, slots=True)
class TimelineLine:
    """One line of the history as the page shows it."""

    at: datetime
    action: str
    label: str
    note: str
    change: str
    actor: str


def timeline(t: Translator, lang: str, entries: list[TimelineEntry]) -> list[TimelineLine]:
    """A payment's audit entries as history lines, oldest first."""
    lines = []
    for entry in entries:
        key = f"tl.{entry.action}"
        label = t(key) if t.has(key) else entry.action
        change = ""
        if entry.from_status and entry.to_status and entry.from_status != entry.to_status:
            change = f"{t('status.' + entry.from_status)} → {t('status.' + entry.to_status)}"
        lines.append(
            TimelineLine(
                at=entry.at,
                action=entry.action,
                label=label,
                note=_note(t, lang, entry),
                change=change,
                actor=actor_label(t, entry.actor),
            )
        )
    return lines


def _note(t: Translator, lang: str, entry: TimelineEntry) -> str:
    detail = entry.detail
    action = entry.action
    if action == "payment.created":
        parts = []
        if isinstance(detail.get("amount"), int):
            parts.append(yen(detail["amount"]))
        if isinstance(detail.get("serviceId"), str):
            parts.append(service_name(detail["serviceId"], lang))
        if isinstance(detail.get("code"), str):
            parts.append(detail["code"])
        return " · ".join(parts)
    if action == "payment.waiting" and detail.get("reason") in (
        "WAITING_FOR_CUSTOMER",
        "OUTCOME_UNKNOWN",
    ):
        return t(f"pending.{detail['reason']}")
    if action.startswith("refund.") and isinstance(detail.get("amount"), int):
        return f"{yen(detail['amount'])} ({detail.get('refundId', '')})"
    if action == "payment.voucher_set":
        return f"{detail.get('from') or '—'} → {detail.get('to') or '—'}"
    if action in ("payment.failed", "payment.expired") and detail.get("failureCode"):
        return str(detail["failureCode"])
    return ""


@dataclass(frozen=True, slots=True)
class TerminalLine:
    """A terminal row of the terminals page."""

    mid: str
    name: str | None
    enabled: bool
    logged_in: bool
    key: str | None
    last_seen: datetime | None
    login_locked: bool
    refunds_locked: bool


def terminal_lines(rows: list[dict[str, Any]]) -> list[TerminalLine]:
    """The rows of ``admin.list_terminals`` as typed lines."""
    return [
        TerminalLine(
            mid=str(row["mid"]),
            name=row["name"],
            enabled=bool(row["enabled"]),
            logged_in=bool(row["loggedIn"]),
            key=row["key"],
            last_seen=datetime.fromisoformat(row["lastSeenAt"]) if row["lastSeenAt"] else None,
            login_locked=bool(row["loginLocked"]),
            refunds_locked=bool(row["refundsLocked"]),
        )
        for row in rows
    ]


_CSV_HEADERS: Final = {
    "ja": (
        "日時（日本時間）",
        "決済番号",
        "transKey",
        "端末ID",
        "端末名",
        "サービスID",
        "サービス",
        "金額",
        "返金額",
        "状態",
        "ステータス",
        "伝票番号",
        "方式",
    ),
    "en": (
        "Date (JST)",
        "transId",
        "transKey",
        "mid",
        "Terminal name",
        "serviceId",
        "Service",
        "Amount (JPY)",
        "Refunded (JPY)",
        "Status",
        "Status code",
        "Voucher no.",
        "Flow",
    ),
}


def _text(value: str | None) -> str:
    if not value:
        return ""
    return f"'{value}" if value.startswith(_FORMULA_STARTS) else value


def payments_csv(t: Translator, lang: str, rows: list[PaymentRow]) -> bytes:
    """The payment list as CSV for Excel in Japan: UTF-8 with a BOM, CRLF line ends.

    Amounts are plain integers (so that they add up in a spreadsheet); text that a spreadsheet
    would take for a formula is prefixed with an apostrophe.
    """
    out = io.StringIO()
    out.write(UTF8_BOM)
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(_CSV_HEADERS["ja" if lang == "ja" else "en"])
    for row in rows:
        writer.writerow(
            [
                jst(row.created_at),
                row.trans_id,
                _text(row.trans_key),
                row.mid,
                _text(row.terminal_name),
                row.service_id,
                _text(service_name(row.service_id, lang)),
                row.amount,
                row.refunded_amount,
                t(f"status.{row.status}"),
                row.status,
                _text(row.voucher_no),
                t(f"kind.{row.kind}"),
            ]
        )
    return out.getvalue().encode("utf-8")
