"""Webhook events: the outbox, the endpoint settings, and delivery with retries.

An event is written to ``webhook_events`` by the same unit of work as the state change it
reports, so it exists exactly when the change does: a crash can delay an event, never lose it.
Workers deliver events at least once, with capped exponential backoff and jitter, recording every
attempt; an event that keeps failing ends DEAD after ``MAX_ATTEMPTS`` and can be re-sent.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai import keys, webhooks
from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.adapters.hot import Hot
from kessai.adapters.repository import audit
from kessai.adapters.schema import UTCDateTime
from kessai.api.wire import payment_wire
from kessai.clock import Clock
from kessai.domain.catalog import load_catalog
from kessai.domain.errors import InvalidRequest, NotFound
from kessai.domain.model import Payment, PaymentStatus

PENDING: Final = "PENDING"
DELIVERED: Final = "DELIVERED"
DEAD: Final = "DEAD"
STATUSES: Final = (PENDING, DELIVERED, DEAD)
# The most events one listing shows.
MAX_LISTED: Final = 1000
# About three days of retries with the default first delay of 10 s (10 s, 20 s, 40 s, …, capped
# at one hour).
MAX_ATTEMPTS: Final = 80
MAX_RETRY_SECONDS: Final = 3600
# A claimed event is leased for this long; a worker that dies mid-delivery frees it by expiry.
LEASE_SECONDS: Final = 60
DELIVERY_TIMEOUT_SECONDS: Final = 10.0
# Endpoints a pass delivers to at the same time; each endpoint's events go one after another.
DELIVERY_CONCURRENCY: Final = 16
# What a worker's pass leaves of its time bound, beyond the last delivery it may start, for
# recording that delivery (see ``deliver_due``'s ``budget_seconds``).
PASS_MARGIN_SECONDS: Final = 1.0
MAX_URL_LENGTH: Final = 500

TYPES: Final[dict[PaymentStatus, str]] = {
    PaymentStatus.COMPLETED: "payment.completed",
    PaymentStatus.FAILED: "payment.failed",
    PaymentStatus.EXPIRED: "payment.expired",
    PaymentStatus.CANCELED: "payment.canceled",
    PaymentStatus.PARTIALLY_REFUNDED: "payment.refunded",
    PaymentStatus.REFUNDED: "payment.refunded",
}


# Asked on every change of every payment: built once.
_LISTENING = Hot(
    sa.select(t.webhook_endpoints.c.id).where(
        t.webhook_endpoints.c.merchant_id == sa.bindparam("merchant_id"),
        t.webhook_endpoints.c.enabled.is_(True),
    )
)
_INSERT_EVENT = Hot(t.webhook_events.insert())


# A payment's events reach its merchant in the order they were made: one is not claimed while an
# earlier event of the same payment is still PENDING, whether leased by a pass or waiting for its
# retry; a DELIVERED or DEAD one no longer holds the later ones back. Events without a payment are
# not ordered. The condition is written as a literal, not a bound value, so that the planners use
# the partial index on exactly it (ix_webhook_events_pending_payment).
_EARLIER = t.webhook_events.alias("earlier")
_EARLIER_PENDING = (
    sa.select(_EARLIER.c.id)
    .where(
        _EARLIER.c.payment_id == t.webhook_events.c.payment_id,
        sa.text(f"earlier.status = '{PENDING}'"),
        _EARLIER.c.id < t.webhook_events.c.id,
    )
    .exists()
)
# The delivery claim's select runs on every worker pass: built once.
_DUE_EVENTS_QUERY = (
    sa.select(t.webhook_events.c.id)
    .where(
        t.webhook_events.c.status == PENDING,
        t.webhook_events.c.next_attempt_at <= sa.bindparam("b_now", type_=UTCDateTime()),
        ~_EARLIER_PENDING,
    )
    .order_by(t.webhook_events.c.next_attempt_at, t.webhook_events.c.id)
    .limit(sa.bindparam("b_batch", type_=sa.Integer()))
)
_DUE_EVENTS = {
    False: _DUE_EVENTS_QUERY,
    True: _DUE_EVENTS_QUERY.with_for_update(skip_locked=True),
}


def record(
    conn: Connection,
    payment_pk: int,
    payment: Payment,
    now: datetime,
    *,
    listening: bool | None = None,
) -> None:
    """Write the event for ``payment``'s new state, if its merchant listens and it is one.

    ``listening``: whether the merchant has an enabled endpoint, when the unit has already read
    it (in the same transaction); None to look it up here.
    """
    event_type = TYPES.get(payment.status)
    if event_type is None:
        return
    if listening is None:
        listening = _LISTENING.run(conn, {"merchant_id": payment.merchant_id}).first() is not None
    if not listening:
        return
    service = load_catalog().get(payment.service_id)
    event_id = "evt_" + secrets.token_hex(12)
    body = {
        "id": event_id,
        "type": event_type,
        "createdAt": now.isoformat().replace("+00:00", "Z"),
        "sequence": payment.version,
        "data": {
            "payment": msgspec.to_builtins(payment_wire(payment, service.name if service else None))
        },
    }
    _INSERT_EVENT.defer(
        conn,
        dict(
            event_id=event_id,
            merchant_id=payment.merchant_id,
            payment_id=payment_pk,
            type=event_type,
            sequence=payment.version,
            payload=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        ),
    )


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc or len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(
            f"url must be an http(s) URL of at most {MAX_URL_LENGTH} characters", field="url"
        )
    if "@" in parts.netloc:
        # A user and password in the URL would be kept in the database and the audit trail in
        # clear; the signature is what proves an event comes from the gateway.
        raise InvalidRequest(
            "url must not carry a user or password: verify the events' signature instead",
            field="url",
        )
    return url


def shown_url(url: str) -> str:
    """``url`` without its query and fragment, where a token may hide: for logs and the audit."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def set_endpoint(conn: Connection, merchant_id: int, url: str, now: datetime) -> str:
    """Set the merchant's webhook URL with a fresh signing secret; answers the secret (once)."""
    _check_url(url)
    if (
        conn.execute(sa.select(t.merchants.c.id).where(t.merchants.c.id == merchant_id)).first()
        is None
    ):
        raise NotFound(f"no merchant {merchant_id}", code="NOT_FOUND", field="merchant")
    nonce = secrets.token_hex(16)
    secret = keys.webhook_secret(nonce)  # fails clearly when no master key is configured
    e = t.webhook_endpoints
    existing = conn.execute(sa.select(e.c.id).where(e.c.merchant_id == merchant_id)).first()
    if existing is None:
        conn.execute(
            e.insert().values(
                merchant_id=merchant_id,
                url=url,
                secret_nonce=nonce,
                enabled=True,
                created_at=now,
                updated_at=now,
            )
        )
    else:
        conn.execute(
            e.update()
            .where(e.c.id == existing.id)
            .values(url=url, secret_nonce=nonce, enabled=True, updated_at=now)
        )
    audit(
        conn,
        at=now,
        actor="admin:cli",
        action="webhook.endpoint_set",
        merchant_id=merchant_id,
        detail={"url": shown_url(url)},
    )
    return secret


