"""The synchronous Terminal against a real gateway: every method and every sandbox outcome."""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kessai.client import (
    IdempotencyConflict,
    InvalidRequest,
    InvalidState,
    Journal,
    JournalEntry,
    JournalRefund,
    LoginRefused,
    PaymentKind,
    PaymentNotFound,
    PaymentStatus,
    PendingReason,
    RefundStatus,
    Terminal,
    TerminalConfig,
    TerminalError,
    TerminalInUse,
    UnprocessableCode,
    WrongPassCode,
    new_trans_key,
)

from .conftest import Credentials, Gateway, make_config
from .proxy import Proxy

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("outcome", "first", "final", "failure"),
    [
        ("success", PaymentStatus.COMPLETED, PaymentStatus.COMPLETED, None),
        ("declined", PaymentStatus.FAILED, PaymentStatus.FAILED, "DECLINED"),
        ("error", PaymentStatus.FAILED, PaymentStatus.FAILED, "PROVIDER_ERROR"),
        ("timeout-success", PaymentStatus.PENDING, PaymentStatus.COMPLETED, None),
        ("timeout-failure", PaymentStatus.PENDING, PaymentStatus.FAILED, "DECLINED"),
    ],
)
def test_pay_each_outcome(
    gateway: Gateway,
    config: TerminalConfig,
    outcome: str,
    first: PaymentStatus,
    final: PaymentStatus,
    failure: str | None,
) -> None:
    with Terminal(config) as terminal:
        payment = terminal.pay(1200, gateway.code(outcome))
        assert payment.status is first
        assert payment.amount == 1200 and payment.kind is PaymentKind.CUSTOMER_CODE
        if first is PaymentStatus.PENDING:
            # The wallet's answer was lost: unknown, never "declined".
            assert payment.pending_reason is PendingReason.OUTCOME_UNKNOWN
            entry = terminal.journal.entry(payment.trans_key)
            assert entry is not None and entry.status == "PENDING" and not entry.is_resolved
            payment = terminal.wait(payment.trans_id, 10)
        assert payment.status is final
        assert payment.failure_code == failure
        entry = terminal.journal.entry(payment.trans_key)
    assert entry is not None
    assert entry.status == final.value and entry.trans_id == payment.trans_id
    assert entry.is_resolved and entry.service_id == "01"
    assert entry.code_masked is not None and "*" in entry.code_masked
    gateway.expect(payment.trans_id, "SUCCEEDED" if final is PaymentStatus.COMPLETED else "FAILED")


def test_pay_password_waits_for_the_customer(gateway: Gateway, config: TerminalConfig) -> None:
    updates: list[PendingReason | None] = []
    with Terminal(config) as terminal:
        payment = terminal.pay(800, gateway.code("password", "21"))
        assert payment.status is PaymentStatus.PENDING
        assert payment.pending_reason is PendingReason.WAITING_FOR_CUSTOMER
        # The customer confirms in the app while the terminal polls.
        approver = threading.Timer(0.5, gateway.settle, (payment.trans_id, True))
        approver.start()
        try:
            final = terminal.wait(
                payment.trans_id, 15, on_update=lambda p: updates.append(p.pending_reason)
            )
        finally:
            approver.join()
    assert final.status is PaymentStatus.COMPLETED
    assert PendingReason.WAITING_FOR_CUSTOMER in updates and updates[-1] is None


def test_pay_password_declined_by_the_customer(gateway: Gateway, config: TerminalConfig) -> None:
    with Terminal(config) as terminal:
        payment = terminal.pay(800, gateway.code("password"))
        gateway.settle(payment.trans_id, False)
        final = terminal.wait(payment.trans_id, 10)
        assert final.status is PaymentStatus.FAILED
        assert final.failure_code == "CUSTOMER_DECLINED"
        entry = terminal.journal.entry(payment.trans_key)
    assert entry is not None and entry.status == "FAILED"


def test_wait_gives_up_at_its_timeout_with_the_payment_still_pending(
    gateway: Gateway, config: TerminalConfig
) -> None:
    with Terminal(config) as terminal:
        payment = terminal.pay(300, gateway.code("password"))
        started = time.monotonic()
        still = terminal.wait(payment.trans_id, 0.6)
        assert 0.5 <= time.monotonic() - started < 3
        assert still.status is PaymentStatus.PENDING


