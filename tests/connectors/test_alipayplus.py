"""The Alipay+ connector against the Alipay+ contract fake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from kessai.connectors.alipayplus import AlipayPlusClient, AlipayPlusConnector
from kessai.connectors.base import (
    FlowNotSupported,
    NotificationRejected,
    PayRequest,
    ProviderOutcome,
    QrRequest,
)

from .conftest import run
from .fakes.alipayplus import AlipayPlusFake, new_key, private_pem, public_pem
from .fakes.server import FakeServer, Served

Out = ProviderOutcome
NOTIFY_PATH = "/v1/notifications/alipayplus"


def connector(
    http: httpx.AsyncClient,
    fake: AlipayPlusFake,
    server: Served,
    *,
    wrong_private_key: bool = False,
    wrong_public_key: bool = False,
) -> AlipayPlusConnector:
    private = private_pem(new_key() if wrong_private_key else fake.acquirer_key)
    public = public_pem(new_key() if wrong_public_key else fake.alipay_key)
    client = AlipayPlusClient(
        http,
        base_url=server.base_url,
        client_id=fake.client_id,
        private_key=private,
        alipay_public_key=public,
    )
    return AlipayPlusConnector(
        client, reference_merchant_id="M0001", merchant_mcc="5812", timeout_cap_seconds=0.5
    )


def pay(ref: str, code_suffix: str, amount: int = 1200) -> PayRequest:
    return PayRequest(ref, "20", amount, "2812345678901234" + code_suffix, "Kessai Café")


def test_a_code_payment_succeeds_and_refunds_in_parts(
    alipay_fake: tuple[AlipayPlusFake, FakeServer],
) -> None:
    fake, server = alipay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            ap = connector(http, fake, server)
            paid = await ap.pay(pay("2000000001", "01"))
            assert paid.outcome is Out.SUCCEEDED
            assert paid.provider_ref == fake.payments["2000000001"].payment_id
            assert (await ap.sync("2000000001")).outcome is Out.SUCCEEDED
            assert (await ap.refund("2000000001", "R1", 200)).outcome is Out.SUCCEEDED
            assert (await ap.refund("2000000001", "R1", 200)).outcome is Out.SUCCEEDED  # idempotent
            assert (await ap.refund_sync("2000000001", "R1", 200)).outcome is Out.SUCCEEDED
            assert (await ap.refund("2000000001", "R2", 1001)).outcome is Out.FAILED
            fake.refund_in_process_once.add("R3")
            assert (await ap.refund("2000000001", "R3", 1000)).outcome is Out.UNKNOWN
            assert (await ap.refund_sync("2000000001", "R3", 1000)).outcome is Out.SUCCEEDED

    run(scenario())
    # Amounts are yen as strings, never multiplied by 100.
    assert fake.payments["2000000001"].amount == "1200"
    assert fake.payments["2000000001"].refunds == {"R1": "200", "R3": "1000"}
    assert {verdict for _, verdict in fake.requests} == {"ok"}


def test_in_process_is_unknown_until_an_inquiry_says_success(
    alipay_fake: tuple[AlipayPlusFake, FakeServer],
) -> None:
    fake, server = alipay_fake

    async def scenario() -> list[ProviderOutcome]:
        async with httpx.AsyncClient() as http:
            ap = connector(http, fake, server)
            first = await ap.pay(pay("2000000002", "02"))
            return [first.outcome] + [(await ap.sync("2000000002")).outcome for _ in range(2)]

    assert run(scenario()) == [Out.UNKNOWN, Out.UNKNOWN, Out.SUCCEEDED]


def test_declines_and_bad_codes_fail(alipay_fake: tuple[AlipayPlusFake, FakeServer]) -> None:
    fake, server = alipay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            ap = connector(http, fake, server)
            poor = await ap.pay(pay("2000000003", "03"))
            assert (poor.outcome, poor.failure_code) == (Out.FAILED, "DECLINED")
            assert "USER_BALANCE_NOT_ENOUGH" in (poor.failure_message or "")
            bad = await ap.pay(pay("2000000004", "06"))
            assert (bad.outcome, bad.failure_code) == (Out.FAILED, "UNKNOWN_CODE")

    run(scenario())


def test_a_timeout_is_unknown_and_a_repeat_returns_the_first_result(
    alipay_fake: tuple[AlipayPlusFake, FakeServer],
) -> None:
    fake, server = alipay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            ap = connector(http, fake, server)
            assert (await ap.pay(pay("2000000005", "04"))).outcome is Out.UNKNOWN
            # The same paymentRequestId again: Alipay+ answers what it did the first time.
            assert (await ap.pay(pay("2000000005", "04"))).outcome is Out.SUCCEEDED
            changed = await ap.pay(pay("2000000005", "04", amount=1300))
            assert changed.outcome is Out.UNKNOWN  # REPEAT_REQ_INCONSISTENT: asked, not assumed
            assert (await ap.sync("2000000005")).outcome is Out.SUCCEEDED

    run(scenario())
    assert len(fake.payments) == 1


def test_give_up_cancels_and_only_a_confirmed_cancel_ends_the_payment(
    alipay_fake: tuple[AlipayPlusFake, FakeServer],
) -> None:
    fake, server = alipay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            ap = connector(http, fake, server)
            assert (await ap.pay(pay("2000000006", "05"))).outcome is Out.UNKNOWN
            for _ in range(3):
                assert (await ap.sync("2000000006")).outcome is Out.UNKNOWN
            assert (await ap.cancel("2000000006")).outcome is Out.CANCELED
            assert (await ap.sync("2000000006")).outcome is Out.CANCELED
            # A payment that never arrived: the cancel closes its id for a late request.
            assert (await ap.sync("2000000099")).outcome is Out.NOT_FOUND
            assert (await ap.cancel("2000000099")).outcome is Out.CANCELED
            late = await ap.pay(pay("2000000099", "01"))
            assert late.outcome is Out.CANCELED

    run(scenario())


def test_wrong_signatures_either_way_are_refused(
    alipay_fake: tuple[AlipayPlusFake, FakeServer],
) -> None:
    fake, server = alipay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            forged = connector(http, fake, server, wrong_private_key=True)
            refused = await forged.pay(pay("2000000007", "01"))
            assert refused.outcome is Out.FAILED
            assert refused.failure_code == "PROVIDER_ERROR"
            assert "INVALID_SIGNATURE" in (refused.failure_message or "")
            # Answers that do not verify with the Alipay+ public key are no answers at all.
            distrustful = connector(http, fake, server, wrong_public_key=True)
            assert (await distrustful.pay(pay("2000000008", "01"))).outcome is Out.UNKNOWN

    run(scenario())
    assert [verdict for _, verdict in fake.requests] == ["INVALID_SIGNATURE", "ok"]


def test_notify_payment_is_verified_and_acknowledged_with_a_signature(
    alipay_fake: tuple[AlipayPlusFake, FakeServer],
) -> None:
    fake, server = alipay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            ap = connector(http, fake, server)
            await ap.pay(pay("2000000009", "01"))
            headers, body = fake.notification("2000000009", NOTIFY_PATH)
            note = await ap.parse_notification(NOTIFY_PATH, headers, body)
            assert (note.ref, note.outcome, note.verified) == ("2000000009", Out.SUCCEEDED, True)
            assert fake.verify_ack(NOTIFY_PATH, dict(note.ack_headers), note.ack_body)
            with pytest.raises(NotificationRejected) as tampered:
                await ap.parse_notification(NOTIFY_PATH, headers, body.replace(b"1200", b"9999"))
            assert tampered.value.part == "signature"
            with pytest.raises(NotificationRejected) as moved:
                await ap.parse_notification("/elsewhere", headers, body)
            assert moved.value.part == "signature"
            stale = {**headers, "Request-Time": "2020-01-01T00:00:00+00:00"}
            with pytest.raises(NotificationRejected):
                await ap.parse_notification(NOTIFY_PATH, stale, body)

    run(scenario())


def test_merchant_presented_qr_is_not_supported(
    alipay_fake: tuple[AlipayPlusFake, FakeServer],
) -> None:
    fake, server = alipay_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            with pytest.raises(FlowNotSupported):
                await connector(http, fake, server).create_qr(
                    QrRequest("2000000010", "20", 100, datetime.now(UTC), "shop")
                )

    run(scenario())


def test_the_schedule_is_alipayplus() -> None:
    schedule = AlipayPlusConnector.schedule
    assert (schedule.poll_interval_seconds, schedule.give_up_after_seconds) == (3.0, 60.0)
    began = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)  # 23:00 UTC+8
    assert schedule.cancel_deadline(began) == datetime(2026, 1, 5, 16, 15, tzinfo=UTC)
    assert not schedule.can_cancel(began, began + timedelta(hours=2))
