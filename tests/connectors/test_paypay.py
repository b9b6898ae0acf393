"""The PayPay connector against the PayPay contract fake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from kessai.connectors.base import (
    FlowNotSupported,
    NotificationRejected,
    PayRequest,
    ProviderOutcome,
    QrRequest,
)
from kessai.connectors.paypay import PayPayClient, PayPayConnector

from .conftest import run
from .fakes.paypay import (
    ERROR_AMOUNT,
    SLOW_AMOUNT,
    THROTTLED_AMOUNT,
    TRUNCATED_AMOUNT,
    PayPayFake,
)
from .fakes.server import FakeServer, Served

Out = ProviderOutcome


def connector(
    http: httpx.AsyncClient,
    server: Served,
    *,
    secret: str = "APIKeySecretGenerated",
    merchant: str = "MERCHANT_1",
    code_ids: dict[str, str] | None = None,
    clock_skew: float = 0.0,
) -> PayPayConnector:
    known = code_ids if code_ids is not None else {}

    async def lookup(ref: str) -> str | None:
        return known.get(ref)

    client = PayPayClient(
        http,
        base_url=server.base_url,
        api_key="APIKeyGenerated",
        api_secret=secret,
        merchant_id=merchant,
        clock=lambda: datetime.now(UTC) + timedelta(seconds=clock_skew),
    )
    return PayPayConnector(client, code_ids=lookup, timeout_cap_seconds=0.5)


def qr(ref: str, amount: int = 1200) -> QrRequest:
    return QrRequest(
        ref=ref,
        service_id="01",
        amount=amount,
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        merchant_name="Kessai Café",
    )


def test_qr_payment_created_paid_refunded(paypay_fake: tuple[PayPayFake, FakeServer]) -> None:
    fake, server = paypay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            ids: dict[str, str] = {}
            pp = connector(http, server, code_ids=ids)
            created = await pp.create_qr(qr("1000000001"))
            assert created.outcome is Out.WAITING_FOR_CUSTOMER
            assert created.qr_data is not None and created.qr_data.startswith("https://qr-stg.")
            assert created.provider_ref == fake.codes["1000000001"].code_id
            ids["1000000001"] = created.provider_ref
            assert (await pp.sync("1000000001")).outcome is Out.WAITING_FOR_CUSTOMER
            fake.customer_pays("1000000001")
            paid = await pp.sync("1000000001")
            assert paid.outcome is Out.SUCCEEDED
            # sync keeps provider_ref empty so the gateway keeps the codeId it stored.
            assert paid.provider_ref is None
            part = await pp.refund("1000000001", "R00000000001", 200)
            assert part.outcome is Out.SUCCEEDED
            again = await pp.refund("1000000001", "R00000000001", 200)
            assert again.outcome is Out.SUCCEEDED  # the same merchantRefundId: the first result
            assert (
                await pp.refund_sync("1000000001", "R00000000001", 200)
            ).outcome is Out.SUCCEEDED
            assert (await pp.refund_sync("1000000001", "R99999999999", 1)).outcome is Out.NOT_FOUND
            too_much = await pp.refund("1000000001", "R00000000002", 1001)
            assert too_much.outcome is Out.FAILED

    run(scenario())
    assert set(fake.verdicts()) == {"ok"}
    assert sum(1 for _, path, _ in fake.requests if path == "/v2/refunds") == 3


def test_a_repeated_create_returns_the_first_code(
    paypay_fake: tuple[PayPayFake, FakeServer],
) -> None:
    fake, server = paypay_fake

    async def scenario() -> tuple[str | None, str | None]:
        async with httpx.AsyncClient() as http:
            pp = connector(http, server)
            first = await pp.create_qr(qr("1000000002"))
            second = await pp.create_qr(qr("1000000002"))
            other = await pp.create_qr(qr("1000000002", amount=999))
            assert other.outcome is Out.UNKNOWN  # DUPLICATE_DYNAMIC_QR_REQUEST: never assumed
            return first.provider_ref, second.provider_ref

    first, second = run(scenario())
    assert first == second
    assert len(fake.codes) == 1


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        (SLOW_AMOUNT, Out.UNKNOWN),
        (ERROR_AMOUNT, Out.UNKNOWN),
        (THROTTLED_AMOUNT, Out.UNKNOWN),
        # The code exists at PayPay: an answer we cannot read is no refusal.
        (TRUNCATED_AMOUNT, Out.UNKNOWN),
    ],
    ids=["timeout", "server-error", "rate-limit", "truncated"],
)
def test_no_clear_answer_to_create_is_unknown(
    paypay_fake: tuple[PayPayFake, FakeServer], amount: int, expected: ProviderOutcome
) -> None:
    _, server = paypay_fake

    async def scenario() -> ProviderOutcome:
        async with httpx.AsyncClient() as http:
            return (await connector(http, server).create_qr(qr("1000000003", amount))).outcome

    assert run(scenario()) is expected


def test_a_timed_out_create_is_recovered_by_creating_again(
    paypay_fake: tuple[PayPayFake, FakeServer],
) -> None:
    fake, server = paypay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            pp = connector(http, server)
            lost = await pp.create_qr(qr("1000000004", SLOW_AMOUNT))
            assert lost.outcome is Out.UNKNOWN
            fake.slow_seconds = 0
            again = await pp.create_qr(qr("1000000004", SLOW_AMOUNT))
            assert again.outcome is Out.WAITING_FOR_CUSTOMER
            assert again.provider_ref == fake.codes["1000000004"].code_id

    run(scenario())


def test_a_wrong_signature_is_refused_as_paypay_refuses_it(
    paypay_fake: tuple[PayPayFake, FakeServer],
) -> None:
    fake, server = paypay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            wrong = connector(http, server, secret="not-the-secret")
            refused = await wrong.create_qr(qr("1000000005"))
            assert refused.outcome is Out.FAILED
            assert refused.failure_code == "PROVIDER_ERROR"
            assert "UNAUTHORIZED" in (refused.failure_message or "")
            skewed = connector(http, server, clock_skew=-600)
            assert (await skewed.create_qr(qr("1000000005"))).outcome is Out.FAILED
            other_merchant = connector(http, server, merchant="SOMEONE_ELSE")
            assert (await other_merchant.create_qr(qr("1000000005"))).outcome is Out.FAILED
            # A query with a wrong signature tells nothing about the payment.
            assert (await wrong.sync("1000000005")).outcome is Out.UNKNOWN

    run(scenario())
    assert fake.verdicts() == ["UNAUTHORIZED", "UNAUTHORIZED", "OP_OUT_OF_SCOPE", "UNAUTHORIZED"]
    assert fake.codes == {}


def test_cancel_deletes_an_unpaid_code_and_keeps_a_paid_one(
    paypay_fake: tuple[PayPayFake, FakeServer],
) -> None:
    fake, server = paypay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            ids: dict[str, str] = {}
            pp = connector(http, server, code_ids=ids)
            for ref in ("1000000006", "1000000007"):
                created = await pp.create_qr(qr(ref))
                assert created.provider_ref is not None
                ids[ref] = created.provider_ref
            assert (await pp.cancel("1000000006")).outcome is Out.CANCELED
            assert fake.codes["1000000006"].deleted
            with pytest.raises(RuntimeError):
                fake.customer_pays("1000000006")  # a deleted code cannot be paid any more
            assert (await pp.sync("1000000006")).outcome is Out.NOT_FOUND
            assert (await pp.cancel("1000000006")).outcome is Out.CANCELED  # idempotent
            fake.customer_pays("1000000007")
            assert (await pp.cancel("1000000007")).outcome is Out.SUCCEEDED  # paid in time

    run(scenario())


def test_cancel_without_the_code_id_waits_and_an_unreadable_state_cancels_the_payment(
    paypay_fake: tuple[PayPayFake, FakeServer],
) -> None:
    fake, server = paypay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            pp = connector(http, server)  # no codeId known
            await pp.create_qr(qr("1000000008"))
            assert (await pp.cancel("1000000008")).outcome is Out.UNKNOWN
            fake.customer_pays("1000000008")
            fake.fail_details["1000000008"] = 1
            # Details unreadable: "Cancel a payment", which PayPay guarantees to reverse.
            assert (await pp.cancel("1000000008")).outcome is Out.CANCELED
            assert fake.codes["1000000008"].status == "FAILED"
            assert (await pp.sync("1000000008")).outcome is Out.FAILED

    run(scenario())
    assert ("DELETE", "/v2/payments/1000000008", "ok") in fake.requests


def test_customer_codes_are_not_supported(paypay_fake: tuple[PayPayFake, FakeServer]) -> None:
    _, server = paypay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            with pytest.raises(FlowNotSupported) as raised:
                await connector(http, server).pay(
                    PayRequest("1000000009", "01", 100, "900081818802468013579246", "shop")
                )
            assert raised.value.code == "SERVICE_NOT_SUPPORTED"

    run(scenario())


def test_the_webhook_is_a_hint_for_the_right_merchant(
    paypay_fake: tuple[PayPayFake, FakeServer],
) -> None:
    fake, server = paypay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            pp = connector(http, server)
            await pp.create_qr(qr("1000000010"))
            fake.customer_pays("1000000010")
            note = await pp.parse_notification("/hooks/paypay", {}, fake.webhook("1000000010"))
            assert (note.ref, note.outcome, note.verified) == ("1000000010", Out.SUCCEEDED, False)
            assert note.ack_status == 200
            stranger = connector(http, server, merchant="SOMEONE_ELSE")
            with pytest.raises(NotificationRejected) as rejected:
                await stranger.parse_notification("/h", {}, fake.webhook("1000000010"))
            assert rejected.value.part == "merchant"
            with pytest.raises(NotificationRejected):
                await pp.parse_notification("/h", {}, b"{}")

    run(scenario())


def test_the_schedule_is_paypays() -> None:
    schedule = PayPayConnector.schedule
    # Paid on 5 Jan 23:00 JST: cancellable until 6 Jan 00:15 JST (15:15 UTC on 5 Jan).
    began = datetime(2026, 1, 5, 14, 0, tzinfo=UTC)
    assert schedule.cancel_deadline(began) == datetime(2026, 1, 5, 15, 15, tzinfo=UTC)
    assert schedule.can_cancel(began, began + timedelta(minutes=74))
    assert not schedule.can_cancel(began, began + timedelta(minutes=76))
    assert schedule.poll_interval_seconds == 3.0