def test_paycheck_status_and_voucher(gateway: Gateway, config: TerminalConfig) -> None:
    with Terminal(config) as terminal:
        paid = terminal.pay(1500, gateway.code("success"), service_id="01")
        by_id = terminal.paycheck(paid.trans_id)
        by_key = terminal.status(paid.trans_key)
        assert by_id.trans_key == by_key.trans_key == paid.trans_key
        assert by_key.status is PaymentStatus.COMPLETED
        with_voucher = terminal.voucher(paid.trans_id, "SLIP-0042")
        assert with_voucher.voucher_no == "SLIP-0042"
        assert terminal.journal.entry(paid.trans_key).voucher_no == "SLIP-0042"  # type: ignore[union-attr]
        with pytest.raises(PaymentNotFound):
            terminal.status("NOSUCHKEY")
        with pytest.raises(PaymentNotFound):
            terminal.paycheck("0000000001")
        declined = terminal.pay(100, gateway.code("declined"))
        with pytest.raises(InvalidState) as caught:
            terminal.voucher(declined.trans_id, "SLIP-1")
        assert caught.value.code == "PAYMENT_NOT_EDITABLE" and not caught.value.retryable


def test_refunds_partial_then_the_rest(gateway: Gateway, config: TerminalConfig) -> None:
    with Terminal(config) as terminal:
        paid = terminal.pay(1000, gateway.code("success"))
        partial = terminal.refund(paid.trans_id, 300)
        assert partial.status is PaymentStatus.PARTIALLY_REFUNDED
        assert partial.refunded_amount == 300
        rest = terminal.refund(paid.trans_id)  # no amount: all that remains
        assert rest.status is PaymentStatus.REFUNDED and rest.refunded_amount == 1000
        with pytest.raises(InvalidState) as caught:
            terminal.refund(paid.trans_id, 1)
        assert caught.value.code == "PAYMENT_NOT_REFUNDABLE"
        refunds = terminal.journal.refunds(trans_id=paid.trans_id)
        entry = terminal.journal.entry(paid.trans_key)
    assert sorted((r.amount, r.status) for r in refunds if r.status != "REJECTED") == [
        (300, "SUCCEEDED"),
        (700, "SUCCEEDED"),
    ]
    assert [r.error_code for r in refunds if r.status == "REJECTED"] == ["PAYMENT_NOT_REFUNDABLE"]
    assert entry is not None and entry.status == "REFUNDED" and entry.refunded_amount == 1000
    gateway.expect(paid.trans_id, "SUCCEEDED", 1000)


def test_refund_is_idempotent_under_its_refund_key(
    gateway: Gateway, config: TerminalConfig
) -> None:
    with Terminal(config) as terminal:
        paid = terminal.pay(1000, gateway.code("success"))
        first = terminal.refund(paid.trans_id, 400, refund_key="REFUNDKEY1")
        again = terminal.refund(paid.trans_id, 400, refund_key="REFUNDKEY1")
        assert first.refunded_amount == again.refunded_amount == 400
        assert again.replayed
        with pytest.raises(IdempotencyConflict):
            terminal.refund(paid.trans_id, 500, refund_key="REFUNDKEY1")
    gateway.expect(paid.trans_id, "SUCCEEDED", 400)


def test_refund_with_a_wrong_passcode(gateway: Gateway, config: TerminalConfig) -> None:
    wrong = "0000" if config.pass_code != "0000" else "1111"
    with Terminal(config) as terminal:
        paid = terminal.pay(500, gateway.code("success"))
        with pytest.raises(WrongPassCode) as caught:
            terminal.refund(paid.trans_id, pass_code=wrong)
        assert caught.value.status_code == 403 and caught.value.field == "passCode"
        assert terminal.paycheck(paid.trans_id).refunded_amount == 0
        [refund] = terminal.journal.refunds(trans_id=paid.trans_id)
        assert refund.status == "REJECTED" and refund.error_code == "WRONG_PASSCODE"
        # The right one (configured) still works: one wrong passCode does not lock.
        assert terminal.refund(paid.trans_id).status is PaymentStatus.REFUNDED


