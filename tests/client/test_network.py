"""Network faults between the terminal and the gateway: retries with the same transKey.

A local proxy cuts connections (before forwarding, or after the gateway answered), delays
answers past the client's timeout, and answers 503/429 as a load balancer would. Whatever it
does, one sale is at most one charge in the wallets' own ledger.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from kessai.client import (
    AsyncTerminal,
    ConnectError,
    Journal,
    JournalError,
    OutcomeUnknown,
    PaymentStatus,
    RetryPolicy,
    Session,
    Terminal,
    TerminalConfig,
)

from .conftest import Credentials, Gateway, free_port, make_config
from .proxy import Proxy

pytestmark = pytest.mark.e2e


def via(
    proxy: Proxy, gateway: Gateway, creds: Credentials, tmp_path: Path, **changes: object
) -> TerminalConfig:
    return make_config(gateway, creds, tmp_path / "journal.db", url=proxy.url, **changes)


def test_cut_after_the_gateway_charged_is_retried_as_one_payment(
    gateway: Gateway, shared: Credentials, proxy: Proxy, tmp_path: Path
) -> None:
    proxy.add("POST", "/v1/payments", "cut_after")
    with Terminal(via(proxy, gateway, shared, tmp_path)) as terminal:
        payment = terminal.pay(3101, gateway.code("success"))
        entry = terminal.journal.entry(payment.trans_key)
    assert payment.status is PaymentStatus.COMPLETED
    assert payment.replayed  # the gateway answered the retry from its first result
    assert proxy.log.count("cut_after POST /v1/payments") == 1
    assert entry is not None and entry.attempts == 2 and entry.status == "COMPLETED"
    gateway.expect(payment.trans_id, "SUCCEEDED")
    gateway.expect_charges(3101, ("SUCCEEDED", 0))


def test_cut_before_forwarding_and_injected_503_are_retried(
    gateway: Gateway, shared: Credentials, proxy: Proxy, tmp_path: Path
) -> None:
    proxy.add("POST", "/v1/payments", "cut_before")
    proxy.add("POST", "/v1/payments", "status:503")
    proxy.add("GET", "/v1/payments", "status:429")
    with Terminal(via(proxy, gateway, shared, tmp_path)) as terminal:
        payment = terminal.pay(3102, gateway.code("success"))
        assert terminal.status(payment.trans_key).is_paid
        entry = terminal.journal.entry(payment.trans_key)
    assert payment.status is PaymentStatus.COMPLETED and not payment.replayed
    assert entry is not None and entry.attempts == 3
    assert [line.split()[0] for line in proxy.log if "/v1/payments" in line] == [
        "cut_before",
        "status:503",
        "pass",
        "status:429",
        "pass",
    ]
    gateway.expect_charges(3102, ("SUCCEEDED", 0))


def test_a_late_answer_times_out_and_the_retry_gets_the_same_payment(
    gateway: Gateway, shared: Credentials, proxy: Proxy, tmp_path: Path
) -> None:
    proxy.add("POST", "/v1/payments", "delay:1.5")
    config = via(proxy, gateway, shared, tmp_path, timeout_s=0.7)
    with Terminal(config) as terminal:
        payment = terminal.pay(3103, gateway.code("success"))
    assert payment.status is PaymentStatus.COMPLETED and payment.replayed
    gateway.expect_charges(3103, ("SUCCEEDED", 0))


def test_when_every_retry_is_cut_the_outcome_is_unknown_then_recovered(
    gateway: Gateway, shared: Credentials, proxy: Proxy, tmp_path: Path
) -> None:
    proxy.add("POST", "/v1/payments", "cut_after", times=10)
    config = via(proxy, gateway, shared, tmp_path)
    with Terminal(config) as terminal:
        with pytest.raises(OutcomeUnknown) as caught:
            terminal.pay(3104, gateway.code("success"))
        key = caught.value.trans_key
        assert key is not None and caught.value.retryable
        entry = terminal.journal.entry(key)
        # Sent, charged, and never reported as declined: the journal says "unknown".
        assert entry is not None and entry.status == "SENT"
        assert entry.attempts == config.retry.max_attempts
    # The network is back (straight to the gateway): recovery learns the truth by STATUS.
    with Terminal(config.with_overrides(base_url=gateway.url)) as terminal:
        report = terminal.recover()
        entry = terminal.journal.entry(key)
    [item] = report.payments
    assert (item.before, item.after, item.resolved) == ("SENT", "COMPLETED", True)
    assert entry is not None and entry.status == "COMPLETED" and entry.trans_id
    gateway.expect(entry.trans_id, "SUCCEEDED")
    gateway.expect_charges(3104, ("SUCCEEDED", 0))


def test_a_request_that_never_arrived_is_not_received_only_after_the_grace(
    gateway: Gateway, shared: Credentials, proxy: Proxy, tmp_path: Path
) -> None:
    proxy.add("POST", "/v1/payments", "cut_before", times=10)
    config = via(proxy, gateway, shared, tmp_path)
    with Terminal(config) as terminal:
        with pytest.raises(OutcomeUnknown) as caught:
            terminal.pay(3105, gateway.code("success"))
        key = caught.value.trans_key
        assert key is not None
        # Not at the gateway, but within the grace it might still arrive: stays unresolved.
        [item] = terminal.recover().payments
        assert (item.after, item.resolved) == ("SENT", False)
    with Terminal(config.with_overrides(not_found_grace_s=0.0)) as terminal:
        [item] = terminal.recover().payments
        assert (item.after, item.resolved) == ("NOT_RECEIVED", True)
    gateway.expect_charges(3105)


def test_no_gateway_at_all_is_a_connect_error_and_nothing_charged(
    gateway: Gateway, shared: Credentials, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    config = make_config(
        gateway,
        shared,
        tmp_path / "journal.db",
        url=nowhere,
        retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02),
    )
    # A session kept from earlier, so that the payment itself is what cannot connect.
    with Journal(config.journal) as journal:
        journal.save_session(nowhere, shared.mid, "TEST-REGISTER-1", Session("kept-token", None))
    with Terminal(config) as terminal:
        with pytest.raises(ConnectError) as caught:
            terminal.pay(3106, gateway.code("success"))
        assert caught.value.retryable
        [entry] = terminal.journal.entries()
    # Every attempt failed to connect: the request never left, so the sale is definitely unpaid.
    assert (entry.status, entry.attempts, entry.error_code) == ("NOT_SENT", 2, "ConnectError")
    gateway.expect_charges(3106)


def test_refund_cut_after_refunds_once(
    gateway: Gateway, shared: Credentials, proxy: Proxy, tmp_path: Path
) -> None:
    proxy.add("POST", "/v1/payments/", "cut_after")  # the refund (CANCEL) route
    with Terminal(via(proxy, gateway, shared, tmp_path)) as terminal:
        paid = terminal.pay(3107, gateway.code("success"))
        refunded = terminal.refund(paid.trans_id, 1000)
        [journaled] = terminal.journal.refunds(trans_id=paid.trans_id)
    assert any(line.startswith("cut_after POST /v1/payments/") for line in proxy.log)
    assert refunded.refunded_amount == 1000 and refunded.replayed
    assert (journaled.status, journaled.attempts) == ("SUCCEEDED", 2)
    gateway.expect_charges(3107, ("SUCCEEDED", 1000))


def test_async_retry_after_a_cut_is_one_payment(
    gateway: Gateway, shared: Credentials, proxy: Proxy, tmp_path: Path
) -> None:
    proxy.add("POST", "/v1/payments", "cut_after")
    proxy.add("POST", "/v1/qr-codes", "cut_after")
    config = via(proxy, gateway, shared, tmp_path)
    code = gateway.code("success")

    async def scenario() -> tuple[str, bool, str, bool]:
        # An injected client: the transport seam (no keep-alive, so every request is seen fresh).
        client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0), timeout=5)
        async with client, AsyncTerminal(config, client=client) as terminal:
            payment = await terminal.pay(3108, code)
            shown = await terminal.qr_code(3108, "01")
            return payment.trans_id, payment.replayed, shown.trans_key, shown.replayed

    trans_id, replayed, _qr_key, qr_replayed = asyncio.run(scenario())
    assert replayed and qr_replayed
    gateway.expect(trans_id, "SUCCEEDED")
    gateway.expect_charges(3108, ("SUCCEEDED", 0), ("WAITING", 0))


def _garbled(response: httpx.Response, request: httpx.Request) -> httpx.Response:
    """The gateway's answer with a body that cannot be decoded (a broken gzip stream)."""
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    return httpx.Response(
        response.status_code, headers=headers, content=b"garbled", request=request
    )


