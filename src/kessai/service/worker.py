"""Background jobs: resolve payments nobody polls, expire QR codes, prune housekeeping rows.

Every job is safe to run on every instance at once. Work is claimed in the database — a payment
by moving its ``provider_checked_at`` forward (with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
two workers never take the same rows) — and each job is bounded in batch size and in time. A
worker that crashes mid-batch loses nothing: the payments it claimed are simply due again after
the recheck interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import repository as repo
from kessai.adapters import schema as t
from kessai.adapters.schema import UTCDateTime
from kessai.domain.model import PaymentStatus, RefundStatus
from kessai.service import events, ratelimit
from kessai.service.gateway import Gateway

log = logging.getLogger("kessai.worker")

# How many claimed payments (or refunds) one worker asks providers about at the same time.
MAX_PARALLEL_PROVIDER_CALLS = 10
# Beyond a job's time bound, what a provider call started within it may still take to have its
# answer recorded (the call itself is bounded by the provider timeout).
RECORD_MARGIN_SECONDS = 5.0

# Written as literals, not bound values, so that the planners use the partial indexes on exactly
# these conditions (ix_payments_pending_check, ix_refunds_pending).
_PAYMENT_PENDING = sa.text(f"payments.status = '{PaymentStatus.PENDING.value}'")
_REFUND_PENDING = sa.text(f"refunds.status = '{RefundStatus.PENDING.value}'")
_DUE = sa.bindparam("b_due", type_=UTCDateTime())
_LIMIT = sa.bindparam("b_batch", type_=sa.Integer())
# The claims' selects run on every pass: built once, with and without SKIP LOCKED.
_DUE_PAYMENTS_QUERY = (
    sa.select(t.payments.c.id)
    .where(
        _PAYMENT_PENDING,
        sa.or_(
            t.payments.c.provider_checked_at.is_(None), t.payments.c.provider_checked_at <= _DUE
        ),
    )
    .order_by(t.payments.c.provider_checked_at.nulls_first(), t.payments.c.id)
    .limit(_LIMIT)
)
_DUE_PAYMENTS = {
    False: _DUE_PAYMENTS_QUERY,
    True: _DUE_PAYMENTS_QUERY.with_for_update(skip_locked=True),
}
_DUE_REFUNDS_QUERY = (
    sa.select(t.refunds.c.id)
    .where(_REFUND_PENDING, t.refunds.c.updated_at <= _DUE)
    .order_by(t.refunds.c.updated_at)
    .limit(_LIMIT)
)
_DUE_REFUNDS = {
    False: _DUE_REFUNDS_QUERY,
    True: _DUE_REFUNDS_QUERY.with_for_update(skip_locked=True),
}
# Renews one claimed payment's lease just before its provider call. It holds only while the row
# still carries this worker's lease end: a recorded answer or another resolver's claim (possible
# once the lease ran out) has moved ``provider_checked_at`` away from it.
_HELD = sa.bindparam("b_held", type_=UTCDateTime())
_RENEW_CLAIM = (
    t.payments.update()
    .where(t.payments.c.id == sa.bindparam("b_pk"), _PAYMENT_PENDING)
    .where(t.payments.c.provider_checked_at == _HELD)
    .values(provider_checked_at=sa.bindparam("b_until", type_=UTCDateTime()))
)
# Gives back a claimed payment the pass did not get to: due again at once, for the next pass.
_RELEASE_CLAIM = (
    t.payments.update()
    .where(t.payments.c.id == sa.bindparam("b_pk"), _PAYMENT_PENDING)
    .where(t.payments.c.provider_checked_at == _HELD)
    .values(provider_checked_at=sa.bindparam("b_due", type_=UTCDateTime()))
)
# The prune job's statements run on every pass: built once.
_NOW = sa.bindparam("b_now", type_=UTCDateTime())
_OLD = sa.bindparam("b_old", type_=UTCDateTime())
_BATCH = sa.bindparam("b_batch", type_=sa.Integer())
_END_IDLE_SESSIONS = (
    t.sessions.update()
    .where(t.sessions.c.ended_at.is_(None), t.sessions.c.idle_expires_at <= _NOW)
    .values(ended_at=_NOW, end_reason="idle")
)
_DELETE_OLD_SESSIONS = t.sessions.delete().where(
    t.sessions.c.id.in_(
        sa.select(t.sessions.c.id).where(t.sessions.c.ended_at <= _OLD).limit(_BATCH)
    )
)
_DELETE_OLD_CODES = t.sandbox_codes.delete().where(
    t.sandbox_codes.c.code_hash.in_(
        sa.select(t.sandbox_codes.c.code_hash)
        .where(t.sandbox_codes.c.issued_at <= _OLD)
        .limit(_BATCH)
    )
)


@dataclass(slots=True)
class WorkerReport:
    """What one pass of the jobs did."""

    checked: int = 0
    finished: int = 0
    # Claimed payments not asked because their lease no longer held when their turn came (it ran
    # out, or an answer recorded meanwhile ended it); they are due again on a later pass.
    lease_lost: int = 0
    # Claimed payments and refunds not asked because the job's time was up before their turn;
    # payments are given back at once, refunds are due again after the recheck interval.
    deferred: int = 0
    webhooks_attempted: int = 0
    webhooks_delivered: int = 0
    pruned_sessions: int = 0
    pruned_codes: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        """Whether the pass found work (the loop then runs again without sleeping)."""
        return self.checked > 0 or self.deferred > 0 or self.webhooks_attempted > 0


class Worker:
    """Runs the background jobs of one gateway."""

    def __init__(self, gateway: Gateway, client: httpx.AsyncClient | None = None) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        # Webhook deliveries go through one client (connection reuse); tests may inject theirs.
        self.client = client or httpx.AsyncClient(follow_redirects=False)
        # How long one delivery may take, its answer's headers included.
        self.delivery_timeout_seconds = events.DELIVERY_TIMEOUT_SECONDS

    async def run_once(self) -> WorkerReport:
        """One pass of every job: the payment jobs, then webhook deliveries."""
        report = WorkerReport()
        await self._payment_jobs(report)
        await self._webhook_jobs(report)
        return report

    async def _payment_jobs(self, report: WorkerReport) -> None:
        # The jobs that ask providers start no call once their time is spent, and a call they
        # started is let finish and be recorded: a bound shorter than the provider timeout used
        # to cut every slow call off before its answer was kept, pass after pass, so a payment
        # or refund whose provider answered slowly was never settled.
        job = self.settings.worker_job_seconds + RECORD_MARGIN_SECONDS
        call = self.settings.provider_timeout_seconds
        await self._bounded(self.reconcile(report), "reconcile", report, job + call)
        # A refund is asked about, then (never received by the provider) sent again: two calls.
        await self._bounded(self.refunds(report), "refunds", report, job + 2 * call)
        await self._bounded(self.prune(report), "prune", report)

    def _time_up(self) -> Callable[[], bool]:
        """Whether the job that calls this now must start no more provider calls, when asked."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.settings.worker_job_seconds
        return lambda: loop.time() >= until

    async def _webhook_jobs(self, report: WorkerReport) -> None:
        await self._bounded(self.deliver(report), "webhooks", report)

    async def refunds(self, report: WorkerReport) -> None:
        """Ask providers about refunds whose outcome was not known when they were made."""
        gateway = self.gateway
        now = gateway.clock()
        interval = timedelta(milliseconds=self.settings.worker_recheck_interval_ms)
        skip_locked = gateway.db.dialect == "postgresql"

        def claim(conn: Connection) -> list[tuple[int, str]]:
            r = t.refunds
            due = _DUE_REFUNDS[skip_locked]
            params = {"b_due": now - interval, "b_batch": self.settings.worker_batch_size}
            ids = list(conn.execute(due, params).scalars())
            if not ids:
                return []
            # Moving updated_at forward is the claim: the refund is due again after the interval.
            conn.execute(r.update().where(r.c.id.in_(ids)).values(updated_at=now))
            rows = conn.execute(sa.select(r.c.payment_id, r.c.refund_id).where(r.c.id.in_(ids)))
            return [(row.payment_id, row.refund_id) for row in rows]

        time_up = self._time_up()
        limit = asyncio.Semaphore(MAX_PARALLEL_PROVIDER_CALLS)

        async def one(payment_pk: int, refund_id: str) -> None:
            # Side by side, as payments are: one refund whose provider answers slowly must not
            # hold back the others of the batch.
            async with limit:
                if time_up():
                    report.deferred += 1  # due again after the recheck interval
                    return
                try:
                    await gateway.resolve_refund(payment_pk, refund_id, "worker")
                except Exception as exc:  # one refund's trouble must not stop the batch
                    log.exception("reconciling refund %s failed", refund_id)
                    report.errors.append(f"{refund_id}: {type(exc).__name__}")

        claimed = await gateway.db.run(claim)
        report.checked += len(claimed)
        await asyncio.gather(*(one(pk, refund_id) for pk, refund_id in claimed))

    async def deliver(self, report: WorkerReport) -> None:
        """Deliver due webhook events (at least once, with backoff)."""
        gateway = self.gateway
        attempted, delivered = await events.deliver_due(
            gateway.db,
            gateway.clock,
            self.settings.worker_batch_size,
            self.client,
            self.settings.webhook_first_retry_seconds,
            timeout_seconds=self.delivery_timeout_seconds,
            # The last delivery a pass starts still ends, and is recorded, within the job's
            # time bound: the bound then never cuts a delivery off, nor leaves events leased.
            budget_seconds=max(
                0.0,
                self.settings.worker_job_seconds
                - self.delivery_timeout_seconds
                - events.PASS_MARGIN_SECONDS,
            ),
        )
        report.webhooks_attempted += attempted
        report.webhooks_delivered += delivered

    async def aclose(self) -> None:
        """Close the webhook client."""
        await self.client.aclose()

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Run passes until ``stop`` is set, the payment jobs and webhook deliveries apart.

        Each runs in a loop of its own, so a merchant's endpoint that does not answer never holds
        back the checks that settle payments, nor the other way round.
        """
        async with asyncio.TaskGroup() as group:
            group.create_task(self._repeat(self._payment_jobs, stop))
            group.create_task(self._repeat(self._webhook_jobs, stop))

    async def _repeat(
        self, jobs: Callable[[WorkerReport], Coroutine[Any, Any, None]], stop: asyncio.Event
    ) -> None:
        """Run ``jobs`` until ``stop`` is set; sleep briefly after a pass that found nothing."""
        while not stop.is_set():
            report = WorkerReport()
            try:
                await jobs(report)
            except Exception:  # a job's failure must not end the worker; it is logged
                log.exception("worker pass failed")
            if report.busy:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.worker_idle_sleep_ms / 1000)

    async def _bounded(
        self,
        job: Coroutine[Any, Any, None],
        name: str,
        report: WorkerReport,
        seconds: float | None = None,
    ) -> None:
        try:
            await asyncio.wait_for(job, seconds or self.settings.worker_job_seconds)
        except TimeoutError:
            report.errors.append(f"{name}: time budget spent")
            log.warning("worker job %s ran out of its time budget", name)

    async def reconcile(self, report: WorkerReport) -> None:
        """Ask providers about PENDING payments whose last answer is stale; expire QR codes."""
        gateway = self.gateway
        now = gateway.clock()
        interval = timedelta(milliseconds=self.settings.worker_recheck_interval_ms)
        batch = self.settings.worker_batch_size
        skip_locked = gateway.db.dialect == "postgresql"

        def claim(conn: Connection) -> list[tuple[repo.StoredPayment, str, datetime]]:
            p = t.payments
            due = _DUE_PAYMENTS[skip_locked]
            ids = list(conn.execute(due, {"b_due": now - interval, "b_batch": batch}).scalars())
            if not ids:
                return []
            # The claim is a lease sized for the whole batch's calls (at most
            # MAX_PARALLEL_PROVIDER_CALLS at a time); recording each answer ends its lease.
            # Slow calls or a starved event loop can still make a payment wait past it, so
            # each payment's lease is renewed right before its own call (see ``renew``).
            rounds = -(-len(ids) // MAX_PARALLEL_PROVIDER_CALLS)
            lease_end = now + gateway.check_lease(rounds)
            conn.execute(p.update().where(p.c.id.in_(ids)).values(provider_checked_at=lease_end))
            claimed = [repo.load_payment(conn, pk) for pk in ids]
            names = {s.payment.merchant_id for s in claimed}
            merchant = {m: repo.merchant_name(conn, m) for m in names}
            return [(s, merchant[s.payment.merchant_id], lease_end) for s in claimed]

        def renew(pk: int, held: datetime) -> Callable[[Connection], bool]:
            def unit(conn: Connection) -> bool:
                # Read the clock in the unit: the wait for the database thread counts too.
                at = gateway.clock()
                if at >= held:
                    # Past its end the lease protects nothing: another resolver may already
                    # be asking the provider on a reading of its own.
                    return False
                until = at + gateway.check_lease()
                renewed = conn.execute(_RENEW_CLAIM, {"b_pk": pk, "b_held": held, "b_until": until})
                return renewed.rowcount == 1

            return unit

        def release(pk: int, held: datetime) -> Callable[[Connection], None]:
            def unit(conn: Connection) -> None:
                due = gateway.clock() - interval
                conn.execute(_RELEASE_CLAIM, {"b_pk": pk, "b_held": held, "b_due": due})

            return unit

        claimed = await gateway.db.run(claim)
        report.checked += len(claimed)
        time_up = self._time_up()
        limit = asyncio.Semaphore(MAX_PARALLEL_PROVIDER_CALLS)

        async def one(stored: repo.StoredPayment, merchant_name: str, held: datetime) -> None:
            async with limit:
                try:
                    if time_up():
                        # Given back rather than left leased: its lease, sized for the whole
                        # batch, would otherwise keep it from the next passes for minutes.
                        await gateway.db.run(release(stored.pk, held))
                        report.deferred += 1
                        return
                    if not await gateway.db.run(renew(stored.pk, held)):
                        report.lease_lost += 1
                        trans_id = stored.payment.trans_id
                        log.info("payment %s left for a later pass: lease no longer held", trans_id)
                        return
                    after = await gateway.resolve(stored, merchant_name, "worker")
                except Exception as exc:  # one payment's trouble must not stop the batch
                    log.exception("reconciling payment %s failed", stored.payment.trans_id)
                    report.errors.append(f"{stored.payment.trans_id}: {type(exc).__name__}")
                    return
                if after.status is not PaymentStatus.PENDING:
                    report.finished += 1

        await asyncio.gather(*(one(s, name, held) for s, name, held in claimed))

    async def prune(self, report: WorkerReport) -> None:
        """Delete ended sessions, spent sandbox codes and whole login allowances past their time."""
        gateway = self.gateway
        now = gateway.clock()
        settings = self.settings
        batch = settings.worker_batch_size * 10

        def unit(conn: Connection) -> tuple[int, int]:
            # Idle sessions are closed here too, so they show as ended in the console.
            conn.execute(_END_IDLE_SESSIONS, {"b_now": now})
            old = now - timedelta(days=settings.session_retention_days)
            sessions = conn.execute(_DELETE_OLD_SESSIONS, {"b_old": old, "b_batch": batch})
            stale = now - timedelta(days=settings.sandbox_code_retention_days)
            codes = conn.execute(_DELETE_OLD_CODES, {"b_old": stale, "b_batch": batch})
            ratelimit.prune(conn, now, batch)
            return sessions.rowcount, codes.rowcount

        sessions, codes = await gateway.db.run(unit)
        report.pruned_sessions += sessions
        report.pruned_codes += codes