def test_qr_code_paid_declined_and_expired(gateway: Gateway, config: TerminalConfig) -> None:
    with Terminal(config) as terminal:
        shown = terminal.qr_code(700, "01")
        assert shown.status is PaymentStatus.PENDING and shown.kind is PaymentKind.MERCHANT_QR
        assert shown.pending_reason is PendingReason.WAITING_FOR_CUSTOMER
        assert shown.qr_data and shown.qr_expires_at and shown.qr_image
        assert terminal.journal.entry(shown.trans_key).qr_data == shown.qr_data  # type: ignore[union-attr]
        gateway.customer_decides(shown.qr_data, "approve")
        assert terminal.wait(shown.trans_id, 10).status is PaymentStatus.COMPLETED

        refused = terminal.qr_code(700, "03")
        assert refused.qr_data
        gateway.customer_decides(refused.qr_data, "decline")
        assert terminal.wait(refused.trans_id, 10).status is PaymentStatus.FAILED

        short = terminal.qr_code(700, "01", ttl_seconds=2)
        expired = terminal.wait(short.trans_id, 10)
        assert expired.status is PaymentStatus.EXPIRED and expired.failure_code == "QR_EXPIRED"
        statuses = {
            e.trans_key: e.status for e in terminal.journal.entries(kind=PaymentKind.MERCHANT_QR)
        }
    assert statuses == {
        shown.trans_key: "COMPLETED",
        refused.trans_key: "FAILED",
        short.trans_key: "EXPIRED",
    }


def test_identify(gateway: Gateway, config: TerminalConfig) -> None:
    with Terminal(config) as terminal:
        found = terminal.identify(gateway.code("success", "04"))
        assert (found.service_id, found.service_name_en) == ("04", "Rakuten Pay")
        with pytest.raises(UnprocessableCode) as caught:
            terminal.identify("4901234567894")  # a JAN product barcode
        assert caught.value.code == "NOT_A_PAYMENT_CODE"


def test_declined_inputs_are_journaled_as_rejected(
    gateway: Gateway, config: TerminalConfig
) -> None:
    with Terminal(config) as terminal:
        with pytest.raises(InvalidRequest) as caught:
            terminal.pay(100, gateway.code("success", "01"), service_id="03")
        assert caught.value.code == "SERVICE_MISMATCH" and caught.value.request_id
        with pytest.raises(UnprocessableCode):
            terminal.pay(100, "4901234567894")
        [mismatch, barcode] = sorted(terminal.journal.entries(), key=lambda e: e.created_at)
    assert (mismatch.status, mismatch.error_code) == ("REJECTED", "SERVICE_MISMATCH")
    assert (barcode.status, barcode.error_code) == ("REJECTED", "NOT_A_PAYMENT_CODE")


def test_bad_input_is_refused_before_anything_is_journaled(config: TerminalConfig) -> None:
    with Terminal(config) as terminal:
        for amount in (0, 10_000_000, True, 12.5):
            with pytest.raises(InvalidRequest):
                terminal.pay(amount, "123456789012345678")  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest):
            terminal.pay(100, "")
        with pytest.raises(InvalidRequest):
            terminal.refund("12345", 100)
        with pytest.raises(InvalidRequest):
            terminal.voucher("1234567890", "no spaces allowed")
        assert terminal.journal.entries() == []


def test_the_same_trans_key_is_one_payment(gateway: Gateway, config: TerminalConfig) -> None:
    code = gateway.code("success")
    with Terminal(config) as terminal:
        first = terminal.pay(900, code, trans_key="SALE20260101A")
        again = terminal.pay(900, code, trans_key="SALE20260101A")
        assert again.trans_id == first.trans_id and again.replayed
        with pytest.raises(IdempotencyConflict):
            terminal.pay(901, code, trans_key="SALE20260101A")  # refused by the journal itself
    gateway.expect(first.trans_id, "SUCCEEDED")


