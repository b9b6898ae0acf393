"""A merchant's webhook endpoint is not trusted: its answer is read only as far as its status.

The endpoint's URL is the merchant's to choose. Its answer body was read whole into memory, and
each read waited anew for the next byte: a body without end filled the worker's memory, and one
trickled a byte at a time held the delivery (and the events queued behind it) for ever.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.service import events
from rawhttp import RawServer

if TYPE_CHECKING:
    from conftest import Harness

CHUNK = b"x" * 65536
ENDLESS_BYTES = 256 * 1024 * 1024


class Endpoint(RawServer):
    """A raw HTTP endpoint on 127.0.0.1 that answers 200 and then a body of the given kind."""

    def __init__(self, body: str, releases: Endpoint | None = None) -> None:
        self.body = body
        self.sent = 0
        # "held": answers only once ``released`` is set, by the endpoint it was given to as
        # ``releases`` when that one gets a request of its own.
        self.released = threading.Event()
        self.releases = releases
        super().__init__()
        self.url = self.base_url + "/hooks"

    def answer(self, conn: socket.socket, head: bytes) -> None:
        """Answer as this endpoint's kind says; the gateway hanging up ends it."""
        if self.releases is not None:
            self.releases.released.set()
        if self.body == "held" and not self.released.wait(10):
            return
        if self.body in ("held", "quick"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        if self.body == "slow-head":
            # The status line, then headers a byte at a time, never finished.
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Padding: ")
            while self.sent < ENDLESS_BYTES:
                conn.sendall(b"x")
                self.sent += 1
                time.sleep(0.2)
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while self.sent < ENDLESS_BYTES:
            piece = CHUNK if self.body == "flood" else b"."
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.sent += len(piece)
            if self.body == "slow-body":
                time.sleep(0.2)


@pytest.fixture
def master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KESSAI_SECRET_KEY", "5e" * 32)


def _endpoint_and_event(h: Harness, url: str) -> None:
    till = h.till()
    now = h.clock()

    def unit(conn: Connection) -> None:
        conn.execute(
            t.webhook_endpoints.insert().values(
                merchant_id=till.shop.merchant_id,
                url=url,
                secret_nonce="00" * 16,
                enabled=True,
                created_at=now,
                updated_at=now,
            )
        )

    h.db.run_sync(unit)
    till.request(1000)  # settled at once: its event waits in the outbox


def _last_attempt_of(h: Harness, url: str) -> tuple[int | None, str | None]:
    a, e, p = t.webhook_attempts, t.webhook_events, t.webhook_endpoints
    query = (
        sa.select(a.c.status_code, a.c.error)
        .join(e, e.c.id == a.c.event_pk)
        .join(p, p.c.merchant_id == e.c.merchant_id)
        .where(p.c.url == url)
        .order_by(a.c.id.desc())
        .limit(1)
    )
    row = h.db.run_sync(lambda conn: conn.execute(query).one(), write=False)
    return row.status_code, row.error


def _last_attempt(h: Harness) -> tuple[int | None, str | None]:
    a = t.webhook_attempts
    query = sa.select(a.c.status_code, a.c.error).order_by(a.c.id.desc()).limit(1)
    row = h.db.run_sync(lambda conn: conn.execute(query).one(), write=False)
    return row.status_code, row.error


def _deliver(h: Harness, timeout_seconds: float) -> tuple[int, int]:
    async def deliver() -> tuple[int, int]:
        async with httpx.AsyncClient(follow_redirects=False) as client:
            return await events.deliver_due(
                h.db, h.clock, 10, client, 0.3, timeout_seconds=timeout_seconds
            )

    return asyncio.run(deliver())


@pytest.fixture(params=["flood", "slow-body", "slow-head"])
def endpoint(request: pytest.FixtureRequest) -> Iterator[Endpoint]:
    made = Endpoint(request.param)
    yield made
    made.close()


@pytest.mark.usefixtures("master_key")
def test_an_endless_or_stalling_answer_is_cut_off(h: Harness, endpoint: Endpoint) -> None:
    _endpoint_and_event(h, endpoint.url)
    began = time.monotonic()
    attempted, delivered = _deliver(h, 1.0)
    took = time.monotonic() - began
    assert attempted == 1
    assert took < 10  # a one-second deadline for the whole exchange, whatever keeps coming
    assert endpoint.sent < 16 * 1024 * 1024  # read as far as the status, never the whole body
    if endpoint.body == "slow-head":
        status, error = _last_attempt(h)
        assert (delivered, status) == (0, None)
        assert error is not None and "1 s" in error  # retried later, like any failure
    else:
        # The merchant said 200 before its body went on: that is a delivery.
        assert (delivered, _last_attempt(h)) == (1, (200, None))


@pytest.mark.usefixtures("master_key")
def test_a_waiting_endpoint_does_not_hold_back_other_merchants_events(h: Harness) -> None:
    # The first endpoint answers only once the second has its event. Delivered one after the
    # other, the first would wait out its deadline and fail; side by side, both succeed.
    held = Endpoint("held")
    other = Endpoint("quick", releases=held)
    try:
        _endpoint_and_event(h, held.url)  # the older event: one at a time, it would go first
        _endpoint_and_event(h, other.url)
        assert _deliver(h, 5.0) == (2, 2)
        assert _last_attempt_of(h, held.url) == (200, None)
        assert _last_attempt_of(h, other.url) == (200, None)
    finally:
        held.close()
        other.close()
