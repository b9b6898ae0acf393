"""The customer's phone in the sandbox: what became of a payment code it showed.

A real wallet app learns from its own server that its code was just used, and then shows the
result or asks the customer to confirm. The sandbox's books do not link a charge to the code that
paid it, but ``SandboxWallets.pay`` marks the code used and creates the charge in one unit with
one clock reading, so the charge of a code is the customer-code charge of the same service created
at the very instant the code was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.adapters.repository import code_key
from kessai.connectors.sandbox import wallets
from kessai.domain.catalog import load_catalog
from kessai.security import keyed_hash

MAX_CODE_LENGTH: Final = 64


@dataclass(frozen=True, slots=True)
class CodeState:
    """Where a customer code stands: unknown, unused, or used by a charge in some state."""

    state: str  # "unknown", "unused", or a sandbox charge status (WAITING, SUCCEEDED, …)
    service_id: str | None = None
    outcome: str | None = None
    trans_id: str | None = None
    amount: int | None = None
    merchant_name: str | None = None
    service_name: str | None = None


def code_state(conn: Connection, code: str) -> CodeState:
    """What the sandbox knows of ``code`` (one of its issued customer codes)."""
    if not code or len(code) > MAX_CODE_LENGTH:
        return CodeState("unknown")
    digest = keyed_hash(code_key(conn), code)
    issued = conn.execute(
        sa.select(t.sandbox_codes).where(t.sandbox_codes.c.code_hash == digest)
    ).first()
    if issued is None:
        return CodeState("unknown")
    service = load_catalog().get(issued.service_id)
    service_name = service.name if service else issued.service_id
    if issued.used_at is None:
        return CodeState("unused", issued.service_id, issued.outcome, service_name=service_name)
    charge = conn.execute(
        sa.select(t.sandbox_charges).where(
            t.sandbox_charges.c.kind == "CUSTOMER_CODE",
            t.sandbox_charges.c.service_id == issued.service_id,
            t.sandbox_charges.c.created_at == issued.used_at,
        )
    ).first()
    if charge is None:
        return CodeState("USED", issued.service_id, issued.outcome, service_name=service_name)
    return CodeState(
        state=str(charge.status),
        service_id=issued.service_id,
        outcome=issued.outcome,
        trans_id=charge.ref,
        amount=charge.amount,
        merchant_name=charge.merchant_name,
        service_name=service_name,
    )


def decide_for_code(conn: Connection, code: str, approve: bool, now: datetime) -> CodeState:
    """The customer confirms (or refuses) in the app the payment their code started."""
    state = code_state(conn, code)
    if state.state == wallets.WAITING and state.trans_id is not None:
        wallets.settle(conn, state.trans_id, approve, now)
        return code_state(conn, code)
    return state
