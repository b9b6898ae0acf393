"""A worker batch that outlives its lease never asks a provider on a lease that ran out.

The worker claims a batch of PENDING payments with one lease sized for the batch's calls. When
the first calls take longer than that (a slow provider, a starved event loop), the payments still
waiting for a free slot are past their lease: another resolver may be asking the provider about
them by then. Each such payment is left for a later pass instead of being asked twice at once.

Time is the ``FakeClock``: the test moves it past the lease while the provider holds the first
calls, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from conftest import FakeClock, Harness, Till, run
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.connectors.base import PayRequest, ProviderOutcome, ProviderResult
from kessai.domain.model import Payment, PaymentStatus, PendingReason
from kessai.service.worker import MAX_PARALLEL_PROVIDER_CALLS, Worker, WorkerReport

# Real seconds a step of the scenario may take on a loaded machine before the test gives up.
PATIENCE = 60.0
BATCH = MAX_PARALLEL_PROVIDER_CALLS + 1  # one payment more than the worker asks about at once


class HeldProvider:
    """A provider whose answers never come by themselves: a test opens each payment's gate.

    Every payment ends up PENDING with an unknown outcome, and every later question about it is
    answered "still unknown" once its gate opens. It notes when each question started, by the
    gateway's clock, and whether one started while another about the same payment was in flight.
    """

    name = "sandbox"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.started: list[tuple[str, datetime]] = []
        self.overlaps: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self._in_flight: Counter[str] = Counter()

    def asked(self, ref: str) -> int:
        """How many questions about ``ref`` have started."""
        return sum(1 for started, _ in self.started if started == ref)

    async def pay(self, request: PayRequest) -> ProviderResult:
        raise TimeoutError("the wallet did not answer in time")

    async def sync(self, ref: str) -> ProviderResult:
        return await self._ask(ref)

    async def cancel(self, ref: str) -> ProviderResult:
        return await self._ask(ref)

    async def _ask(self, ref: str) -> ProviderResult:
        self.started.append((ref, self.clock()))
        if self._in_flight[ref]:
            self.overlaps.append(ref)
        self._in_flight[ref] += 1
        try:
            gate = self.gates.get(ref)
            if gate is not None:
                await gate.wait()
        finally:
            self._in_flight[ref] -= 1
        return ProviderResult(ProviderOutcome.UNKNOWN, provider_ref=ref)


@dataclass
class Pending:
    """A gateway with the held provider, a terminal, and a batch of PENDING payments now due."""

    h: Harness
    till: Till
    provider: HeldProvider
    payments: list[Payment]

    @property
    def last(self) -> str:
        """The transId of the payment claimed last: it waits for a free slot."""
        return self.payments[-1].trans_id


@pytest.fixture
def pending(make_harness: Callable[..., Harness]) -> Pending:
    # A long provider timeout: the held calls must not time out in real time while the test
    # works, and no payment reaches its give-up time (a cancel) however far the clock moves.
    h = make_harness(provider_timeout_seconds=120.0, provider_give_up_seconds=24 * 3600)
    till = h.till()
    provider = HeldProvider(h.clock)
    h.gateway.connectors["sandbox"] = provider  # type: ignore[assignment]
    payments = [till.request(100 + n) for n in range(BATCH)]
    unknown = (PaymentStatus.PENDING, PendingReason.OUTCOME_UNKNOWN)
    assert {(p.status, p.pending_reason) for p in payments} == {unknown}
    h.clock.advance(h.settings.worker_recheck_interval_ms / 1000)
    return Pending(h, till, provider, payments)


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait, in real time, until ``condition`` holds (the loop keeps serving meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while not condition():
        assert loop.time() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.01)


@dataclass
class HeldBatch:
    """A worker pass under way whose first calls the provider holds until ``first_calls`` opens."""

    worker: Worker
    report: WorkerReport
    task: asyncio.Task[None]
    first_calls: asyncio.Event

    async def finish(self) -> WorkerReport:
        """Wait for the pass to end; what it did."""
        await asyncio.wait_for(self.task, PATIENCE)
        await self.worker.aclose()
        return self.report


async def _hold_first_calls(pending: Pending) -> HeldBatch:
    """Start a worker pass over the batch and wait until its first calls are held.

    The batch is claimed in the order the payments were made, so the last one waits for a slot.
    """
    provider = pending.provider
    first_calls = asyncio.Event()
    for payment in pending.payments[:MAX_PARALLEL_PROVIDER_CALLS]:
        provider.gates[payment.trans_id] = first_calls
    worker = Worker(pending.h.gateway)
    report = WorkerReport()
    task = asyncio.create_task(worker.reconcile(report))
    await _until(lambda: len(provider.started) == MAX_PARALLEL_PROVIDER_CALLS, "first calls")
    return HeldBatch(worker, report, task, first_calls)


async def _lease_end(h: Harness, trans_id: str) -> datetime:
    def read(conn: Connection) -> datetime:
        p = t.payments
        found = conn.execute(
            sa.select(p.c.provider_checked_at).where(p.c.trans_id == trans_id)
        ).scalar_one()
        assert isinstance(found, datetime)
        return found

    return await h.db.run(read, write=False)


def test_a_payment_whose_lease_ran_out_is_not_asked_while_another_check_is_in_flight(
    pending: Pending,
) -> None:
    h, provider, last = pending.h, pending.provider, pending.last

    async def scenario() -> tuple[WorkerReport, datetime]:
        poll_gate = provider.gates[last] = asyncio.Event()
        batch = await _hold_first_calls(pending)
        assert provider.asked(last) == 0
        lease_end = await _lease_end(h, last)
        # The first calls outlast the batch's lease; then a terminal polls the last payment.
        # Its lease has run out, so PAYCHECK claims the check and asks the provider itself.
        h.clock.now = lease_end + timedelta(milliseconds=h.settings.provider_recheck_interval_ms)
        poll = asyncio.create_task(h.gateway.paycheck(pending.till.token, last, h.rid()))
        await _until(lambda: provider.asked(last) == 1, "the poll's question")
        batch.first_calls.set()
        # The batch goes on while the poll's question is still unanswered.
        await _until(lambda: batch.task.done() or provider.asked(last) > 1, "the end of the batch")
        poll_gate.set()
        report = await batch.finish()
        polled = await asyncio.wait_for(poll, PATIENCE)
        assert polled.payment.status is PaymentStatus.PENDING
        return report, lease_end

    report, lease_end = run(scenario())
    assert provider.overlaps == [], "a payment was asked about twice at once"
    assert provider.asked(last) == 1  # by the poll alone
    assert all(at < lease_end for ref, at in provider.started if ref != last)
    assert (report.checked, report.lease_lost, report.errors) == (BATCH, 1, [])


def test_a_payment_left_by_a_batch_that_outlived_its_lease_is_asked_on_a_later_pass(
    pending: Pending,
) -> None:
    h, provider, last = pending.h, pending.provider, pending.last

    async def first_pass() -> WorkerReport:
        batch = await _hold_first_calls(pending)
        # Slow answers: by the time they come, the batch's lease has run out.
        h.clock.now = await _lease_end(h, last) + timedelta(seconds=1)
        batch.first_calls.set()
        return await batch.finish()

    report = run(first_pass())
    assert provider.asked(last) == 0
    assert (report.checked, report.lease_lost, report.errors) == (BATCH, 1, [])
    # Nothing is lost: the payment is due again, and the next pass asks about it.
    h.clock.advance(h.settings.worker_recheck_interval_ms / 1000)

    async def next_pass() -> WorkerReport:
        worker = Worker(h.gateway)
        report = WorkerReport()
        await worker.reconcile(report)
        await worker.aclose()
        return report

    again = run(next_pass())
    assert provider.asked(last) == 1
    assert (again.checked, again.lease_lost, again.errors) == (BATCH, 0, [])
    assert provider.overlaps == []


def test_a_payment_being_asked_holds_a_lease_that_outlasts_its_call(pending: Pending) -> None:
    h, provider, first = pending.h, pending.provider, pending.payments[0].trans_id

    async def scenario() -> tuple[datetime, datetime]:
        gate = provider.gates[first] = asyncio.Event()
        worker = Worker(h.gateway)
        batch = asyncio.create_task(worker.reconcile(WorkerReport()))
        await _until(lambda: provider.asked(first) == 1, "the first call")
        asked_at = h.clock()
        held_until = await _lease_end(h, first)
        gate.set()
        await asyncio.wait_for(batch, PATIENCE)
        await worker.aclose()
        return asked_at, held_until

    asked_at, held_until = run(scenario())
    # No other resolver may claim the payment before its call has certainly ended.
    assert held_until - asked_at >= timedelta(seconds=h.settings.provider_timeout_seconds)
