"""AsyncTerminal against a real gateway: the same operations, awaited (run with asyncio.run)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kessai.client import (
    AsyncTerminal,
    InvalidState,
    PaymentNotFound,
    PaymentStatus,
    PendingReason,
    RecoveryReport,
    TerminalConfig,
    TerminalInUse,
    UnprocessableCode,
)

from .conftest import Gateway, make_config
from .proxy import Proxy
from .test_sdk import RacingJournal, logins, start_racing

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("outcome", "final", "failure"),
    [
        ("success", PaymentStatus.COMPLETED, None),
        ("declined", PaymentStatus.FAILED, "DECLINED"),
        ("error", PaymentStatus.FAILED, "PROVIDER_ERROR"),
        ("timeout-success", PaymentStatus.COMPLETED, None),
        ("timeout-failure", PaymentStatus.FAILED, "DECLINED"),
        ("password", PaymentStatus.COMPLETED, None),
    ],
)
def test_pay_each_outcome(
    gateway: Gateway,
    config: TerminalConfig,
    outcome: str,
    final: PaymentStatus,
    failure: str | None,
) -> None:
    code = gateway.code(outcome)

    async def scenario() -> tuple[
        PaymentStatus, PendingReason | None, PaymentStatus, str | None, str
    ]:
        async with AsyncTerminal(config) as terminal:
            first = await terminal.pay(1300, code)
            if outcome == "password":
                # The customer confirms in the app while the terminal polls.
                approve = asyncio.create_task(
                    asyncio.to_thread(gateway.settle, first.trans_id, True)
                )
                last = await terminal.wait(first.trans_id, 15)
                await approve
                if not last.is_final:
                    last = await terminal.wait(first.trans_id, 5)
            elif not first.is_final:
                last = await terminal.wait(first.trans_id, 10)
            else:
                last = first
            entry = terminal.journal.entry(first.trans_key)
            assert entry is not None
            return first.status, first.pending_reason, last.status, last.failure_code, entry.status

    first, reason, last, failure_code, journaled = asyncio.run(scenario())
    if outcome in ("timeout-success", "timeout-failure"):
        assert (first, reason) == (PaymentStatus.PENDING, PendingReason.OUTCOME_UNKNOWN)
    if outcome == "password":
        assert (first, reason) == (PaymentStatus.PENDING, PendingReason.WAITING_FOR_CUSTOMER)
    assert last is final and failure_code == failure and journaled == final.value


def test_every_other_operation(gateway: Gateway, config: TerminalConfig) -> None:
    sale_code = gateway.code("success")
    scanned = gateway.code("success", "05")

    async def scenario() -> None:
        async with AsyncTerminal(config) as terminal:
            paid = await terminal.pay(2500, sale_code)
            assert (await terminal.paycheck(paid.trans_id)).trans_key == paid.trans_key
            assert (await terminal.status(paid.trans_key)).trans_id == paid.trans_id
            assert (await terminal.voucher(paid.trans_id, "A-1")).voucher_no == "A-1"
            part = await terminal.refund(paid.trans_id, 500)
            assert part.status is PaymentStatus.PARTIALLY_REFUNDED
            rest = await terminal.refund(paid.trans_id)
            assert rest.status is PaymentStatus.REFUNDED
            with pytest.raises(InvalidState):
                await terminal.refund(paid.trans_id, 1)
            found = await terminal.identify(scanned)
            assert found.service_id == "05"
            with pytest.raises(UnprocessableCode):
                await terminal.identify("https://example.com/not-a-wallet")
            with pytest.raises(PaymentNotFound):
                await terminal.status("UNKNOWNKEY")
            shown = await terminal.qr_code(900, "02")
            assert shown.qr_data
            await asyncio.to_thread(gateway.customer_decides, shown.qr_data, "approve")
            assert (await terminal.wait(shown.trans_id, 10)).status is PaymentStatus.COMPLETED
            expiring = await terminal.qr_code(900, "01", ttl_seconds=2)
            assert (await terminal.wait(expiring.trans_id, 10)).status is PaymentStatus.EXPIRED
            report = await terminal.recover()
            assert report.all_resolved
            gateway.expect(paid.trans_id, "SUCCEEDED", 2500)
            gateway.expect(shown.trans_id, "SUCCEEDED")
            await terminal.logout()
            assert not terminal.logged_in
            # The next call logs in again by itself.
            assert (await terminal.paycheck(paid.trans_id)).status is PaymentStatus.REFUNDED

    asyncio.run(scenario())


def test_concurrent_first_calls_log_in_once(gateway: Gateway, config: TerminalConfig) -> None:
    codes = gateway.codes("success", count=4)

    async def scenario() -> list[PaymentStatus]:
        async with AsyncTerminal(config) as terminal:
            payments = await asyncio.gather(*(terminal.pay(400, code) for code in codes))
            return [p.status for p in payments]

    assert asyncio.run(scenario()) == [PaymentStatus.COMPLETED] * 4


def test_relogin_and_one_device_per_mid(gateway: Gateway, tmp_path: Path) -> None:
    creds = gateway.new_terminal()
    code = gateway.code("success")

    async def scenario() -> None:
        mine = AsyncTerminal(make_config(gateway, creds, tmp_path / "a.db", key="ASYNC-A"))
        other = AsyncTerminal(make_config(gateway, creds, tmp_path / "b.db", key="ASYNC-B"))
        async with mine, other:
            await mine.login()
            with pytest.raises(TerminalInUse):
                await other.login()
            # The same register restarted with a fresh journal: its LOGIN replaces the session,
            # so the first one's token dies; it logs in again by itself and the payment goes on.
            restarted = AsyncTerminal(make_config(gateway, creds, tmp_path / "c.db", key="ASYNC-A"))
            async with restarted:
                await restarted.login()
            assert (await mine.pay(100, code)).status is PaymentStatus.COMPLETED

    asyncio.run(scenario())


def test_recovery_keeps_a_request_another_process_sent_meanwhile(
    gateway: Gateway, config: TerminalConfig
) -> None:
    code = gateway.code("success")

    async def scenario() -> tuple[RecoveryReport, str | None, str | None]:
        async with AsyncTerminal(config) as terminal:
            paid = await terminal.pay(2502, code)
        pay_key, refund_key, meanwhile = start_racing(config.journal, config.mid, paid.trans_id)
        journal = RacingJournal(config.journal, meanwhile)
        async with AsyncTerminal(config, journal=journal, recover_on_start=False) as terminal:
            report = await terminal.recover()
        entry, journaled = journal.entry(pay_key), journal.refund(refund_key)
        journal.close()
        return report, entry and entry.status, journaled and journaled.status

    report, entry_status, refund_status = asyncio.run(scenario())
    [payment] = report.payments
    [refund] = report.refunds
    assert (payment.before, payment.after, payment.resolved) == ("INTENT", "SENT", False)
    assert (refund.before, refund.after, refund.resolved) == ("INTENT", "SENT", False)
    assert (entry_status, refund_status) == ("SENT", "SENT")


def test_concurrent_calls_whose_session_ended_log_in_once(
    gateway: Gateway, tmp_path: Path, proxy: Proxy
) -> None:
    creds = gateway.new_terminal()
    config = make_config(gateway, creds, tmp_path / "journal.db", url=proxy.url, key="RELOG-3")
    codes = gateway.codes("success", count=6)

    async def scenario() -> list[object]:
        async with AsyncTerminal(config) as terminal:
            await terminal.login()
            gateway.kessai("admin", "terminal", "logout", creds.mid)  # the session ends
            found = await asyncio.gather(
                *(terminal.pay(2604, code) for code in codes), return_exceptions=True
            )
            return [getattr(item, "status", type(item).__name__) for item in found]

    assert asyncio.run(scenario()) == [PaymentStatus.COMPLETED] * len(codes)
    assert logins(proxy) == 2  # the first LOGIN, and one when the session ended
    gateway.expect_charges(2604, *[("SUCCEEDED", 0)] * len(codes))


def test_a_session_another_process_opened_is_used_not_replaced(
    gateway: Gateway, tmp_path: Path, proxy: Proxy
) -> None:
    creds = gateway.new_terminal()
    config = make_config(gateway, creds, tmp_path / "journal.db", url=proxy.url, key="RELOG-4")
    code = gateway.code("success")

    async def scenario() -> str:
        async with AsyncTerminal(config) as first, AsyncTerminal(config) as second:
            await first.login()
            await second.login()  # the register's other process: it ends the first session
            paid = await first.pay(2605, code)  # takes the journal's newer session
            assert (await second.paycheck(paid.trans_id)).is_paid  # which is still alive
            return paid.trans_id

    trans_id = asyncio.run(scenario())
    assert logins(proxy) == 2
    gateway.expect(trans_id, "SUCCEEDED")
