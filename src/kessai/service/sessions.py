"""Terminal sessions: LOGIN, LOGOUT and the bearer-token check every other operation makes.

One device per mid: while a session is live, LOGIN with another ``key`` is refused; LOGIN with
the same key replaces the old session (its token stops working). The partial unique index on
``sessions(terminal_id) WHERE ended_at IS NULL`` makes this hold even for racing LOGINs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.adapters.hot import Hot
from kessai.adapters.repository import PROVIDER_SETTINGS_ROW_FIELDS, ProviderSettingsRow, audit
from kessai.config import Settings
from kessai.connectors.base import Along
from kessai.domain.errors import Conflict, Forbidden, RateLimited, Unauthenticated


@dataclass(frozen=True, slots=True)
class TerminalContext:
    """Who is calling: the logged-in terminal and its merchant."""

    terminal_id: int
    mid: str
    merchant_id: int
    merchant_name: str
    session_id: int
    # What a unit that creates a payment reads with the session (``authenticate_for_payment``):
    # whether the merchant has an enabled webhook endpoint (None: not asked, and the outbox then
    # asks itself), and the merchant's active provider account for ``account_for``, the serviceId
    # asked about (None: the merchant has none there, and the sandbox serves it).
    listening: bool | None = None
    # Not in the repr: the row carries the account's sealed secret.
    account: ProviderSettingsRow | None = field(default=None, repr=False)
    account_for: str | None = None

    @property
    def actor(self) -> str:
        """How this terminal is named in the audit trail."""
        return f"terminal:{self.mid}"

    def account_of(self, service_id: str) -> ProviderSettingsRow | None:
        """The merchant's active account for ``service_id``, as read with the session.

        None means the merchant has none there (the sandbox serves it). Raises ``LookupError``
        when the session was not read for that service: routing on an account read for another
        service, or on none read at all, would send the payment to the wrong provider.
        """
        if self.account_for != service_id:
            read = "for no serviceId" if self.account_for is None else f"for {self.account_for}"
            raise LookupError(f"the session was read {read}, not for serviceId {service_id}")
        return self.account


@dataclass(frozen=True, slots=True)
class LoginSubject:
    """What LOGIN reads before verifying the password (outside the database thread)."""

    terminal_id: int | None
    password_hash: str | None


def end_idle_sessions(conn: Connection, terminal_id: int, now: datetime) -> None:
    """Close the terminal's sessions whose idle deadline passed, so they free the mid."""
    conn.execute(
        t.sessions.update()
        .where(
            t.sessions.c.terminal_id == terminal_id,
            t.sessions.c.ended_at.is_(None),
            t.sessions.c.idle_expires_at <= now,
        )
        .values(ended_at=now, end_reason="idle")
    )


def end_live_session(conn: Connection, terminal_id: int, now: datetime, reason: str) -> bool:
    """End the terminal's live session, if any; tells whether one was ended."""
    result = conn.execute(
        t.sessions.update()
        .where(t.sessions.c.terminal_id == terminal_id, t.sessions.c.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason)
    )
    return result.rowcount > 0


def read_login_subject(conn: Connection, os_value: str, mid: str) -> LoginSubject:
    """First hop of LOGIN: check the os, find the terminal and its password hash."""
    integration = conn.execute(
        sa.select(t.integrations.c.enabled).where(t.integrations.c.os == os_value)
    ).first()
    if integration is None or not integration.enabled:
        raise Unauthenticated("os is not a registered integration", code="UNKNOWN_OS", field="os")
    row = conn.execute(
        sa.select(t.terminals.c.id, t.terminals.c.password_hash).where(t.terminals.c.mid == mid)
    ).first()
    if row is None:
        return LoginSubject(None, None)
    return LoginSubject(row.id, row.password_hash)


def _check_login_lock(row: sa.Row[tuple[object, ...]], now: datetime) -> None:
    locked_until = row.login_locked_until
    if isinstance(locked_until, datetime) and now < locked_until:
        wait = int((locked_until - now).total_seconds()) + 1
        raise RateLimited(
            f"too many wrong passwords for this mid; try again in {wait} seconds",
            code="LOGIN_LOCKED",
            field="password",
            retry_after_seconds=wait,
        )


def check_login_lock(conn: Connection, terminal_id: int, now: datetime) -> None:
    """Refuse at once when the mid is locked, before spending time on the password hash."""
    row = conn.execute(
        sa.select(t.terminals.c.login_locked_until).where(t.terminals.c.id == terminal_id)
    ).one()
    _check_login_lock(row, now)


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    """The result of LOGIN's second hop; a failure is returned (not raised) so it commits."""

    error: Exception | None
    session_expires_at: datetime | None = None


