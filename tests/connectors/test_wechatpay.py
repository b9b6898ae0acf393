"""The WeChat Pay (v2 micropay) connector against the WeChat Pay contract fake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from kessai.connectors.answers import AnswerTooLarge
from kessai.connectors.base import FlowNotSupported, PayRequest, ProviderOutcome, QrRequest
from kessai.connectors.wechatpay import WeChatPayClient, WeChatPayConnector, wire
from kessai.connectors.wechatpay.client import MAX_XML_BYTES, Reply

from .conftest import run
from .fakes.server import FakeServer, Served
from .fakes.wechatpay import API_KEY, APP_ID, MCH_ID, WeChatPayFake

Out = ProviderOutcome


def connector(
    http: httpx.AsyncClient,
    server: Served,
    *,
    key: str = API_KEY,
    sign_type: str = "MD5",
) -> WeChatPayConnector:
    client = WeChatPayClient(
        http,
        base_url=server.base_url,
        app_id=APP_ID,
        mch_id=MCH_ID,
        api_key=key,
        sign_type=sign_type,
        sub_mch_id="1900000109",
    )
    return WeChatPayConnector(client, timeout_cap_seconds=0.5)


def pay(ref: str, suffix: str, amount: int = 1200) -> PayRequest:
    return PayRequest(ref, "21", amount, "1345678901234567" + suffix, "Kessai Café")


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_micropay_succeeds_and_refunds(
    wechat_fake: tuple[WeChatPayFake, FakeServer], sign_type: str
) -> None:
    fake, server = wechat_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            wx = connector(http, server, sign_type=sign_type)
            paid = await wx.pay(pay("3000000001", "01"))
            assert paid.outcome is Out.SUCCEEDED
            assert paid.provider_ref == fake.orders["3000000001"].transaction_id
            assert (await wx.sync("3000000001")).outcome is Out.SUCCEEDED
            assert (await wx.refund("3000000001", "R1", 300)).outcome is Out.SUCCEEDED
            assert (await wx.refund("3000000001", "R1", 300)).outcome is Out.SUCCEEDED
            assert (await wx.refund_sync("3000000001", "R1", 300)).outcome is Out.SUCCEEDED
            assert (await wx.refund_sync("3000000001", "R9", 1)).outcome is Out.NOT_FOUND
            assert (await wx.refund("3000000001", "R2", 901)).outcome is Out.FAILED
            # Paid then partly refunded is still a paid order.
            assert (await wx.sync("3000000001")).outcome is Out.SUCCEEDED

    run(scenario())
    assert fake.orders["3000000001"].refunds == {"R1": 300}
    assert {verdict for _, verdict in fake.requests} == {"ok"}


def test_userpaying_waits_for_the_customer(wechat_fake: tuple[WeChatPayFake, FakeServer]) -> None:
    fake, server = wechat_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            wx = connector(http, server)
            first = await wx.pay(pay("3000000002", "02"))
            assert first.outcome is Out.WAITING_FOR_CUSTOMER
            assert (await wx.sync("3000000002")).outcome is Out.WAITING_FOR_CUSTOMER
            fake.confirm("3000000002")
            assert (await wx.sync("3000000002")).outcome is Out.SUCCEEDED

    run(scenario())


def test_declines_fail_and_system_errors_are_unknown(
    wechat_fake: tuple[WeChatPayFake, FakeServer],
) -> None:
    _, server = wechat_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            wx = connector(http, server)
            poor = await wx.pay(pay("3000000003", "03"))
            assert (poor.outcome, poor.failure_code) == (Out.FAILED, "DECLINED")
            stale = await wx.pay(pay("3000000004", "07"))
            assert (stale.outcome, stale.failure_code) == (Out.FAILED, "UNKNOWN_CODE")
            error = await wx.pay(pay("3000000005", "04"))
            assert error.outcome is Out.UNKNOWN  # SYSTEMERROR: query, never assume
            assert (await wx.sync("3000000005")).outcome is Out.SUCCEEDED
            assert (await wx.sync("3000000006")).outcome is Out.NOT_FOUND  # ORDERNOTEXIST

    run(scenario())


def test_a_timeout_is_unknown_and_a_duplicate_is_resolved_by_query(
    wechat_fake: tuple[WeChatPayFake, FakeServer],
) -> None:
    fake, server = wechat_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            wx = connector(http, server)
            assert (await wx.pay(pay("3000000007", "05"))).outcome is Out.UNKNOWN
            # The same out_trade_no again: ORDERPAID, which is not taken on trust either.
            assert (await wx.pay(pay("3000000007", "05"))).outcome is Out.UNKNOWN
            assert (await wx.pay(pay("3000000007", "05", amount=1))).outcome is Out.UNKNOWN
            assert (await wx.sync("3000000007")).outcome is Out.SUCCEEDED

    run(scenario())
    assert len(fake.orders) == 1


def test_reverse_is_repeated_until_wechat_pay_confirms(
    wechat_fake: tuple[WeChatPayFake, FakeServer],
) -> None:
    fake, server = wechat_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            wx = connector(http, server)
            assert (await wx.pay(pay("3000000008", "06"))).outcome is Out.WAITING_FOR_CUSTOMER
            fake.reverse_recall["3000000008"] = 1
            assert (await wx.cancel("3000000008")).outcome is Out.UNKNOWN  # recall=Y
            assert (await wx.cancel("3000000008")).outcome is Out.CANCELED
            assert (await wx.sync("3000000008")).outcome is Out.CANCELED  # REVOKED
            assert (await wx.cancel("3000000099")).outcome is Out.NOT_FOUND

    run(scenario())


def test_a_wrong_key_is_refused_as_wechat_pay_refuses_it(
    wechat_fake: tuple[WeChatPayFake, FakeServer],
) -> None:
    fake, server = wechat_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            wrong = connector(http, server, key="0" * 32)
            refused = await wrong.pay(pay("3000000009", "01"))
            assert (refused.outcome, refused.failure_code) == (Out.FAILED, "PROVIDER_ERROR")
            assert "签名错误" in (refused.failure_message or "")
            assert (await wrong.sync("3000000009")).outcome is Out.UNKNOWN
            assert (await wrong.cancel("3000000009")).outcome is Out.UNKNOWN

    run(scenario())
    assert {verdict for _, verdict in fake.requests} == {"signature"}
    assert fake.orders == {}


def test_answers_with_a_bad_signature_are_not_trusted(
    wechat_fake: tuple[WeChatPayFake, FakeServer],
) -> None:
    fake, server = wechat_fake
    fake.answer_key = "1" * 32  # answers no longer signed with the merchant's key

    async def scenario() -> tuple[ProviderOutcome, ProviderOutcome]:
        async with httpx.AsyncClient() as http:
            wx = connector(http, server)
            return (await wx.pay(pay("3000000010", "01"))).outcome, (
                await wx.sync("3000000010")
            ).outcome

    # The charge went through at the fake, but an answer we cannot verify is no answer.
    assert run(scenario()) == (Out.UNKNOWN, Out.UNKNOWN)
    fake.answer_key = None

    async def later() -> ProviderOutcome:
        async with httpx.AsyncClient() as http:
            return (await connector(http, server).sync("3000000010")).outcome

    assert run(later()) is Out.SUCCEEDED


def test_qr_and_notifications_are_not_supported(
    wechat_fake: tuple[WeChatPayFake, FakeServer],
) -> None:
    _, server = wechat_fake

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            wx = connector(http, server)
            with pytest.raises(FlowNotSupported):
                await wx.create_qr(QrRequest("3000000011", "21", 1, datetime.now(UTC), "x"))
            with pytest.raises(FlowNotSupported):
                await wx.parse_notification("/n", {}, b"<xml/>")

    run(scenario())


def test_the_schedule_is_wechat_pays() -> None:
    schedule = WeChatPayConnector.schedule
    began = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert not schedule.can_cancel(began, began + timedelta(seconds=14))
    assert schedule.can_cancel(began, began + timedelta(seconds=15))
    assert schedule.can_cancel(began, began + timedelta(days=6, hours=23))
    assert not schedule.can_cancel(began, began + timedelta(days=7))


@pytest.mark.parametrize("extra, read", [(0, True), (1, False)])
def test_an_answer_is_read_up_to_the_largest_wechat_pay_answer_and_no_further(
    extra: int, read: bool
) -> None:
    # A flat <xml> document padded to the size: one byte more is not read (AnswerTooLarge, a
    # transport error: no answer), rather than read up to the limit every provider shares.
    head, tail = b"<xml><return_code>FAIL</return_code><pad>", b"</pad></xml>"
    size = MAX_XML_BYTES + extra
    body = head + b"x" * (size - len(head) - len(tail)) + tail

    async def scenario() -> Reply:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
        async with httpx.AsyncClient(transport=transport) as http:
            client = WeChatPayClient(
                http, base_url="http://wechat.test", app_id=APP_ID, mch_id=MCH_ID, api_key=API_KEY
            )
            return await client.call("/pay/micropay", {"out_trade_no": "1"}, timeout_seconds=5)

    if read:
        reply = run(scenario())
        assert reply.fields is not None and reply.get("return_code") == "FAIL"
    else:
        with pytest.raises(AnswerTooLarge, match=str(MAX_XML_BYTES)):
            run(scenario())


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("SUCCESS", ProviderOutcome.SUCCEEDED),
        ("REFUNDCLOSE", ProviderOutcome.FAILED),
        ("PROCESSING", ProviderOutcome.UNKNOWN),
        # The bank would not take the money back (a closed card): the merchant settles it by
        # hand in WeChat Pay's platform. Not failed, or its amount would be free to refund again.
        ("CHANGE", ProviderOutcome.UNKNOWN),
    ],
)
def test_a_refund_that_needs_settling_by_hand_is_not_failed(
    status: str, outcome: ProviderOutcome
) -> None:
    fields = {"return_code": "SUCCESS", "result_code": "SUCCESS", "refund_status_0": status}
    assert wire.refundquery_outcome(fields).outcome is outcome
