"""What an owner changes from the console, besides refunds: voucher numbers and terminals.

Refunds go through ``Gateway.refund_for_merchant`` (CANCEL's own rules). The voucher number is
set here with VOUCHERNO's rules — the gateway offers that operation to terminals only — and the
terminal actions reuse ``kessai.service.admin``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import repository as repo
from kessai.adapters import schema as t
from kessai.console.users import ConsoleUser
from kessai.domain import fields
from kessai.domain.errors import Conflict, InvalidRequest, NotFound
from kessai.domain.model import VOUCHER_EDITABLE_STATUSES, Payment
from kessai.service import admin

TERMINAL_ACTIONS: Final = ("logout", "reset-password", "unlock", "disable", "enable")


def set_voucher(
    conn: Connection,
    user: ConsoleUser,
    trans_id: str,
    voucher_no: str,
    now: datetime,
    request_id: str,
) -> Payment:
    """Attach or replace a payment's voucher number, with VOUCHERNO's format and state rules."""
    fields.check("voucherNo", voucher_no)
    stored = repo.find_payment(conn, user.merchant_id, trans_id=trans_id)
    if stored is None:
        raise NotFound(f"no payment with transId {trans_id}", field="transId")
    payment = stored.payment
    if payment.status not in VOUCHER_EDITABLE_STATUSES:
        raise Conflict(
            f"payment {trans_id} is {payment.status}: it was never paid, so it takes no "
            "voucher number",
            code="PAYMENT_NOT_EDITABLE",
            field="transId",
        )
    if payment.voucher_no == voucher_no:
        return payment
    after = replace(payment, voucher_no=voucher_no, version=payment.version + 1, updated_at=now)
    repo.save_payment(conn, stored.pk, payment, after)
    repo.audit(
        conn,
        at=now,
        actor=user.actor,
        action="payment.voucher_set",
        merchant_id=user.merchant_id,
        payment_pk=stored.pk,
        detail={"from": payment.voucher_no, "to": voucher_no},
        request_id=request_id,
    )
    return after


@dataclass(frozen=True, slots=True)
class TerminalActionResult:
    """What a terminal action did; ``password`` only for a reset (shown once)."""

    mid: str
    action: str
    password: str | None = None
    session_ended: bool | None = None


def terminal_action(
    conn: Connection,
    user: ConsoleUser,
    mid: str,
    action: str,
    now: datetime,
    request_id: str,
) -> TerminalActionResult:
    """Run one of ``TERMINAL_ACTIONS`` on a terminal of the user's merchant.

    ``kessai.service.admin`` records these as ``admin:cli``; the console adds, in the same
    transaction, an entry naming the console user who asked, so the trail says who did it.
    """
    if action not in TERMINAL_ACTIONS:
        raise InvalidRequest(f"unknown terminal action {action}", field="action")
    fields.check("mid", mid)
    row = conn.execute(
        sa.select(t.terminals.c.id).where(
            t.terminals.c.mid == mid, t.terminals.c.merchant_id == user.merchant_id
        )
    ).first()
    if row is None:
        # Another merchant's terminal is answered exactly like one that does not exist.
        raise NotFound(f"no terminal with mid {mid}", code="NOT_FOUND", field="mid")
    result = TerminalActionResult(mid, action)
    if action == "logout":
        result = replace(result, session_ended=admin.force_logout(conn, mid, now))
    elif action == "reset-password":
        result = replace(result, password=admin.reset_password(conn, mid, now))
    elif action == "unlock":
        admin.unlock(conn, mid, now)
    else:
        admin.set_enabled(conn, mid, action == "enable", now)
    repo.audit(
        conn,
        at=now,
        actor=user.actor,
        action="console.terminal_action",
        merchant_id=user.merchant_id,
        terminal_id=row.id,
        detail={"mid": mid, "action": action},
        request_id=request_id,
    )
    return result
