"""Provisioning: merchants, integrations (os) and terminals (mid, password, passCode).

Credentials are issued here and shown once; only their argon2 hashes are stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.adapters.repository import audit
from kessai.domain import fields
from kessai.domain.errors import InvalidRequest, NotFound
from kessai.security import hash_secret, new_mid, new_os, new_passcode, new_password
from kessai.service.sessions import end_live_session

ADMIN = "admin:cli"
MAX_NAME_LENGTH = 100


@dataclass(frozen=True, slots=True)
class IssuedTerminal:
    """A new terminal's credentials, shown exactly once."""

    mid: str
    password: str
    passcode: str
    merchant_id: int


def _name(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= MAX_NAME_LENGTH:
        raise InvalidRequest(f"name must be 1 to {MAX_NAME_LENGTH} characters", field="name")
    return value


def create_merchant(conn: Connection, name: str, now: datetime) -> int:
    """Create a merchant; answers its id."""
    result = conn.execute(t.merchants.insert().values(name=_name(name), created_at=now))
    key = result.inserted_primary_key
    assert key is not None
    merchant_id = int(key[0])
    audit(
        conn,
        at=now,
        actor=ADMIN,
        action="merchant.created",
        merchant_id=merchant_id,
        detail={"name": name},
    )
    return merchant_id


def create_integration(conn: Connection, name: str, now: datetime) -> str:
    """Register a POS integration; answers its 6-digit os."""
    for _ in range(50):
        os_value = new_os()
        taken = conn.execute(
            sa.select(t.integrations.c.id).where(t.integrations.c.os == os_value)
        ).first()
        if taken is None:
            conn.execute(
                t.integrations.insert().values(
                    os=os_value, name=_name(name), enabled=True, created_at=now
                )
            )
            audit(
                conn,
                at=now,
                actor=ADMIN,
                action="integration.created",
                detail={"os": os_value, "name": name},
            )
            return os_value
    raise RuntimeError("could not draw a free os")


def create_terminal(
    conn: Connection,
    merchant_id: int,
    now: datetime,
    *,
    passcode: str | None = None,
    name: str | None = None,
) -> IssuedTerminal:
    """Create a terminal for a merchant; issues mid, password and (unless given) passCode."""
    exists = conn.execute(
        sa.select(t.merchants.c.id).where(t.merchants.c.id == merchant_id)
    ).first()
    if exists is None:
        raise NotFound(f"no merchant {merchant_id}", code="NOT_FOUND", field="merchant")
    if passcode is not None:
        fields.check("passCode", passcode)
    code = passcode or new_passcode()
    password = new_password()
    for _ in range(50):
        mid = new_mid()
        if conn.execute(sa.select(t.terminals.c.id).where(t.terminals.c.mid == mid)).first():
            continue
        result = conn.execute(
            t.terminals.insert().values(
                mid=mid,
                merchant_id=merchant_id,
                name=_name(name) if name else None,
                password_hash=hash_secret(password),
                passcode_hash=hash_secret(code),
                enabled=True,
                login_failures=0,
                passcode_failures=0,
                created_at=now,
                updated_at=now,
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        audit(
            conn,
            at=now,
            actor=ADMIN,
            action="terminal.created",
            merchant_id=merchant_id,
            terminal_id=int(key[0]),
            detail={"mid": mid, "passCodeSetBy": "merchant" if passcode else "gateway"},
        )
        return IssuedTerminal(mid, password, code, merchant_id)
    raise RuntimeError("could not draw a free mid")


def _terminal(conn: Connection, mid: str) -> sa.Row[Any]:
    fields.check("mid", mid)
    row = conn.execute(sa.select(t.terminals).where(t.terminals.c.mid == mid)).first()
    if row is None:
        raise NotFound(f"no terminal with mid {mid}", code="NOT_FOUND", field="mid")
    return row


def list_terminals(
    conn: Connection, now: datetime, merchant_id: int | None = None
) -> list[dict[str, Any]]:
    """Every terminal with its state: enabled, logged in (from which key), locks, last seen."""
    query = sa.select(t.terminals).order_by(t.terminals.c.id)
    if merchant_id is not None:
        query = query.where(t.terminals.c.merchant_id == merchant_id)
    live = {
        row.terminal_id: row
        for row in conn.execute(
            sa.select(
                t.sessions.c.terminal_id, t.sessions.c.device_key, t.sessions.c.idle_expires_at
            ).where(t.sessions.c.ended_at.is_(None))
        )
        if row.idle_expires_at > now
    }
    out = []
    for row in conn.execute(query):
        session = live.get(row.id)
        out.append(
            {
                "mid": row.mid,
                "merchantId": row.merchant_id,
                "name": row.name,
                "enabled": row.enabled,
                "loggedIn": session is not None,
                "key": session.device_key if session else None,
                "lastSeenAt": row.last_seen_at.isoformat() if row.last_seen_at else None,
                "loginLocked": bool(row.login_locked_until and row.login_locked_until > now),
                "refundsLocked": bool(
                    row.passcode_locked_until and row.passcode_locked_until > now
                ),
            }
        )
    return out


def _change(
    conn: Connection,
    row: sa.Row[Any],
    now: datetime,
    action: str,
    *,
    detail: dict[str, Any] | None = None,
    **values: Any,
) -> None:
    """Set ``values`` on the terminal ``row`` and record ``action`` in the audit trail."""
    conn.execute(
        t.terminals.update().where(t.terminals.c.id == row.id).values(**values, updated_at=now)
    )
    audit(
        conn,
        at=now,
        actor=ADMIN,
        action=action,
        merchant_id=row.merchant_id,
        terminal_id=row.id,
        detail=detail,
    )


def set_enabled(conn: Connection, mid: str, enabled: bool, now: datetime) -> None:
    """Enable or disable a terminal; disabling also ends its session."""
    row = _terminal(conn, mid)
    if not enabled:
        end_live_session(conn, row.id, now, "disabled")
    action = "terminal.enabled" if enabled else "terminal.disabled"
    _change(conn, row, now, action, enabled=enabled)


def reset_password(conn: Connection, mid: str, now: datetime) -> str:
    """Issue a new login password (shown once) and end the terminal's session."""
    row = _terminal(conn, mid)
    password = new_password()
    end_live_session(conn, row.id, now, "password_reset")
    _change(
        conn,
        row,
        now,
        "terminal.password_reset",
        password_hash=hash_secret(password),
        login_failures=0,
        login_locked_until=None,
    )
    return password


def set_passcode(conn: Connection, mid: str, now: datetime, passcode: str | None = None) -> str:
    """Give a terminal a new passCode: the merchant's own, or (``None``) one the gateway issues.

    Answers the passCode, to be shown once. The old one stops working at once, and the count
    of wrong passCodes, with any refund lock it led to, starts again.
    """
    if passcode is not None:
        fields.check("passCode", passcode)
    row = _terminal(conn, mid)
    code = passcode or new_passcode()
    _change(
        conn,
        row,
        now,
        "terminal.passcode_set",
        detail={"passCodeSetBy": "merchant" if passcode else "gateway"},
        passcode_hash=hash_secret(code),
        passcode_failures=0,
        passcode_locked_until=None,
    )
    return code


def unlock(conn: Connection, mid: str, now: datetime) -> None:
    """Lift the refund (passCode) lock and the login lock of a terminal."""
    _change(
        conn,
        _terminal(conn, mid),
        now,
        "terminal.unlocked",
        passcode_failures=0,
        passcode_locked_until=None,
        login_failures=0,
        login_locked_until=None,
    )


def force_logout(conn: Connection, mid: str, now: datetime) -> bool:
    """End the terminal's live session (admin logout); tells whether there was one."""
    row = _terminal(conn, mid)
    ended = end_live_session(conn, row.id, now, "admin")
    audit(
        conn,
        at=now,
        actor=ADMIN,
        action="terminal.logout_forced",
        merchant_id=row.merchant_id,
        terminal_id=row.id,
        detail={"ended": ended},
    )
    return ended