def list_events(
    conn: Connection, merchant_id: int | None, status: str | None, limit: int
) -> list[dict[str, Any]]:
    """Recent events with their delivery attempts, newest first.

    A ``status`` that is not one of the three, or a ``limit`` outside 1 to ``MAX_LISTED``, is
    refused: a misspelt status used to list nothing, as if no event had that status.
    """
    if status is not None and status.upper() not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", field="status")
    if not 1 <= limit <= MAX_LISTED:
        raise InvalidRequest(f"limit must be 1 to {MAX_LISTED}", field="limit")
    ev = t.webhook_events
    query = sa.select(ev).order_by(ev.c.id.desc()).limit(limit)
    if merchant_id is not None:
        query = query.where(ev.c.merchant_id == merchant_id)
    if status is not None:
        query = query.where(ev.c.status == status.upper())
    out = []
    for row in conn.execute(query):
        attempts = conn.execute(
            sa.select(t.webhook_attempts)
            .where(t.webhook_attempts.c.event_pk == row.id)
            .order_by(t.webhook_attempts.c.id)
        ).all()
        out.append(
            {
                "eventId": row.event_id,
                "type": row.type,
                "merchantId": row.merchant_id,
                "sequence": row.sequence,
                "status": row.status,
                "attempts": [
                    {
                        "at": a.at.isoformat(),
                        "statusCode": a.status_code,
                        "error": a.error,
                        "durationMs": a.duration_ms,
                    }
                    for a in attempts
                ],
                "nextAttemptAt": row.next_attempt_at.isoformat(),
                "deliveredAt": row.delivered_at.isoformat() if row.delivered_at else None,
                "createdAt": row.created_at.isoformat(),
            }
        )
    return out


