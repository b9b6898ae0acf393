"""What an owner changes from the console, besides refunds: voucher numbers and terminals.

Refunds go through ``Gateway.refund_for_merchant`` (CANCEL's own rules), the voucher number
through ``kessai.service.gateway.set_voucher`` (VOUCHERNO's), and the terminal actions reuse
``kessai.service.admin``.
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
from kessai.domain.errors import InvalidRequest, NotFound
from kessai.domain.model import Payment
from kessai.service import admin, gateway
from kessai.service.gateway import MerchantActor

TERMINAL_ACTIONS: Final = ("logout", "reset-password", "unlock", "disable", "enable")


def set_voucher(
    conn: Connection,
    user: ConsoleUser,
    trans_id: str,
    voucher_no: str,
    now: datetime,
    request_id: str,
) -> Payment:
    """Attach or replace a payment's voucher number, with exactly VOUCHERNO's rules."""
    who = MerchantActor(merchant_id=user.merchant_id, terminal_id=None, actor=user.actor)
    return gateway.set_voucher(conn, who, trans_id, voucher_no, now, request_id)


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