def finish_login(
    conn: Connection,
    *,
    terminal_id: int,
    password_ok: bool,
    device_key: str,
    os_value: str,
    token_digest: str,
    now: datetime,
    settings: Settings,
    request_id: str,
) -> LoginOutcome:
    """Second hop of LOGIN: count a failure, or open the session."""
    # The row lock makes concurrent wrong passwords at several instances count one by one.
    row = conn.execute(
        sa.select(t.terminals).where(t.terminals.c.id == terminal_id).with_for_update()
    ).one()
    _check_login_lock(row, now)
    actor = f"terminal:{row.mid}"
    if not password_ok:
        failures = int(row.login_failures) + 1
        locked = failures >= settings.login_max_failures
        conn.execute(
            t.terminals.update()
            .where(t.terminals.c.id == terminal_id)
            .values(
                login_failures=0 if locked else failures,
                login_locked_until=now + timedelta(seconds=settings.login_lock_seconds)
                if locked
                else None,
            )
        )
        audit(
            conn,
            at=now,
            actor=actor,
            action="terminal.login_locked" if locked else "terminal.login_failed",
            merchant_id=row.merchant_id,
            terminal_id=terminal_id,
            request_id=request_id,
        )
        return LoginOutcome(_wrong_credentials())
    if not row.enabled:
        return LoginOutcome(
            Forbidden("this terminal is disabled", code="TERMINAL_DISABLED", field="mid")
        )
    end_idle_sessions(conn, terminal_id, now)
    live = conn.execute(
        sa.select(t.sessions.c.id, t.sessions.c.device_key).where(
            t.sessions.c.terminal_id == terminal_id, t.sessions.c.ended_at.is_(None)
        )
    ).first()
    if live is not None:
        if live.device_key != device_key:
            return LoginOutcome(
                Conflict(
                    "this mid is logged in on another device; LOGOUT there first or ask an "
                    "administrator to end that session",
                    code="TERMINAL_IN_USE",
                    field="key",
                )
            )
        conn.execute(
            t.sessions.update()
            .where(t.sessions.c.id == live.id)
            .values(ended_at=now, end_reason="replaced")
        )
    expires_at = now + timedelta(seconds=settings.session_idle_timeout_seconds)
    conn.execute(
        t.sessions.insert().values(
            token_hash=token_digest,
            terminal_id=terminal_id,
            device_key=device_key,
            os=os_value,
            created_at=now,
            last_seen_at=now,
            idle_expires_at=expires_at,
        )
    )
    conn.execute(
        t.terminals.update()
        .where(t.terminals.c.id == terminal_id)
        .values(login_failures=0, login_locked_until=None, last_seen_at=now)
    )
    audit(
        conn,
        at=now,
        actor=actor,
        action="terminal.login",
        merchant_id=row.merchant_id,
        terminal_id=terminal_id,
        detail={"key": device_key, "os": os_value, "replaced": live is not None},
        request_id=request_id,
    )
    return LoginOutcome(None, expires_at)


def _wrong_credentials() -> Unauthenticated:
    return Unauthenticated("mid or password is wrong", code="WRONG_CREDENTIALS", field="password")


def wrong_credentials() -> Unauthenticated:
    """The error for an unknown mid, answered exactly like a wrong password."""
    return _wrong_credentials()


# Every operation but LOGIN runs this lookup: built once, so only its execution costs.
_SESSION_QUERY = (
    sa.select(
        t.sessions.c.id,
        t.sessions.c.ended_at,
        t.sessions.c.end_reason,
        t.sessions.c.last_seen_at,
        t.sessions.c.idle_expires_at,
        t.terminals.c.id.label("terminal_id"),
        t.terminals.c.mid,
        t.terminals.c.enabled,
        t.merchants.c.id.label("merchant_id"),
        t.merchants.c.name.label("merchant_name"),
    )
    .join(t.terminals, t.terminals.c.id == t.sessions.c.terminal_id)
    .join(t.merchants, t.merchants.c.id == t.terminals.c.merchant_id)
    .where(t.sessions.c.token_hash == sa.bindparam("digest"))
)
_SESSION_OF_TOKEN = Hot(_SESSION_QUERY)
# A unit that creates a payment reads, in the same statement, all else it needs before writing:
# whether the merchant listens for webhooks (the endpoint's unique index answers) and the
# merchant's active account for the payment's service (at most one, by a partial unique index),
# which routing then needs no read of its own for.
_SESSION_FOR_PAYMENT_QUERY = _SESSION_QUERY.add_columns(
    sa.exists()
    .where(
        t.webhook_endpoints.c.merchant_id == t.merchants.c.id,
        t.webhook_endpoints.c.enabled.is_(True),
    )
    .label("listening"),
    *(
        t.provider_settings.c[name].label(f"account_{name}")
        for name in PROVIDER_SETTINGS_ROW_FIELDS
    ),
).outerjoin(
    t.provider_settings,
    sa.and_(
        t.provider_settings.c.merchant_id == t.merchants.c.id,
        t.provider_settings.c.service_id == sa.bindparam("service_id"),
        t.provider_settings.c.active.is_(True),
    ),
)
# On PostgreSQL the same statement also draws the new payment's primary key from its sequence, so
# that the payment's INSERT needs no answer and travels with the unit's other writes
# (``Hot.defer``). A key drawn by a unit that then writes nothing is skipped: ids have gaps.
_SESSION_FOR_PAYMENT = {
    "sqlite": Hot(_SESSION_FOR_PAYMENT_QUERY),
    "postgresql": Hot(
        _SESSION_FOR_PAYMENT_QUERY.add_columns(
            sa.func.nextval(
                sa.func.pg_get_serial_sequence("payments", "id"), type_=sa.BigInteger
            ).label("payment_pk")
        )
    ),
}
_TOUCH_SESSION = Hot(t.sessions.update().where(t.sessions.c.id == sa.bindparam("b_id")))
_TOUCH_TERMINAL = Hot(t.terminals.update().where(t.terminals.c.id == sa.bindparam("b_id")))