def resend(conn: Connection, event_id: str, now: datetime) -> None:
    """Queue an event for delivery again (after a receiver's outage, or a DEAD event).

    An event a delivery pass holds right now (its lease still running) is refused: that delivery
    decides its outcome, and a second one alongside would reach the merchant twice at once.
    """
    ev = t.webhook_events
    row = conn.execute(
        sa.select(ev.c.id, ev.c.merchant_id, ev.c.status, ev.c.leased_until).where(
            ev.c.event_id == event_id
        )
    ).first()
    if row is None:
        raise NotFound(f"no event {event_id}", code="NOT_FOUND", field="eventId")
    if row.status == PENDING and row.leased_until is not None and row.leased_until > now:
        raise InvalidRequest(
            f"event {event_id} is being delivered right now (its delivery is leased until"
            f" {row.leased_until.isoformat()}): see its outcome with `kessai admin webhook"
            " events` and resend it afterwards if it is still needed",
            field="eventId",
        )
    # Guarded by what was read, so that a pass claiming it meanwhile is not overridden either.
    result = conn.execute(
        ev.update()
        .where(
            ev.c.id == row.id,
            ev.c.status == row.status,
            _same_lease(row.leased_until),
        )
        .values(status=PENDING, next_attempt_at=now, attempts=0, leased_until=None)
    )
    if result.rowcount != 1:
        raise InvalidRequest(
            f"event {event_id} was claimed for delivery meanwhile: try again", field="eventId"
        )
    audit(
        conn,
        at=now,
        actor="admin:cli",
        action="webhook.event_resent",
        merchant_id=row.merchant_id,
        detail={"eventId": event_id, "status": row.status},
    )


def _same_lease(lease: datetime | None) -> sa.ColumnElement[bool]:
    """The event still carries ``lease`` (None: no lease)."""
    column = t.webhook_events.c.leased_until
    return column.is_(None) if lease is None else column == lease


@dataclass(frozen=True, slots=True)
class _Claimed:
    pk: int
    event_id: str
    url: str
    secret_nonce: str
    payload: str
    attempts: int
    # The end of the lease this pass took it with; the pass writes to it only while it holds.
    lease: datetime


def backoff_seconds(attempts: int, rng: random.Random, first_seconds: float) -> float:
    """Delay before the next attempt after ``attempts`` failures: doubling, capped, jittered."""
    base = min(first_seconds * 2 ** (attempts - 1), MAX_RETRY_SECONDS)
    return float(base * rng.uniform(0.8, 1.2))


async def deliver_due(
    db: Database,
    clock: Clock,
    batch: int,
    client: httpx.AsyncClient,
    first_retry_seconds: float,
    *,
    timeout_seconds: float = DELIVERY_TIMEOUT_SECONDS,
    budget_seconds: float | None = None,
) -> tuple[int, int]:
    """Deliver due events once each; answers (attempted, delivered).

    A delivery counts when the endpoint's status is 2xx within ``timeout_seconds``. Different
    endpoints are delivered to at the same time; one endpoint's events, in order. With
    ``budget_seconds``, an endpoint starts no delivery after the pass has run that long beyond
    its first one: its other claimed events are released, due again at once, for the next pass.
    """
    now = clock()
    started = time.monotonic()
    skip_locked = db.dialect == "postgresql"
    lease = now + timedelta(seconds=LEASE_SECONDS)

    def claim(conn: Connection) -> list[_Claimed]:
        ev, ep = t.webhook_events, t.webhook_endpoints
        due = _DUE_EVENTS[skip_locked]
        ids = list(conn.execute(due, {"b_now": now, "b_batch": batch}).scalars())
        if not ids:
            return []
        # The lease: nobody else takes these events until it runs out.
        conn.execute(
            ev.update().where(ev.c.id.in_(ids)).values(next_attempt_at=lease, leased_until=lease)
        )
        rows = conn.execute(
            sa.select(
                ev.c.id, ev.c.event_id, ev.c.payload, ev.c.attempts, ep.c.url, ep.c.secret_nonce
            )
            .join(ep, ep.c.merchant_id == ev.c.merchant_id)
            .where(ev.c.id.in_(ids))
            .order_by(ev.c.id)
        ).all()
        return [
            _Claimed(r.id, r.event_id, r.url, r.secret_nonce, r.payload, r.attempts, lease)
            for r in rows
        ]

    claimed = await db.run(claim)
    rng = random.Random()  # noqa: S311 - jitter, not a secret
    # One slow or dead endpoint must not hold back every other merchant's events: endpoints are
    # served side by side (up to DELIVERY_CONCURRENCY), each one's events in the order they were
    # made, one at a time, as its server would expect.
    queues: dict[str, list[_Claimed]] = {}
    for event in claimed:
        queues.setdefault(event.url, []).append(event)
    slots = asyncio.Semaphore(DELIVERY_CONCURRENCY)

    async def hold_back(rest: list[_Claimed], until: datetime) -> None:
        """Make an endpoint's events not attempted in this pass due at ``until``, in order."""
        if rest:
            await db.run(
                functools.partial(_postpone, pks=[e.pk for e in rest], lease=lease, until=until)
            )

    async def serve(queue: list[_Claimed]) -> tuple[int, int]:
        async with slots:
            for index, event in enumerate(queue):
                if (
                    index > 0
                    and budget_seconds is not None
                    and time.monotonic() - started > budget_seconds
                ):
                    # A slow endpoint (answering, but slowly) would otherwise hold the pass, and
                    # every other merchant's new events behind it, for as long as its queue
                    # lasts. Released rather than left leased, they wait for no lease to expire.
                    await hold_back(queue[index:], clock())
                    return index, index
                retry_at = await _deliver_one(
                    db, clock, client, event, rng, first_retry_seconds, timeout_seconds
                )
                if retry_at is None:
                    continue
                # The endpoint just failed. Its later events wait with the failed one: tried now,
                # each would most likely wait out a deadline of its own, and any that got through
                # would reach the merchant before the earlier one.
                await hold_back(queue[index + 1 :], retry_at)
                return index + 1, index
        return len(queue), len(queue)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(serve(queue)) for queue in queues.values()]
    counts = [task.result() for task in tasks]
    return sum(a for a, _ in counts), sum(d for _, d in counts)


