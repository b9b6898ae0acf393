"""Racing requests on one event loop: one charge per transKey, refunds never over the amount."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from kessai.domain.errors import Conflict
from kessai.domain.model import PaymentStatus
from kessai.service.gateway import PaymentView

if TYPE_CHECKING:
    from conftest import Harness, Till

S = PaymentStatus


async def gather(*coros: Any) -> list[Any]:
    return list(await asyncio.gather(*coros, return_exceptions=True))


def racing_requests(h: Harness, till: Till, code: str, count: int) -> list[Any]:
    return asyncio.run(
        gather(
            *(
                h.gateway.request(
                    till.token,
                    trans_key="RACE1",
                    amount=1000,
                    code=code,
                    service_id=None,
                    request_id=h.rid(),
                )
                for _ in range(count)
            )
        )
    )


def racing_refunds(
    h: Harness, till: Till, trans_id: str, asks: list[tuple[int | None, str]]
) -> list[Any]:
    return asyncio.run(
        gather(
            *(
                h.gateway.refund(
                    till.token,
                    trans_id,
                    passcode=till.shop.terminal.passcode,
                    amount=amount,
                    refund_key=key,
                    request_id=h.rid(),
                )
                for amount, key in asks
            )
        )
    )


def test_racing_retries_of_one_request_charge_once(h: Harness) -> None:
    till = h.till()
    code = h.codes()[0]
    answers = racing_requests(h, till, code, 5)
    assert all(isinstance(a, PaymentView) for a in answers), answers
    assert len({a.payment.trans_id for a in answers}) == 1
    assert len(h.table("payments")) == 1
    assert len(h.table("sandbox_charges")) == 1
    # However the race went, the payment ends COMPLETED once the provider is asked again.
    h.clock.advance(2)
    assert till.paycheck(answers[0].payment.trans_id).status is S.COMPLETED


def test_racing_full_refunds_refund_once(h: Harness) -> None:
    till = h.till()
    paid = till.request(1000)
    answers = racing_refunds(h, till, paid.trans_id, [(None, "A"), (None, "B"), (None, "C")])
    won = [a for a in answers if isinstance(a, PaymentView)]
    lost = [a for a in answers if not isinstance(a, PaymentView)]
    assert len(won) == 1, answers
    assert all(isinstance(e, Conflict) for e in lost), lost
    assert {e.code for e in lost} <= {"REFUND_EXCEEDS_REMAINING", "PAYMENT_NOT_REFUNDABLE"}
    row = h.payment_row(paid.trans_id)
    assert (row["status"], row["refunded_amount"]) == ("REFUNDED", 1000)
    assert sum(r["amount"] for r in h.table("sandbox_refunds")) == 1000


def test_racing_partial_refunds_never_exceed_the_amount(h: Harness) -> None:
    till = h.till()
    paid = till.request(1000)
    asks: list[tuple[int | None, str]] = [(400, f"K{i}") for i in range(4)]
    answers = racing_refunds(h, till, paid.trans_id, asks)
    won = [a for a in answers if isinstance(a, PaymentView)]
    assert len(won) == 2, answers
    row = h.payment_row(paid.trans_id)
    assert (row["status"], row["refunded_amount"]) == ("PARTIALLY_REFUNDED", 800)
    assert sum(r["amount"] for r in h.table("sandbox_refunds")) == 800


def test_racing_retries_of_one_refund_refund_once(h: Harness) -> None:
    till = h.till()
    paid = till.request(1000)
    answers = racing_refunds(h, till, paid.trans_id, [(300, "SAME")] * 4)
    assert all(isinstance(a, PaymentView) for a in answers), answers
    assert len(h.table("refunds")) == 1
    assert len(h.table("sandbox_refunds")) == 1
    assert h.payment_row(paid.trans_id)["refunded_amount"] == 300
