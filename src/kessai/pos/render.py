"""How the register shows things to the clerk: payments, the journal, QR codes, waiting."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from typing import Any

import segno
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kessai.client import (
    JournalEntry,
    JournalRefund,
    Payment,
    PaymentKind,
    PendingReason,
    RecoveryReport,
)


def yen(amount: int | None) -> str:
    """Integer yen as a clerk reads it: ¥1,200."""
    return "¥(rest)" if amount is None else f"¥{amount:,}"


def local_time(value: datetime | None) -> str:
    """A UTC time in the register's local time zone."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def waiting_reason(payment: Payment) -> str:
    """Why the register is waiting, in words for the clerk."""
    if payment.pending_reason is PendingReason.WAITING_FOR_CUSTOMER:
        if payment.kind is PaymentKind.MERCHANT_QR:
            return f"Waiting for the customer to scan the code and pay with {payment.service_name}"
        return (
            f"Waiting for the customer to confirm the payment in the {payment.service_name} "
            "app (password)"
        )
    return f"Waiting for {payment.service_name}'s answer (the wallet has not answered yet)"


def payment_headline(payment: Payment) -> Text:
    """One line that says what happened to a payment."""
    what = f"{yen(payment.amount)}  {payment.service_name}"
    if payment.is_paid:
        refunded = f"  (refunded {yen(payment.refunded_amount)})" if payment.refunded_amount else ""
        return Text.assemble(("PAID ", "bold green"), what, refunded)
    if payment.is_unpaid:
        label = "EXPIRED " if payment.status.value == "EXPIRED" else "DECLINED "
        why = payment.failure_message or payment.failure_code or payment.status.value
        return Text.assemble((label, "bold red"), what, f"  — {why} ({payment.failure_code})")
    return Text.assemble(("PENDING ", "bold yellow"), what, f"  — {waiting_reason(payment)}")


def print_payment(console: Console, payment: Payment) -> None:
    """The payment, as the register shows it after an operation."""
    console.print(payment_headline(payment))
    console.print(
        f"  transId {payment.trans_id}   transKey {payment.trans_key}   "
        f"status {payment.status.value}",
        highlight=False,
    )
    if payment.voucher_no:
        console.print(f"  voucherNo {payment.voucher_no}", highlight=False)
    for refund in payment.refunds:
        console.print(
            f"  refund {refund.refund_key}: {yen(refund.amount)} {refund.status.value}",
            highlight=False,
        )


def qr_text(data: str) -> str:
    """The QR code of ``data`` drawn with Unicode half blocks, for a terminal."""
    buffer = io.StringIO()
    segno.make(data, error="m").terminal(out=buffer, compact=True)
    return buffer.getvalue()


class Waiting:
    """The text of the live spinner: why the register waits, and for how long already."""

    def __init__(self, reason: str, trans_id: str, deadline: datetime | None = None) -> None:
        self.reason = reason
        self.trans_id = trans_id
        self.deadline = deadline
        self.started = time.monotonic()

    def line(self) -> str:
        """The reason as one plain line, for logs and pipes."""
        return f"waiting: {self.reason} — transId {self.trans_id}"

    def __rich__(self) -> Text:
        elapsed = int(time.monotonic() - self.started)
        parts = [
            f"{self.reason} (transId {self.trans_id}) — {elapsed // 60}:{elapsed % 60:02d} elapsed"
        ]
        if self.deadline is not None:
            left = max(0, int((self.deadline - datetime.now(UTC)).total_seconds()))
            parts.append(f"code expires in {left // 60}:{left % 60:02d}")
        return Text(", ".join(parts) + "  (Ctrl-C stops waiting, not the payment)")


def _entry_note(entry: JournalEntry) -> str:
    if entry.error_code:
        return f"{entry.error_code}: {entry.error_message or ''}".strip()
    notes = []
    if entry.failure_code:
        notes.append(entry.failure_code)
    if entry.refunded_amount:
        notes.append(f"refunded {yen(entry.refunded_amount)}")
    if entry.voucher_no:
        notes.append(f"voucher {entry.voucher_no}")
    if entry.pending_reason:
        notes.append(entry.pending_reason)
    return ", ".join(notes)


_STATUS_STYLE = {
    "COMPLETED": "green",
    "PARTIALLY_REFUNDED": "green",
    "REFUNDED": "cyan",
    "FAILED": "red",
    "EXPIRED": "red",
    "CANCELED": "red",
    "REJECTED": "red",
    "NOT_SENT": "dim",
    "NOT_RECEIVED": "dim",
}


def journal_table(entries: list[JournalEntry]) -> Table:
    """The journal's payments as a table, newest first."""
    table = Table(title="Payments in this register's journal", title_justify="left")
    for column in ("time", "transKey", "transId", "kind", "amount", "service", "status", "note"):
        table.add_column(column, justify="right" if column == "amount" else "left")
    for entry in entries:
        style = _STATUS_STYLE.get(entry.status, "yellow")
        table.add_row(
            local_time(entry.created_at),
            entry.trans_key,
            entry.trans_id or "-",
            "QR" if entry.kind is PaymentKind.MERCHANT_QR else "code",
            yen(entry.amount),
            entry.service_id or "-",
            Text(entry.status, style=style),
            _entry_note(entry),
        )
    return table


def refunds_table(refunds: list[JournalRefund]) -> Table:
    """The journal's refunds as a table, newest first."""
    table = Table(title="Refunds in this register's journal", title_justify="left")
    for column in ("time", "refundKey", "transId", "amount", "status", "note"):
        table.add_column(column, justify="right" if column == "amount" else "left")
    for refund in refunds:
        table.add_row(
            local_time(refund.created_at),
            refund.refund_key,
            refund.trans_id,
            yen(refund.amount),
            Text(refund.status, style=_STATUS_STYLE.get(refund.status, "yellow")),
            f"{refund.error_code}: {refund.error_message}" if refund.error_code else "",
        )
    return table


def print_recovery(console: Console, report: RecoveryReport) -> None:
    """What recover() found, entry by entry."""
    if not report.payments and not report.refunds:
        console.print("Nothing to recover: the journal knows the outcome of every payment.")
        return
    for item in report.payments:
        mark = "[green]resolved[/green]" if item.resolved else "[yellow]UNRESOLVED[/yellow]"
        console.print(
            f"{mark} payment {item.trans_key} ({yen(item.amount)}, transId "
            f"{item.trans_id or '-'}): {item.before} → {item.after} — {item.note}",
            highlight=False,
        )
    for refund in report.refunds:
        mark = "[green]resolved[/green]" if refund.resolved else "[yellow]UNRESOLVED[/yellow]"
        console.print(
            f"{mark} refund {refund.refund_key} of {refund.trans_id} ({yen(refund.amount)}): "
            f"{refund.before} → {refund.after} — {refund.note}",
            highlight=False,
        )


def json_ready(value: Any) -> Any:
    """Datetimes as ISO text, for json.dumps."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
