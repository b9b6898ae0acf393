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
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.connectors.base import PayRequest, ProviderOutcome, ProviderResult
from kessai.domain.errors import InvalidRequest
from kessai.domain.model import PaymentStatus
from kessai.service import events
from kessai.service.worker import Worker
from rawhttp import RawServer

if TYPE_CHECKING:
    from conftest import Harness, Till

CHUNK = b"x" * 65536
# Real seconds a step may take on a loaded machine before the test gives up.
PATIENCE = 60.0
ENDLESS_BYTES = 256 * 1024 * 1024


class Endpoint(RawServer):
    """A raw HTTP endpoint on 127.0.0.1 that answers 200 and then a body of the given kind."""

    def __init__(
        self, body: str, releases: Endpoint | None = None, hold_seconds: float = 10.0
    ) -> None:
        self.body = body
        self.sent = 0
        self.requests = 0
        self.ids: list[str] = []  # the Kessai-Event-Id of each request, in the order they came
        self.hold_seconds = hold_seconds
        # "held": answers only once ``released`` is set, by the endpoint it was given to as
        # ``releases`` when that one gets a request of its own.
        self.released = threading.Event()
        self.releases = releases
        super().__init__()
        self.url = self.base_url + "/hooks"

    def answer(self, conn: socket.socket, head: bytes) -> None:
        """Answer as this endpoint's kind says; the gateway hanging up ends it."""
        self.requests += 1
        self.ids.append(_event_id(head))
        if self.releases is not None:
            self.releases.released.set()
        if self.body == "held" and not self.released.wait(self.hold_seconds):
            return
        if self.body == "sluggish":
            time.sleep(0.3)  # answers every time, but slowly
        if self.body in ("held", "quick", "sluggish"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return
        if self.body == "failing":
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
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


def _event_id(head: bytes) -> str:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"kessai-event-id":
            return value.strip().decode()
    return ""


@pytest.fixture
def master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KESSAI_SECRET_KEY", "5e" * 32)


def _endpoint_and_event(h: Harness, url: str) -> Till:
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
    return till


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


def _deliver(
    h: Harness, timeout_seconds: float, budget_seconds: float | None = None
) -> tuple[int, int]:
    async def deliver() -> tuple[int, int]:
        async with httpx.AsyncClient(follow_redirects=False) as client:
            return await events.deliver_due(
                h.db,
                h.clock,
                10,
                client,
                0.3,
                timeout_seconds=timeout_seconds,
                budget_seconds=budget_seconds,
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


class UnsureWallet:
    """A wallet whose payment answer never comes, and which says "paid" when asked later."""

    name = "sandbox"

    async def pay(self, request: PayRequest) -> ProviderResult:
        raise TimeoutError("the wallet did not answer in time")

    async def sync(self, ref: str) -> ProviderResult:
        return ProviderResult(ProviderOutcome.SUCCEEDED, provider_ref=ref)


@pytest.mark.usefixtures("master_key")
def test_an_endpoint_that_does_not_answer_never_holds_back_the_checks_that_settle_payments(
    h: Harness,
) -> None:
    # The worker used to run its jobs one after another in a single loop, so while a delivery
    # waited for a merchant's endpoint (up to its deadline, every pass while that endpoint was
    # down) no PENDING payment of any merchant was checked with its wallet.
    held = Endpoint("held", hold_seconds=PATIENCE)
    worker = Worker(h.gateway)
    worker.delivery_timeout_seconds = PATIENCE  # the endpoint, not the deadline, decides here
    try:
        _endpoint_and_event(h, held.url)
        h.gateway.connectors["sandbox"] = UnsureWallet()  # type: ignore[assignment]
        unsure = h.till().request(700)
        assert unsure.status is PaymentStatus.PENDING

        def status_of(conn: Connection) -> str:
            p = t.payments
            query = sa.select(p.c.status).where(p.c.trans_id == unsure.trans_id)
            return str(conn.execute(query).scalar_one())

        def attempts(conn: Connection) -> int:
            query = sa.select(sa.func.count()).select_from(t.webhook_attempts)
            return int(conn.execute(query).scalar_one())

        async def scenario() -> tuple[str, int]:
            stop = asyncio.Event()
            task = asyncio.create_task(worker.run_forever(stop))
            try:
                await _until(lambda: held.requests > 0, "the delivery to start")
                # Only now is the payment due for a check: the delivery is still waiting.
                h.clock.advance(h.settings.worker_recheck_interval_ms / 1000)
                deadline = asyncio.get_running_loop().time() + PATIENCE
                while (status := await h.db.run(status_of, write=False)) == "PENDING":
                    assert asyncio.get_running_loop().time() < deadline, "never checked"
                    await asyncio.sleep(0.01)
                return status, await h.db.run(attempts, write=False)
            finally:
                stop.set()
                held.released.set()
                await asyncio.wait_for(task, PATIENCE)
                await worker.aclose()

        status, attempts_meanwhile = asyncio.run(scenario())
        assert status == PaymentStatus.COMPLETED.value
        assert attempts_meanwhile == 0  # settled while the delivery was still waiting
        assert held.requests == 1
    finally:
        held.close()


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + PATIENCE
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.01)


@pytest.mark.usefixtures("master_key")
def test_an_endpoint_that_fails_keeps_its_later_events_waiting_behind_the_failed_one(
    h: Harness,
) -> None:
    # One pass used to try every claimed event of an endpoint that had just failed: each could
    # wait out its own deadline, and one that got through overtook the event that had failed.
    failing = Endpoint("failing")
    try:
        till = _endpoint_and_event(h, failing.url)
        till.request(1001)
        till.request(1002)
        assert _deliver(h, 5.0) == (1, 0)
        assert failing.requests == 1

        def rows(conn: Connection) -> list[tuple[int, object]]:
            ev = t.webhook_events
            query = sa.select(ev.c.attempts, ev.c.next_attempt_at).order_by(ev.c.id)
            return [(r.attempts, r.next_attempt_at) for r in conn.execute(query)]

        (tried, retry_at), *later = h.db.run_sync(rows, write=False)
        assert tried == 1 and retry_at > h.clock()
        assert later == [(0, retry_at), (0, retry_at)]  # due with it, not attempted
        h.clock.now = retry_at
        failing.body = "quick"  # the endpoint is back: all three, oldest first
        assert _deliver(h, 5.0) == (3, 3)
    finally:
        failing.close()


@pytest.mark.usefixtures("master_key")
def test_a_slow_endpoint_keeps_a_pass_within_its_budget_and_loses_no_event(h: Harness) -> None:
    # An endpoint that answers, but slowly, held the whole pass for as long as its queue lasted,
    # and every other merchant's new events waited for the next pass; the worker's time bound
    # then cut the pass off, its unattempted events still leased for a minute.
    sluggish = Endpoint("sluggish")
    try:
        till = _endpoint_and_event(h, sluggish.url)
        for amount in range(1001, 1005):
            till.request(amount)

        def rows(conn: Connection) -> list[tuple[str, int, object]]:
            ev = t.webhook_events
            query = sa.select(ev.c.status, ev.c.attempts, ev.c.next_attempt_at).order_by(ev.c.id)
            return [(r.status, r.attempts, r.next_attempt_at) for r in conn.execute(query)]

        attempted, delivered = _deliver(h, 5.0, budget_seconds=0.5)
        # Five answers of 0.3 s each do not fit in half a second: the pass stopped starting them.
        assert 1 <= delivered == attempted < 5
        after = h.db.run_sync(rows, write=False)
        assert [status for status, _, _ in after[:attempted]] == [events.DELIVERED] * attempted
        # The rest were released, not left leased: due again now, never attempted.
        assert after[attempted:] == [(events.PENDING, 0, h.clock())] * (5 - attempted)
        total = attempted
        for _ in range(5):
            if total == 5:
                break
            total += _deliver(h, 5.0, budget_seconds=0.5)[1]
        assert total == 5 and sluggish.requests == 5
        assert {status for status, _, _ in h.db.run_sync(rows, write=False)} == {events.DELIVERED}
    finally:
        sluggish.close()


@pytest.mark.usefixtures("master_key")
def test_the_worker_gives_its_webhook_pass_the_budget_its_time_bound_leaves(
    make_harness: Callable[..., Harness],
) -> None:
    # A 2 s bound less a 0.5 s deadline and the second's margin leaves 0.5 s: five answers of
    # 0.3 s each are not all started, and the pass ends on its own, never cut off by the bound.
    h = make_harness(worker_job_seconds=2.0)
    sluggish = Endpoint("sluggish")
    worker = Worker(h.gateway)
    worker.delivery_timeout_seconds = 0.5
    try:
        till = _endpoint_and_event(h, sluggish.url)
        for amount in range(1001, 1005):
            till.request(amount)
        report = asyncio.run(worker.run_once())
        assert not report.errors  # no "time budget spent": nothing was cut off
        assert 1 <= report.webhooks_delivered == report.webhooks_attempted < 5
    finally:
        asyncio.run(worker.aclose())
        sluggish.close()


@pytest.mark.usefixtures("master_key")
def test_a_webhook_url_with_a_user_or_password_is_refused_and_nothing_is_set(h: Harness) -> None:
    # Credentials in the URL would be kept in clear in the database and in the audit trail,
    # which refuses every change, and would be logged with each delivery.
    shop = h.provision()
    url = "https://hookuser:hookpass@hooks.example.jp/in"
    with pytest.raises(InvalidRequest) as caught:
        h.db.run_sync(lambda conn: events.set_endpoint(conn, shop.merchant_id, url, h.clock()))
    assert caught.value.field == "url"
    assert h.table("webhook_endpoints") == []
    assert not [r for r in h.table("audit_events") if r["action"] == "webhook.endpoint_set"]


@pytest.mark.usefixtures("master_key")
def test_the_audit_trail_keeps_a_webhook_url_without_its_query(h: Harness) -> None:
    # A token in the query is the merchant's secret: the endpoint keeps it to deliver, the
    # append-only audit trail does not.
    shop = h.provision()
    url = "https://hooks.example.jp/in?token=URLSECRET123#part"
    h.db.run_sync(lambda conn: events.set_endpoint(conn, shop.merchant_id, url, h.clock()))
    assert [r["url"] for r in h.table("webhook_endpoints")] == [url]
    (entry,) = [r for r in h.table("audit_events") if r["action"] == "webhook.endpoint_set"]
    assert "URLSECRET123" not in str(entry["detail"])
    assert "https://hooks.example.jp/in" in str(entry["detail"])


def _events(h: Harness) -> list[dict[str, object]]:
    return h.table("webhook_events")


def _set_event(h: Harness, pk: int, **values: object) -> None:
    ev = t.webhook_events
    h.db.run_sync(lambda conn: conn.execute(ev.update().where(ev.c.id == pk).values(**values)))


@pytest.mark.usefixtures("master_key")
def test_a_payments_later_event_waits_for_its_earlier_one_across_passes(h: Harness) -> None:
    # Each event was due at once when made: after the completion's delivery failed (its retry
    # set in the future), the refund's event was claimed by the next pass and reached the
    # merchant first, the completion afterwards.
    failing = Endpoint("failing")
    try:
        till = _endpoint_and_event(h, failing.url)
        (paid,) = h.table("payments")
        assert _deliver(h, 5.0) == (1, 0)
        (completed,) = _events(h)
        retry_at = completed["next_attempt_at"]
        assert isinstance(retry_at, datetime) and retry_at > h.clock()

        failing.body = "quick"  # the endpoint is back, but the completion is not due yet
        till.refund(str(paid["trans_id"]))
        other = till.request(1500)  # another payment's event is not held back by it
        _, refunded, other_event = _events(h)
        assert refunded["type"] == "payment.refunded"
        assert refunded["payment_id"] == completed["payment_id"]
        assert _deliver(h, 5.0) == (1, 1)
        assert failing.ids[1:] == [other_event["event_id"]]
        assert other.trans_id and other_event["payment_id"] != completed["payment_id"]
        # Still not the refund, however often a pass runs before the completion's retry.
        assert _deliver(h, 5.0) == (0, 0)
        assert [e["status"] for e in _events(h)] == [events.PENDING, events.PENDING, "DELIVERED"]

        h.clock.now = retry_at
        assert _deliver(h, 5.0) == (1, 1)  # the completion; the refund was not yet claimable
        assert _deliver(h, 5.0) == (1, 1)
        assert failing.ids == [
            completed["event_id"],
            other_event["event_id"],
            completed["event_id"],
            refunded["event_id"],
        ]
        assert {e["status"] for e in _events(h)} == {events.DELIVERED}
    finally:
        failing.close()


@pytest.mark.usefixtures("master_key")
def test_a_dead_earlier_event_does_not_hold_back_its_payments_later_ones(h: Harness) -> None:
    failing = Endpoint("failing")
    try:
        till = _endpoint_and_event(h, failing.url)
        (paid,) = h.table("payments")
        (completed,) = _events(h)
        _set_event(h, int(str(completed["id"])), attempts=events.MAX_ATTEMPTS - 1)
        assert _deliver(h, 5.0) == (1, 0)
        assert [e["status"] for e in _events(h)] == [events.DEAD]
        failing.body = "quick"
        till.refund(str(paid["trans_id"]))
        assert _deliver(h, 5.0) == (1, 1)
        assert [e["status"] for e in _events(h)] == [events.DEAD, events.DELIVERED]
    finally:
        failing.close()


def test_the_claim_finds_earlier_pending_events_through_the_partial_index(h: Harness) -> None:
    # However many events are delivered, the claim's look for an earlier PENDING event of the
    # same payment reads only the PENDING ones.
    def plan_of(conn: Connection) -> list[sa.Row[tuple[object, ...]]]:
        compiled = events._DUE_EVENTS[False].compile(conn)
        params = compiled.construct_params({"b_now": h.clock(), "b_batch": 10})
        processors = compiled._bind_processors
        values = tuple(
            processors[name](params[name]) if name in processors else params[name]
            for name in compiled.positiontup or ()
        )
        return list(conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", values).all())

    plan = h.db.run_sync(plan_of, write=False)
    details = " | ".join(str(row[-1]) for row in plan)
    assert "ix_webhook_events_pending_payment" in details, details


class FirstHeldThenFailed(Endpoint):
    """Holds its first request until released and answers it 503; answers the others 200."""

    def __init__(self) -> None:
        super().__init__("quick")

    def answer(self, conn: socket.socket, head: bytes) -> None:
        self.requests += 1
        self.ids.append(_event_id(head))
        if self.requests == 1:
            self.released.wait(PATIENCE)
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


async def _pass(h: Harness, client: httpx.AsyncClient) -> tuple[int, int]:
    return await events.deliver_due(h.db, h.clock, 10, client, 0.3, timeout_seconds=PATIENCE)


def _resent_entries(h: Harness) -> list[dict[str, object]]:
    return [r for r in h.table("audit_events") if r["action"] == "webhook.event_resent"]


@pytest.mark.usefixtures("master_key")
def test_a_resend_while_the_event_is_being_delivered_is_refused(h: Harness) -> None:
    # The resend made the event due at once under a running delivery: the next pass sent it a
    # second time, side by side with the first, and whichever finished last wrote the outcome.
    held = Endpoint("held", hold_seconds=PATIENCE)
    try:
        _endpoint_and_event(h, held.url)
        (event,) = _events(h)
        event_id = str(event["event_id"])

        def resend(conn: Connection) -> None:
            events.resend(conn, event_id, h.clock())

        async def scenario() -> None:
            async with httpx.AsyncClient() as client:
                first = asyncio.create_task(_pass(h, client))
                await _until(lambda: held.requests == 1, "the delivery to start")
                with pytest.raises(InvalidRequest, match="being delivered right now"):
                    await h.db.run(resend)
                assert await _pass(h, client) == (0, 0)  # a second pass alongside: nothing due
                held.released.set()
                assert await first == (1, 1)

        asyncio.run(scenario())
        assert held.requests == 1
        (after,) = _events(h)
        assert (after["status"], after["attempts"], after["leased_until"]) == ("DELIVERED", 1, None)
        assert _resent_entries(h) == []

        # Once that delivery is over, the event can be sent again, and the audit trail says so.
        h.db.run_sync(resend)
        (entry,) = _resent_entries(h)
        assert entry["merchant_id"] == event["merchant_id"]
        assert event_id in str(entry["detail"]) and "DELIVERED" in str(entry["detail"])
        assert _deliver(h, 5.0) == (1, 1)
        assert held.ids == [event_id, event_id]
    finally:
        held.close()


@pytest.mark.usefixtures("master_key")
def test_a_pass_that_outlived_its_lease_does_not_overwrite_a_delivered_event(h: Harness) -> None:
    # The first pass's answer came after its lease had run out and a second pass had delivered
    # the event; the late failure was written over the delivery (on its last attempt: DEAD).
    endpoint = FirstHeldThenFailed()
    try:
        _endpoint_and_event(h, endpoint.url)
        (event,) = _events(h)
        _set_event(h, int(str(event["id"])), attempts=events.MAX_ATTEMPTS - 1)

        async def scenario() -> tuple[int, int]:
            async with httpx.AsyncClient() as client:
                stale = asyncio.create_task(_pass(h, client))
                await _until(lambda: endpoint.requests == 1, "the first delivery to start")
                h.clock.advance(events.LEASE_SECONDS + 1)  # its lease runs out
                assert await _pass(h, client) == (1, 1)
                endpoint.released.set()
                return await stale

        assert asyncio.run(scenario()) == (1, 0)  # the stale pass did see its 503
        (after,) = _events(h)
        assert after["status"] == events.DELIVERED
        assert after["attempts"] == events.MAX_ATTEMPTS  # the second pass's attempt only
        assert (after["last_status_code"], after["leased_until"]) == (200, None)
        assert after["delivered_at"] == h.clock()
        # Both attempts are in its history: the late one happened, it only decides nothing.
        codes = sorted(a["status_code"] or 0 for a in h.table("webhook_attempts"))
        assert codes == [200, 503]
        assert endpoint.requests == 2
    finally:
        endpoint.close()


@pytest.mark.usefixtures("master_key")
def test_a_pass_that_outlived_its_lease_leaves_a_resent_event_to_its_new_delivery(
    h: Harness,
) -> None:
    endpoint = FirstHeldThenFailed()
    try:
        _endpoint_and_event(h, endpoint.url)
        (event,) = _events(h)
        event_id = str(event["event_id"])

        async def scenario() -> tuple[int, int]:
            async with httpx.AsyncClient() as client:
                stale = asyncio.create_task(_pass(h, client))
                await _until(lambda: endpoint.requests == 1, "the first delivery to start")
                h.clock.advance(events.LEASE_SECONDS + 1)
                # Its lease is over: the operator may resend, and the resent event is due now.
                await h.db.run(lambda conn: events.resend(conn, event_id, h.clock()))
                endpoint.released.set()
                return await stale

        assert asyncio.run(scenario()) == (1, 0)
        (after,) = _events(h)
        # The stale failure did not push the resent event's next attempt into the future.
        assert (after["status"], after["attempts"]) == (events.PENDING, 0)
        assert after["next_attempt_at"] == h.clock()
        assert _deliver(h, 5.0) == (1, 1)
        assert endpoint.ids == [event_id, event_id]
    finally:
        endpoint.close()
