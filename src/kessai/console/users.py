"""Console users and their server-side sessions, inside units of work.

A console user belongs to one merchant and is an ``owner`` (may refund and manage terminals) or
``staff`` (may look and export). Passwords are argon2 hashes (``kessai.security``); sessions are
random cookies whose SHA-256 is the only thing stored, each with its own CSRF token.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.adapters.repository import audit
from kessai.console.config import ConsoleConfig
from kessai.domain.errors import InvalidRequest, NotFound
from kessai.security import csrf_token_of, token_hash

ROLES: Final = ("owner", "staff")
MIN_PASSWORD_LENGTH: Final = 12
MAX_PASSWORD_LENGTH: Final = 128
MAX_EMAIL_LENGTH: Final = 254
ISSUED_PASSWORD_LENGTH: Final = 16
# The refunds table keeps the actor in 40 characters; audit entries in 60.
MAX_ACTOR_LENGTH: Final = 40
# Ended sessions are kept this long (for "who was logged in when"), then deleted at a login.
ENDED_SESSION_KEEP_DAYS: Final = 30
# Deliberately loose: one @, no spaces, a dot in the domain. Delivery is not our business.
_EMAIL: Final = re.compile(r"[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+")
_ALNUM: Final = string.ascii_letters + string.digits


def normalise_email(email: str) -> str:
    """The stored form of a login address (trimmed, lower-case); INVALID_FIELD when malformed."""
    value = email.strip().lower()
    if len(value) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(value):
        raise InvalidRequest("email must be an e-mail address", field="email")
    return value


def check_role(role: str) -> str:
    """``role`` when it is owner or staff."""
    if role not in ROLES:
        raise InvalidRequest("role must be owner or staff", field="role")
    return role


def check_password(password: str) -> str:
    """``password`` when it is long enough (12 to 128 characters)."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidRequest(
            f"password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters",
            field="password",
        )
    return password


def new_console_password() -> str:
    """A 16-character password with letters and digits, for ``--password`` left out."""
    while True:
        value = "".join(secrets.choice(_ALNUM) for _ in range(ISSUED_PASSWORD_LENGTH))
        if any(c.isdigit() for c in value) and any(c.isalpha() for c in value):
            return value


def actor_name(user_id: int, email: str) -> str:
    """How a console user appears in the audit trail and on refunds: ``console:<email>``.

    A very long address would not fit the refunds table's actor column, so it is shortened with
    the user id kept, which still identifies the person.
    """
    name = f"console:{email}"
    if len(name) <= MAX_ACTOR_LENGTH:
        return name
    return f"console:#{user_id}:{email}"[:MAX_ACTOR_LENGTH]


# -- provisioning (the CLI) -----------------------------------------------------------------------