def test_logs_in_once_and_again_when_the_session_ends(
    gateway: Gateway, shared: Credentials, tmp_path: Path
) -> None:
    config = make_config(gateway, shared, tmp_path / "journal.db")
    with Terminal(config) as terminal:
        assert not terminal.logged_in
        terminal.pay(100, gateway.code("success"))
        assert terminal.logged_in
        kept = terminal.journal.load_session(gateway.url, shared.mid, "TEST-REGISTER-1")
        assert kept is not None
    # A restart reuses the journaled session: no new LOGIN.
    with Terminal(config) as terminal:
        assert terminal.logged_in
        terminal.pay(100, gateway.code("success"))
        same = terminal.journal.load_session(gateway.url, shared.mid, "TEST-REGISTER-1")
        assert same is not None and same.token == kept.token
        # An administrator ends the session: the next call logs in again by itself.
        gateway.kessai("admin", "terminal", "logout", shared.mid)
        assert terminal.pay(100, gateway.code("success")).status is PaymentStatus.COMPLETED
        renewed = terminal.journal.load_session(gateway.url, shared.mid, "TEST-REGISTER-1")
        assert renewed is not None and renewed.token != kept.token
        terminal.logout()
        assert not terminal.logged_in
        assert terminal.journal.load_session(gateway.url, shared.mid, "TEST-REGISTER-1") is None
        terminal.logout()  # twice is fine
        assert terminal.status(terminal.journal.entries()[0].trans_key).is_paid  # logs in again


def test_one_device_per_mid_and_wrong_password(gateway: Gateway, tmp_path: Path) -> None:
    creds = gateway.new_terminal()
    first = Terminal(make_config(gateway, creds, tmp_path / "a.db", key="REGISTER-A"))
    second = Terminal(make_config(gateway, creds, tmp_path / "b.db", key="REGISTER-B"))
    with first, second:
        first.login()
        with pytest.raises(TerminalInUse):
            second.login()
        first.logout()
        second.login()
    wrong = Credentials(creds.mid, "A" * 12, creds.pass_code, creds.os)
    with Terminal(make_config(gateway, wrong, tmp_path / "c.db")) as terminal:
        with pytest.raises(LoginRefused) as caught:
            terminal.pay(100, gateway.code("success"))
        assert caught.value.code == "WRONG_CREDENTIALS"
        assert terminal.journal.entries() == []  # nothing journaled: LOGIN came first


def test_journal_is_owner_only_and_survives_reopening(
    config: TerminalConfig, gateway: Gateway
) -> None:
    with Terminal(config) as terminal:
        paid = terminal.pay(100, gateway.code("success"))
    path = config.journal
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Journal(path) as journal:
        entry = journal.entry(paid.trans_key)
        assert entry is not None and entry.status == "COMPLETED"
        assert journal.entry_by_trans_id(paid.trans_id) == entry


def test_recover_on_demand_resolves_pending_payments(
    gateway: Gateway, config: TerminalConfig
) -> None:
    with Terminal(config) as terminal:
        unknown = terminal.pay(600, gateway.code("timeout-success"))
        waiting = terminal.pay(600, gateway.code("password"))
        report = terminal.recover()
        assert {p.trans_key for p in report.payments} == {unknown.trans_key, waiting.trans_key}
        gateway.settle(waiting.trans_id, True)
        report = terminal.recover(wait_s=5)
        assert report.all_resolved, report
        assert {p.after for p in report.payments} == {"COMPLETED"}
        assert terminal.recover().payments == ()


def test_start_up_recovery_runs_before_the_first_call(
    gateway: Gateway, config: TerminalConfig
) -> None:
    with Terminal(config) as terminal:
        unknown = terminal.pay(600, gateway.code("timeout-failure"))
    time.sleep(1.2)  # the wallet's answer surfaces after 1 s
    with Terminal(config) as terminal:
        terminal.identify(gateway.code("success"))
        entry = terminal.journal.entry(unknown.trans_key)
    assert entry is not None and entry.status == "FAILED"


def test_refund_answer_updates_the_journal_refund(gateway: Gateway, config: TerminalConfig) -> None:
    with Terminal(config) as terminal:
        paid = terminal.pay(2000, gateway.code("success"))
        after = terminal.refund(paid.trans_id, 500, refund_key="RK500")
        refund = after.refund_by_key("RK500")
        assert refund is not None and refund.status is RefundStatus.SUCCEEDED
        journaled = terminal.journal.refund("RK500")
    assert journaled is not None and journaled.status == "SUCCEEDED" and journaled.amount == 500


