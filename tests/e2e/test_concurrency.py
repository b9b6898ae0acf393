"""Racing requests: one transKey charged once, one device per mid, refunds never above the amount.

Each race is many requests sent at the same moment over separate connections
(asyncio + httpx.AsyncClient), as retrying terminals or double-clicking clerks would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from .support import Cli, CliBatch, Pos, Terminal, assert_error, new_key, sandbox_code

pytestmark = pytest.mark.e2e


def _race(
    base_url: str, count: int, send: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]
) -> list[httpx.Response]:
    """Send ``count`` requests at once, each on its own connection."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
            return list(await asyncio.gather(*(send(client, i) for i in range(count))))

    return asyncio.run(run())


def _poster(
    path: str, bodies: list[dict[str, Any]], headers: dict[str, str] | None = None
) -> Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]:
    """The i-th racer POSTs ``bodies[i]`` to ``path``."""

    def send(client: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
        return client.post(path, json=bodies[i], headers=headers)

    return send


def test_racing_requests_with_one_transkey_charge_once(pos: Pos, cli: Cli) -> None:
    code = sandbox_code(pos.http, "01")
    trans_key = new_key()
    body: dict[str, Any] = {"transKey": trans_key, "amount": 4321, "code": code}
    charges_before = len(cli.ledger())
    answers = _race(str(pos.http.base_url), 20, _poster("/v1/payments", [body] * 20, pos.auth()))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    trans_ids = {a.json()["transId"] for a in answers}
    assert len(trans_ids) == 1, trans_ids
    (trans_id,) = trans_ids
    # Exactly one answer made the payment; the others replayed it.
    fresh = [a for a in answers if a.headers.get("idempotent-replayed") != "true"]
    assert len(fresh) == 1
    # None of them may call the payment failed: it is completed, or not known yet.
    for answer in answers:
        assert answer.json()["status"] in ("COMPLETED", "PENDING"), answer.text
        assert answer.json()["failureCode"] is None
    assert pos.wait_final(trans_id)["status"] == "COMPLETED"
    ledger = cli.ledger()
    assert len(ledger) == charges_before + 1, ledger[charges_before:]
    mine = [row for row in ledger if row["ref"] == trans_id]
    assert len(mine) == 1
    assert (mine[0]["status"], mine[0]["amount"]) == ("SUCCEEDED", 4321)


def test_racing_logins_from_two_devices_admit_exactly_one(
    http: httpx.Client, terminal: Terminal
) -> None:
    for round_number in range(3):
        bodies = [
            Pos(http, terminal, key=f"R{round_number}DEVICE{side}").login_body() for side in "AB"
        ]
        answers = _race(str(http.base_url), 2, _poster("/v1/login", bodies))
        winners = [a for a in answers if a.status_code == 200]
        assert len(winners) == 1, [a.text for a in answers]
        for loser in (a for a in answers if a.status_code != 200):
            assert_error(loser, 409, "TERMINAL_IN_USE")
        winner = Pos(http, terminal, token=winners[0].json()["sessionToken"])
        assert winner.paycheck("1000000000").status_code == 404  # the token works
        assert winner.logout().status_code == 200


def test_racing_partial_refunds_never_exceed_the_amount(pos: Pos, admin: CliBatch) -> None:
    payment = pos.pay(sandbox_code(pos.http, "21"), 1000)
    trans_id = payment["transId"]
    # Ten refunds of 150 yen: 1500 asked for, 1000 paid. Six fit.
    bodies = [
        {"passCode": pos.terminal.pass_code, "amount": 150, "refundKey": f"RACE{i}"}
        for i in range(10)
    ]
    path = f"/v1/payments/{trans_id}/refunds"
    answers = _race(str(pos.http.base_url), 10, _poster(path, bodies, pos.auth()))
    accepted = [a for a in answers if a.status_code == 200]
    for refused in (a for a in answers if a.status_code != 200):
        assert_error(refused, 409, "REFUND_EXCEEDS_REMAINING", "amount")
    for answer in accepted:
        assert answer.json()["refundedAmount"] <= 1000
    final = pos.paycheck(trans_id).json()
    succeeded = [r for r in final["refunds"] if r["status"] == "SUCCEEDED"]
    assert final["refundedAmount"] <= final["amount"] == 1000
    assert final["refundedAmount"] == sum(r["amount"] for r in succeeded)
    assert len(succeeded) == len(accepted) == 6
    assert final["refundedAmount"] == 900
    assert final["status"] == "PARTIALLY_REFUNDED"
    assert admin.charge(trans_id)["refundedAmount"] == 900