def create_user(
    conn: Connection,
    *,
    merchant_id: int,
    email: str,
    role: str,
    password_hash: str,
    now: datetime,
) -> int:
    """Create a console user; answers its id. The password is hashed by the caller."""
    email = normalise_email(email)
    check_role(role)
    merchant = conn.execute(
        sa.select(t.merchants.c.id).where(t.merchants.c.id == merchant_id)
    ).first()
    if merchant is None:
        raise NotFound(f"no merchant {merchant_id}", code="NOT_FOUND", field="merchant")
    taken = conn.execute(
        sa.select(t.console_users.c.id).where(t.console_users.c.email == email)
    ).first()
    if taken is not None:
        # The error table has no "already exists" code; this is a bad value for the field.
        raise InvalidRequest(f"a console user {email} already exists", field="email")
    result = conn.execute(
        t.console_users.insert().values(
            merchant_id=merchant_id,
            email=email,
            role=role,
            password_hash=password_hash,
            enabled=True,
            login_failures=0,
            created_at=now,
            updated_at=now,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    user_id = int(key[0])
    audit(
        conn,
        at=now,
        actor="admin:cli",
        action="console.user_created",
        merchant_id=merchant_id,
        detail={"email": email, "role": role, "userId": user_id},
    )
    return user_id


def list_users(conn: Connection, merchant_id: int | None = None) -> list[dict[str, Any]]:
    """Console users with their role and lock state."""
    query = sa.select(t.console_users).order_by(t.console_users.c.id)
    if merchant_id is not None:
        query = query.where(t.console_users.c.merchant_id == merchant_id)
    return [
        {
            "userId": row.id,
            "merchantId": row.merchant_id,
            "email": row.email,
            "role": row.role,
            "enabled": row.enabled,
            "lockedUntil": row.login_locked_until.isoformat() if row.login_locked_until else None,
            "lastLoginAt": row.last_login_at.isoformat() if row.last_login_at else None,
        }
        for row in conn.execute(query)
    ]


def _user_by_email(conn: Connection, email: str) -> sa.Row[Any]:
    row = conn.execute(
        sa.select(t.console_users).where(t.console_users.c.email == normalise_email(email))
    ).first()
    if row is None:
        raise NotFound(f"no console user {email}", code="NOT_FOUND", field="email")
    return row


def unlock_user(conn: Connection, email: str, now: datetime) -> None:
    """Lift a login lock (repeated wrong passwords)."""
    row = _user_by_email(conn, email)
    conn.execute(
        t.console_users.update()
        .where(t.console_users.c.id == row.id)
        .values(login_failures=0, login_locked_until=None, updated_at=now)
    )
    audit(
        conn,
        at=now,
        actor="admin:cli",
        action="console.user_unlocked",
        merchant_id=row.merchant_id,
        detail={"email": row.email},
    )


def set_password(conn: Connection, email: str, password_hash: str, now: datetime) -> None:
    """Replace a user's password; ends the user's sessions and lifts any lock."""
    row = _user_by_email(conn, email)
    conn.execute(
        t.console_users.update()
        .where(t.console_users.c.id == row.id)
        .values(
            password_hash=password_hash, login_failures=0, login_locked_until=None, updated_at=now
        )
    )
    conn.execute(
        t.console_sessions.update()
        .where(t.console_sessions.c.user_id == row.id, t.console_sessions.c.ended_at.is_(None))
        .values(ended_at=now, end_reason="password_reset")
    )
    audit(
        conn,
        at=now,
        actor="admin:cli",
        action="console.password_reset",
        merchant_id=row.merchant_id,
        detail={"email": row.email},
    )


# -- login ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginSubject:
    """What login reads before the (slow) password check, which runs off the database thread."""

    user_id: int | None
    password_hash: str | None
    locked_seconds: int


def read_login_subject(conn: Connection, email: str, now: datetime) -> LoginSubject:
    """The user behind ``email`` (if any), and how long it stays locked."""
    try:
        address = normalise_email(email)
    except InvalidRequest:
        return LoginSubject(None, None, 0)
    row = conn.execute(
        sa.select(
            t.console_users.c.id,
            t.console_users.c.password_hash,
            t.console_users.c.login_locked_until,
        ).where(t.console_users.c.email == address)
    ).first()
    if row is None:
        return LoginSubject(None, None, 0)
    return LoginSubject(row.id, row.password_hash, _locked_seconds(row.login_locked_until, now))


def _locked_seconds(locked_until: datetime | None, now: datetime) -> int:
    if locked_until is None or now >= locked_until:
        return 0
    return int((locked_until - now).total_seconds()) + 1


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    """The second hop of login: a session, or why there is none (returned so that it commits)."""

    refused: str | None  # "wrong", "locked" or "disabled"
    locked_seconds: int = 0
    lang: str | None = None


def finish_login(
    conn: Connection,
    *,
    user_id: int,
    password_ok: bool,
    token_digest: str,
    csrf_digest: str,
    now: datetime,
    config: ConsoleConfig,
    request_id: str,
) -> LoginOutcome:
    """Count a wrong password (locking at the limit), or open a session."""
    row = conn.execute(sa.select(t.console_users).where(t.console_users.c.id == user_id)).one()
    actor = actor_name(row.id, row.email)
    locked = _locked_seconds(row.login_locked_until, now)
    if locked:
        return LoginOutcome("locked", locked)
    if not password_ok:
        failures = int(row.login_failures) + 1
        lock = failures >= config.login_max_failures
        conn.execute(
            t.console_users.update()
            .where(t.console_users.c.id == user_id)
            .values(
                login_failures=0 if lock else failures,
                login_locked_until=now + timedelta(seconds=config.login_lock_seconds)
                if lock
                else None,
            )
        )
        audit(
            conn,
            at=now,
            actor=actor,
            action="console.login_locked" if lock else "console.login_failed",
            merchant_id=row.merchant_id,
            detail={"failures": failures},
            request_id=request_id,
        )
        if lock:
            return LoginOutcome("locked", config.login_lock_seconds)
        return LoginOutcome("wrong")
    if not row.enabled:
        return LoginOutcome("disabled")
    _prune_sessions(conn, user_id, now, config)
    conn.execute(
        t.console_sessions.insert().values(
            token_hash=token_digest,
            user_id=user_id,
            csrf_token=csrf_digest,
            created_at=now,
            last_seen_at=now,
            idle_expires_at=now + timedelta(seconds=config.session_idle_seconds),
            expires_at=now + timedelta(seconds=config.session_max_seconds),
        )
    )
    conn.execute(
        t.console_users.update()
        .where(t.console_users.c.id == user_id)
        .values(login_failures=0, login_locked_until=None, last_login_at=now)
    )
    audit(
        conn,
        at=now,
        actor=actor,
        action="console.login",
        merchant_id=row.merchant_id,
        request_id=request_id,
    )
    return LoginOutcome(None, lang=row.lang)


def _prune_sessions(conn: Connection, user_id: int, now: datetime, config: ConsoleConfig) -> None:
    """Bound the user's sessions: delete long-ended ones, end the oldest live ones over the cap."""
    sessions = t.console_sessions
    conn.execute(
        sessions.delete().where(
            sessions.c.user_id == user_id,
            sa.or_(sessions.c.ended_at.is_not(None), sessions.c.expires_at <= now),
            sessions.c.created_at < now - timedelta(days=ENDED_SESSION_KEEP_DAYS),
        )
    )
    live = conn.execute(
        sa.select(sessions.c.id)
        .where(
            sessions.c.user_id == user_id,
            sessions.c.ended_at.is_(None),
            sessions.c.idle_expires_at > now,
            sessions.c.expires_at > now,
        )
        .order_by(sessions.c.id.desc())
    ).scalars()
    surplus = list(live)[config.max_sessions_per_user - 1 :]
    if surplus:
        conn.execute(
            sessions.update()
            .where(sessions.c.id.in_(surplus))
            .values(ended_at=now, end_reason="too_many")
        )


# -- sessions -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """The logged-in console user of a request, with the session it came with."""

    user_id: int
    email: str
    role: str
    merchant_id: int
    merchant_name: str
    session_id: int
    csrf_token: str

    @property
    def is_owner(self) -> bool:
        """Owners may refund, edit vouchers and manage terminals."""
        return self.role == "owner"

    @property
    def actor(self) -> str:
        """The name of this user in the audit trail."""
        return actor_name(self.user_id, self.email)


def load_session(
    conn: Connection, token: str, now: datetime, config: ConsoleConfig
) -> ConsoleUser | None:
    """The user of the live session ``token``, touching it at most once a ``session_touch_seconds``.

    Only the token's digest is looked up; the session's CSRF token is derived from the token.
    """
    token_digest = token_hash(token)
    row = conn.execute(
        sa.select(
            t.console_sessions.c.id,
            t.console_sessions.c.last_seen_at,
            t.console_sessions.c.idle_expires_at,
            t.console_sessions.c.expires_at,
            t.console_users.c.id.label("user_id"),
            t.console_users.c.email,
            t.console_users.c.role,
            t.console_users.c.enabled,
            t.merchants.c.id.label("merchant_id"),
            t.merchants.c.name.label("merchant_name"),
        )
        .join(t.console_users, t.console_users.c.id == t.console_sessions.c.user_id)
        .join(t.merchants, t.merchants.c.id == t.console_users.c.merchant_id)
        .where(
            t.console_sessions.c.token_hash == token_digest,
            t.console_sessions.c.ended_at.is_(None),
        )
    ).first()
    if row is None or not row.enabled:
        return None
    if now >= row.idle_expires_at or now >= row.expires_at:
        return None
    if (now - row.last_seen_at).total_seconds() >= config.session_touch_seconds:
        conn.execute(
            t.console_sessions.update()
            .where(t.console_sessions.c.id == row.id)
            .values(
                last_seen_at=now,
                idle_expires_at=now + timedelta(seconds=config.session_idle_seconds),
            )
        )
    return ConsoleUser(
        user_id=row.user_id,
        email=row.email,
        role=row.role,
        merchant_id=row.merchant_id,
        merchant_name=row.merchant_name,
        session_id=row.id,
        csrf_token=csrf_token_of(token),
    )


def end_session(conn: Connection, user: ConsoleUser, now: datetime, request_id: str) -> None:
    """Log out: the session's cookie stops working at once."""
    conn.execute(
        t.console_sessions.update()
        .where(t.console_sessions.c.id == user.session_id, t.console_sessions.c.ended_at.is_(None))
        .values(ended_at=now, end_reason="logout")
    )
    audit(
        conn,
        at=now,
        actor=user.actor,
        action="console.logout",
        merchant_id=user.merchant_id,
        request_id=request_id,
    )


def remember_lang(conn: Connection, user_id: int, lang: str) -> None:
    """Keep the user's language, so that it follows them to another browser after login."""
    conn.execute(t.console_users.update().where(t.console_users.c.id == user_id).values(lang=lang))