def _postpone(conn: Connection, *, pks: list[int], lease: datetime, until: datetime) -> None:
    """Make claimed events, not attempted, due again at ``until`` (their attempts unchanged).

    Only those that still carry this pass's ``lease``: one re-sent or claimed again since is
    another delivery's.
    """
    ev = t.webhook_events
    conn.execute(
        ev.update()
        .where(ev.c.id.in_(pks), ev.c.status == PENDING, ev.c.leased_until == lease)
        .values(next_attempt_at=until, leased_until=None)
    )


async def _deliver_one(
    db: Database,
    clock: Clock,
    client: httpx.AsyncClient,
    event: _Claimed,
    rng: random.Random,
    first_retry_seconds: float,
    timeout_seconds: float,
) -> datetime | None:
    """Deliver one event and record the attempt: ``None`` when delivered.

    Otherwise, when its endpoint is to be tried again: the event's own next attempt, or for an
    event that has just gone DEAD, the time that attempt would have had.

    The attempt always joins the event's history, but its outcome changes the event only while
    the event is still PENDING under this pass's lease. A pass that outlived its lease (the event
    re-sent, or claimed and perhaps delivered by another pass since) leaves the event as it is.
    """
    body = event.payload.encode()
    started = time.perf_counter()
    status_code: int | None = None
    error: str | None = None
    try:
        secret = keys.webhook_secret(event.secret_nonce)
        headers = {
            "Content-Type": "application/json",
            webhooks.EVENT_ID_HEADER: event.event_id,
            webhooks.SIGNATURE_HEADER: webhooks.sign(secret, body, int(time.time())),
            "User-Agent": "Kessai-Webhooks/1",
        }
        # The merchant's server chooses what it answers, so the exchange as a whole has one
        # deadline (httpx's own waits for each read afresh) and only the status is read: a body
        # is never taken into memory, however long it is or however slowly it comes.
        async with (
            asyncio.timeout(timeout_seconds),
            client.stream(
                "POST", event.url, content=body, headers=headers, timeout=timeout_seconds
            ) as response,
        ):
            status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except TimeoutError:
        error = f"no answer within {timeout_seconds:g} s"
    except (httpx.HTTPError, keys.MissingKey) as exc:
        error = f"{type(exc).__name__}: {exc}"[:200]
    duration_ms = int((time.perf_counter() - started) * 1000)
    now = clock()
    success = error is None
    retry_at = now + timedelta(
        seconds=backoff_seconds(event.attempts + 1, rng, first_retry_seconds)
    )

    def unit(conn: Connection) -> None:
        ev = t.webhook_events
        conn.execute(
            t.webhook_attempts.insert().values(
                event_pk=event.pk,
                at=now,
                status_code=status_code,
                error=error,
                duration_ms=duration_ms,
            )
        )
        attempts = event.attempts + 1
        if success:
            values: dict[str, Any] = {"status": DELIVERED, "delivered_at": now}
        elif attempts >= MAX_ATTEMPTS:
            values = {"status": DEAD}
        else:
            values = {"next_attempt_at": retry_at}
        conn.execute(
            ev.update()
            .where(ev.c.id == event.pk, ev.c.status == PENDING, ev.c.leased_until == event.lease)
            .values(
                attempts=attempts,
                last_status_code=status_code,
                last_error=error,
                leased_until=None,
                **values,
            )
        )

    await db.run(unit)
    return None if success else retry_at