def _is_create(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path == "/v1/payments"


class GarbledCreate(httpx.BaseTransport):
    """Forwards to the gateway; every answer to REQUEST arrives garbled."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not _is_create(request):
            return response
        response.read()
        return _garbled(response, request)

    def close(self) -> None:
        self.inner.close()


class AsyncGarbledCreate(httpx.AsyncBaseTransport):
    """``GarbledCreate`` for ``AsyncTerminal``."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not _is_create(request):
            return response
        await response.aread()
        return _garbled(response, request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_an_answer_that_cannot_be_decoded_is_unknown_not_an_httpx_error(
    gateway: Gateway, shared: Credentials, tmp_path: Path
) -> None:
    config = make_config(gateway, shared, tmp_path / "journal.db")
    with Terminal(config, transport=GarbledCreate()) as terminal:
        with pytest.raises(OutcomeUnknown) as caught:
            terminal.pay(3109, gateway.code("success"))
        key = caught.value.trans_key
        assert key is not None
        entry = terminal.journal.entry(key)
        assert entry is not None and entry.status == "SENT"
        assert entry.attempts == config.retry.max_attempts  # retried with the same transKey
        assert terminal.status(key).is_paid
    gateway.expect_charges(3109, ("SUCCEEDED", 0))


def test_async_an_answer_that_cannot_be_decoded_is_unknown(
    gateway: Gateway, shared: Credentials, tmp_path: Path
) -> None:
    config = make_config(gateway, shared, tmp_path / "journal.db")
    code = gateway.code("success")

    async def scenario() -> tuple[str | None, bool]:
        async with AsyncTerminal(config, transport=AsyncGarbledCreate()) as terminal:
            with pytest.raises(OutcomeUnknown) as caught:
                await terminal.pay(3110, code)
            key = caught.value.trans_key
            assert key is not None
            return key, (await terminal.status(key)).is_paid

    key, paid = asyncio.run(scenario())
    assert key is not None and paid
    gateway.expect_charges(3110, ("SUCCEEDED", 0))


class JournalFailsOnRetry(Journal):
    """A journal that cannot be written when a request is marked "may be sent" a second time."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.marks = 0

    def _fail_after_first(self) -> None:
        self.marks += 1
        if self.marks > 1:
            raise JournalError(f"cannot write the journal {self.path}: database is locked")

    def mark_sent(self, trans_key: str) -> None:
        self._fail_after_first()
        super().mark_sent(trans_key)

    def mark_refund_sent(self, refund_key: str) -> None:
        self._fail_after_first()
        super().mark_refund_sent(refund_key)


def test_a_journal_failure_after_a_request_may_have_left_is_unknown(
    gateway: Gateway, shared: Credentials, proxy: Proxy, tmp_path: Path
) -> None:
    proxy.add("POST", "/v1/payments", "cut_after")  # the first attempt charges; its answer is lost
    config = via(proxy, gateway, shared, tmp_path)
    journal = JournalFailsOnRetry(tmp_path / "journal.db")
    with Terminal(config, journal=journal) as terminal:
        with pytest.raises(OutcomeUnknown) as caught:
            terminal.pay(3111, gateway.code("success"))
        key = caught.value.trans_key
        assert key is not None and "journal" in caught.value.message
        entry = journal.entry(key)
        assert entry is not None and (entry.status, entry.attempts) == ("SENT", 1)
        journal.marks = -100  # writable again for a payment to refund
        paid = terminal.pay(3112, gateway.code("success"))
        journal.marks = 0
        proxy.add("POST", "/v1/payments/", "cut_after")  # the refund's answer is lost
        with pytest.raises(OutcomeUnknown) as refund_lost:
            terminal.refund(paid.trans_id, 100)
        assert refund_lost.value.refund_key is not None
        assert refund_lost.value.trans_id == paid.trans_id
        [refund] = journal.refunds(trans_id=paid.trans_id)
        assert refund.status == "SENT"
        report = terminal.recover()  # settles both from the gateway's word
    assert [item.after for item in report.payments] == ["COMPLETED"]
    assert [(item.after, item.amount) for item in report.refunds] == [("SUCCEEDED", 100)]
    journal.close()
    gateway.expect_charges(3111, ("SUCCEEDED", 0))
    gateway.expect_charges(3112, ("SUCCEEDED", 100))


def test_async_a_journal_failure_after_a_request_may_have_left_is_unknown(
    gateway: Gateway, shared: Credentials, proxy: Proxy, tmp_path: Path
) -> None:
    proxy.add("POST", "/v1/payments", "cut_after")
    config = via(proxy, gateway, shared, tmp_path)
    journal = JournalFailsOnRetry(tmp_path / "journal.db")
    code = gateway.code("success")

    async def scenario() -> str | None:
        async with AsyncTerminal(config, journal=journal) as terminal:
            with pytest.raises(OutcomeUnknown) as caught:
                await terminal.pay(3113, code)
            return caught.value.trans_key

    key = asyncio.run(scenario())
    assert key is not None
    entry = journal.entry(key)
    assert entry is not None and entry.status == "SENT"
    journal.close()
    gateway.expect_charges(3113, ("SUCCEEDED", 0))