class RacingJournal(Journal):
    """A journal another process writes to just after recovery has read its unresolved entries."""

    def __init__(self, path: Path, meanwhile: Callable[[str], None]) -> None:
        super().__init__(path)
        self.meanwhile = meanwhile

    def entries(self, **filters: Any) -> list[JournalEntry]:
        found = super().entries(**filters)
        if filters.get("unresolved"):
            self.meanwhile("payment")
        return found

    def refunds(self, **filters: Any) -> list[JournalRefund]:
        found = super().refunds(**filters)
        if filters.get("unresolved"):
            self.meanwhile("refund")
        return found


def start_racing(
    journal_path: Path, mid: str, trans_id: str
) -> tuple[str, str, Callable[[str], None]]:
    """Journal, as a register would, a payment and a refund about to be sent.

    Answers their keys and what the register does while recovery in another process looks:
    it marks each "may be sent" (its request is on its way, not yet at the gateway).
    """
    pay_key, refund_key = new_trans_key(), new_trans_key()
    with Journal(journal_path) as register:
        register.record_intent(
            trans_key=pay_key,
            mid=mid,
            kind=PaymentKind.CUSTOMER_CODE,
            amount=2500,
            service_id=None,
            code_masked=None,
        )
        register.record_refund_intent(refund_key=refund_key, mid=mid, trans_id=trans_id, amount=1)

    def meanwhile(what: str) -> None:
        with Journal(journal_path) as register:
            if what == "payment":
                register.mark_sent(pay_key)
            else:
                register.mark_refund_sent(refund_key)

    return pay_key, refund_key, meanwhile


def test_recovery_keeps_a_request_another_process_sent_meanwhile(
    gateway: Gateway, config: TerminalConfig
) -> None:
    with Terminal(config) as terminal:
        paid = terminal.pay(2501, gateway.code("success"))
    pay_key, refund_key, meanwhile = start_racing(config.journal, config.mid, paid.trans_id)
    journal = RacingJournal(config.journal, meanwhile)
    # Recovery reads INTENT for both, then the register sends them; the gateway has neither yet.
    with Terminal(config, journal=journal, recover_on_start=False) as terminal:
        report = terminal.recover()
    [payment] = report.payments
    [refund] = report.refunds
    assert (payment.before, payment.after, payment.resolved) == ("INTENT", "SENT", False)
    assert (refund.before, refund.after, refund.resolved) == ("INTENT", "SENT", False)
    entry, journaled = journal.entry(pay_key), journal.refund(refund_key)
    journal.close()
    # Still unresolved: the next recover() asks again, instead of "never sent, not charged".
    assert entry is not None and entry.status == "SENT"
    assert journaled is not None and journaled.status == "SENT"


def logins(proxy: Proxy) -> int:
    return sum(1 for line in proxy.log if "POST /v1/login" in line)


def test_concurrent_calls_whose_session_ended_log_in_once(
    gateway: Gateway, tmp_path: Path, proxy: Proxy
) -> None:
    creds = gateway.new_terminal()
    config = make_config(gateway, creds, tmp_path / "journal.db", url=proxy.url, key="RELOG-1")
    codes = gateway.codes("success", count=6)
    with Terminal(config) as terminal:
        terminal.login()
        gateway.kessai("admin", "terminal", "logout", creds.mid)  # the session ends
        start = threading.Barrier(len(codes))

        def sale(code: str) -> PaymentStatus | str:
            start.wait()
            try:
                return terminal.pay(2601, code).status
            except TerminalError as exc:
                return type(exc).__name__

        with ThreadPoolExecutor(len(codes)) as pool:
            outcomes = list(pool.map(sale, codes))
    assert outcomes == [PaymentStatus.COMPLETED] * len(codes)
    assert logins(proxy) == 2  # the first LOGIN, and one when the session ended
    gateway.expect_charges(2601, *[("SUCCEEDED", 0)] * len(codes))


def test_a_session_another_process_opened_is_used_not_replaced(
    gateway: Gateway, tmp_path: Path, proxy: Proxy
) -> None:
    creds = gateway.new_terminal()
    config = make_config(gateway, creds, tmp_path / "journal.db", url=proxy.url, key="RELOG-2")
    with Terminal(config) as first, Terminal(config) as second:
        first.login()
        second.login()  # the register's other process: its LOGIN ends the first session
        paid = first.pay(2602, gateway.code("success"))  # takes the journal's newer session
        assert second.paycheck(paid.trans_id).is_paid  # which is still alive
    assert logins(proxy) == 2
    gateway.expect(paid.trans_id, "SUCCEEDED")