def authenticate(
    conn: Connection, token_digest: str, now: datetime, settings: Settings
) -> TerminalContext:
    """Resolve a bearer token to its terminal, inside the operation's own unit of work."""
    row = _SESSION_OF_TOKEN.run(conn, {"digest": token_digest}).first()
    return _context(conn, row, now, settings, None)


# The lookup with a provider's row read along (``Along``), made on first use of each.
_SESSION_ALONG: dict[tuple[str, Along], Hot] = {}


def _lookup_for_payment(dialect: str, along: Along | None) -> Hot:
    if along is None:
        return _SESSION_FOR_PAYMENT[dialect]
    lookup = _SESSION_ALONG.get((dialect, along))
    if lookup is None:
        statement = _SESSION_FOR_PAYMENT[dialect].statement
        assert isinstance(statement, sa.Select)
        lookup = _SESSION_ALONG[dialect, along] = Hot(
            statement.add_columns(*along.columns).outerjoin(along.table, along.on)
        )
    return lookup


def authenticate_for_payment(
    conn: Connection,
    token_digest: str,
    now: datetime,
    settings: Settings,
    service_id: str,
    *,
    along: Along | None = None,
    along_params: Mapping[str, Any] | None = None,
) -> tuple[TerminalContext, int | None, Any]:
    """``authenticate`` for a unit about to create a payment of ``service_id``.

    The same statement also reads whether the merchant listens for webhooks and its active
    provider account for the service, and the context carries both. On PostgreSQL it also draws
    the new payment's primary key, answered beside the context (None on SQLite). With ``along``
    it reads that row too, bound with ``along_params``: the third value is then the statement's
    row, which carries ``along``'s columns (None in each if there is no such row), and None
    otherwise.
    """
    params = {"digest": token_digest, "service_id": service_id, **(along_params or {})}
    row = _lookup_for_payment(conn.dialect.name, along).run(conn, params).first()
    ctx = _context(conn, row, now, settings, service_id)
    return ctx, getattr(row, "payment_pk", None), row if along is not None else None


def _context(
    conn: Connection, row: Any, now: datetime, settings: Settings, for_service: str | None
) -> TerminalContext:
    """The context of a session's row, once the session is shown to be live and usable."""
    if row is None:
        raise Unauthenticated("the session token is not valid; LOGIN again")
    if row.ended_at is not None:
        raise Unauthenticated(f"the session has ended ({row.end_reason}); LOGIN again")
    if now >= row.idle_expires_at:
        raise Unauthenticated("the session expired after being idle; LOGIN again")
    if not row.enabled:
        raise Forbidden("this terminal is disabled", code="TERMINAL_DISABLED")
    if (now - row.last_seen_at).total_seconds() >= settings.session_touch_interval_seconds:
        idle_expires_at = now + timedelta(seconds=settings.session_idle_timeout_seconds)
        _TOUCH_SESSION.run(
            conn,
            {"b_id": row.id, "last_seen_at": now, "idle_expires_at": idle_expires_at},
        )
        _TOUCH_TERMINAL.run(conn, {"b_id": row.terminal_id, "last_seen_at": now})
    return TerminalContext(
        terminal_id=row.terminal_id,
        mid=row.mid,
        merchant_id=row.merchant_id,
        merchant_name=row.merchant_name,
        session_id=row.id,
        listening=None if for_service is None else bool(row.listening),
        account=None if for_service is None else _account(row),
        account_for=for_service,
    )


def _account(row: Any) -> ProviderSettingsRow | None:
    """The provider account read along with a session, if the merchant has one there."""
    if row.account_id is None:
        return None
    return SimpleNamespace(
        **{name: getattr(row, f"account_{name}") for name in PROVIDER_SETTINGS_ROW_FIELDS}
    )


def logout(
    conn: Connection, token_digest: str, now: datetime, settings: Settings, request_id: str
) -> None:
    """End the caller's session."""
    ctx = authenticate(conn, token_digest, now, settings)
    conn.execute(
        t.sessions.update()
        .where(t.sessions.c.id == ctx.session_id)
        .values(ended_at=now, end_reason="logout")
    )
    audit(
        conn,
        at=now,
        actor=ctx.actor,
        action="terminal.logout",
        merchant_id=ctx.merchant_id,
        terminal_id=ctx.terminal_id,
        request_id=request_id,
    )
