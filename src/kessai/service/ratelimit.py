"""Failed logins per client address: the limit that the per-mid lockout cannot give.

The per-mid lockout (five wrong passwords lock one mid) stops guessing one terminal's password,
but not an attacker who tries a few passwords on many mids, nor one who locks every mid on purpose.
This module bounds the failed logins one client address may make, at the terminal API's LOGIN and
the console's login together: ``login_address_max_failures`` in any window of
``login_address_window_seconds``, then one more every window/max. Beyond that, every login from
the address is answered 429 ``TOO_MANY_ATTEMPTS`` (with ``Retry-After``) before any password is
looked at, so a right password cannot be told from a wrong one while the address is limited.

How it counts (the generic cell rate algorithm: one timestamp per address). Every attempt takes
window/max seconds of allowance by moving the address's ``spent_until`` forward, from now if it
lies in the past; an attempt that would move it more than one window ahead is refused. The
attempt is taken *before* the password is checked, under the address row's lock, so parallel
guesses sent to any number of instances cannot overrun the limit. An attempt that turns out not to
be a failed guess (a successful login, a malformed request, a locked or disabled mid) is given
back afterwards: successful logins never count, and a shop whose registers share one NAT address
is not limited by its own logins.

The state lives in the database (table ``login_throttle``), because several gateway instances may
share one PostgreSQL: a counter in each process would multiply the limit by the number of
processes. The address is the ASGI peer (``scope["client"]``). Behind a reverse proxy that is
the proxy's own address unless uvicorn is told to trust the proxy's X-Forwarded-For
(``FORWARDED_ALLOW_IPS``); see docs/security.md. An IPv6 address counts by its /64 network,
the block one subscriber usually holds, so that rotating through it gains nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.config import Settings
from kessai.domain.errors import KessaiError, RateLimited

log = logging.getLogger("kessai.ratelimit")

# Answers that mean "a password (or os) was guessed and was wrong": these keep their attempt.
GUESS_CODES: Final = frozenset({"WRONG_CREDENTIALS", "UNKNOWN_OS"})
# The width of the address column; a longer peer name (not an IP address) is cut to it.
MAX_ADDRESS_LENGTH: Final = 64
UNKNOWN_ADDRESS: Final = "unknown"


def client_address(scope: Mapping[str, Any]) -> str:
    """The address a login counts against: the ASGI peer, an IPv6 one reduced to its /64."""
    client = scope.get("client")
    host = str(client[0]) if client and client[0] else ""
    if not host:
        # A transport without a peer (a Unix socket): all such logins share one allowance.
        return UNKNOWN_ADDRESS
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host[:MAX_ADDRESS_LENGTH]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class AddressLimit:
    """``max_failures`` failed logins per address in any ``window``; 0 turns the limit off."""

    max_failures: int
    window: timedelta

    @classmethod
    def of(cls, settings: Settings) -> AddressLimit:
        """The limit the settings configure."""
        return cls(
            settings.login_address_max_failures,
            timedelta(seconds=settings.login_address_window_seconds),
        )

    @property
    def enabled(self) -> bool:
        """Whether logins are limited at all."""
        return self.max_failures > 0 and self.window > timedelta(0)

    @property
    def step(self) -> timedelta:
        """The allowance one attempt takes."""
        return self.window / self.max_failures


@dataclass(frozen=True, slots=True)
class Taken:
    """The outcome of :func:`take`: refused (with the seconds to wait) or taken."""

    wait_seconds: int | None
    # Whether this attempt took the last of the allowance (the next one would be refused).
    last: bool = False


def take(conn: Connection, address: str, now: datetime, limit: AddressLimit) -> Taken:
    """Take one attempt from the address's allowance, or say how long to wait for one."""
    table = t.login_throttle
    insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
    conn.execute(
        insert(table)
        .values(address=address, spent_until=now)
        .on_conflict_do_nothing(index_elements=[table.c.address])
    )
    # The row lock serialises attempts of one address across instances (SQLite serialises
    # every writing unit anyway).
    spent_until = conn.execute(
        sa.select(table.c.spent_until).where(table.c.address == address).with_for_update()
    ).scalar_one()
    after = max(spent_until, now) + limit.step
    if after - now > limit.window:
        return Taken(max(1, math.ceil((after - limit.window - now).total_seconds())))
    conn.execute(table.update().where(table.c.address == address).values(spent_until=after))
    return Taken(None, last=after - now > limit.window - limit.step)


def give_back(conn: Connection, address: str, limit: AddressLimit) -> None:
    """Return an attempt that was not a failed guess."""
    table = t.login_throttle
    spent_until = conn.execute(
        sa.select(table.c.spent_until).where(table.c.address == address).with_for_update()
    ).scalar_one_or_none()
    if spent_until is not None:
        conn.execute(
            table.update()
            .where(table.c.address == address)
            .values(spent_until=spent_until - limit.step)
        )


def prune(conn: Connection, now: datetime, batch: int) -> int:
    """Delete rows whose allowance is whole again (the same as having no row); answers how many."""
    table = t.login_throttle
    spent = sa.select(table.c.address).where(table.c.spent_until <= now).limit(batch)
    return int(conn.execute(table.delete().where(table.c.address.in_(spent))).rowcount)


@dataclass(slots=True)
class LoginAttempt:
    """One login attempt, taken from its address's allowance by :func:`login_attempt`."""

    address: str
    # Whether it took the last of the allowance (worth a warning in the log if it fails).
    last: bool = False
    failed: bool = False

    def fail(self) -> None:
        """Mark the attempt as a failed guess: it keeps its share of the allowance."""
        self.failed = True


@asynccontextmanager
async def login_attempt(
    db: Database, settings: Settings, scope: Mapping[str, Any], now: datetime
) -> AsyncIterator[LoginAttempt]:
    """Take an attempt for the login inside the block; give it back unless the login failed.

    Raises 429 TOO_MANY_ATTEMPTS when the client address has no allowance left. A
    WRONG_CREDENTIALS or UNKNOWN_OS error raised in the block marks the attempt as failed; so
    does :meth:`LoginAttempt.fail` (for callers that answer a failure without raising).
    """
    limit = AddressLimit.of(settings)
    attempt = LoginAttempt(client_address(scope))
    if not limit.enabled:
        yield attempt
        return
    taken = await db.run(lambda conn: take(conn, attempt.address, now, limit))
    if taken.wait_seconds is not None:
        raise RateLimited(
            f"too many failed logins from this address; try again in {taken.wait_seconds} seconds",
            code="TOO_MANY_ATTEMPTS",
            retry_after_seconds=taken.wait_seconds,
        )
    attempt = LoginAttempt(attempt.address, last=taken.last)
    try:
        yield attempt
    except KessaiError as exc:
        if exc.code in GUESS_CODES:
            attempt.fail()
        raise
    finally:
        await _settle(db, attempt, limit)


async def _settle(db: Database, attempt: LoginAttempt, limit: AddressLimit) -> None:
    if attempt.failed:
        if attempt.last:
            # Once per exhausted allowance, not once per refused login: an attacker cannot
            # flood the log by going on.
            log.warning(
                "failed logins from %s reached the limit of %d per %d s; further logins from "
                "it are refused for a while",
                attempt.address,
                limit.max_failures,
                int(limit.window.total_seconds()),
            )
        return
    try:
        await db.run(lambda conn: give_back(conn, attempt.address, limit))
    except Exception:  # losing one attempt of allowance is harmless; the login's answer is not
        log.exception("could not give back a login attempt of %s", attempt.address)
