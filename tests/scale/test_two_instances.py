"""Two `kessai serve` processes on one PostgreSQL: the rules that money depends on still hold."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from e2e.support import Cli, Pos, Provisioner, new_key

from .support import Process, migrate, serve

pytestmark = pytest.mark.e2e

SETTINGS = {"KESSAI_SANDBOX_REVEAL_AFTER_SECONDS": "1"}


@pytest.fixture
def pair(tmp_path: Path, database_url: Callable[[str], str]):  # type: ignore[no-untyped-def]
    url = database_url("postgresql")
    migrate(url)
    a = serve(tmp_path, url, SETTINGS, name="a")
    b = serve(tmp_path, url, SETTINGS, name="b")
    cli = Cli(url)
    provisioner = Provisioner(cli, ahead=0)
    try:
        yield a, b, cli, provisioner
    finally:
        provisioner.close()
        a.stop()
        b.stop()


def _codes(base_url: str, count: int, outcome: str = "success") -> list[str]:
    response = httpx.post(
        f"{base_url}/sandbox/codes", json={"serviceId": "01", "outcome": outcome, "count": count}
    )
    return list(response.json()["codes"])


def _logged_in(base_url: str, provisioner: Provisioner) -> Pos:
    pos = Pos(httpx.Client(base_url=base_url, timeout=30), provisioner.make())
    pos.login_ok()
    return pos


def test_one_charge_for_fifty_racing_requests_across_instances(
    pair: tuple[Process, Process, Cli, Provisioner],
) -> None:
    a, b, cli, provisioner = pair
    pos = _logged_in(a.base_url, provisioner)
    code = _codes(a.base_url, 1)[0]
    trans_key = new_key()

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{(a, b)[i % 2].base_url}/v1/payments",
                        headers=pos.auth(),
                        json={"transKey": trans_key, "amount": 700, "code": code},
                    )
                    for i in range(50)
                )
            )

    answers = asyncio.run(race())
    assert {r.status_code for r in answers} == {200}
    assert len({r.json()["transId"] for r in answers}) == 1
    trans_id = answers[0].json()["transId"]
    charges = [row for row in cli.ledger() if row["ref"] == trans_id]
    assert len(charges) == 1 and charges[0]["amount"] == 700


def test_one_device_wins_racing_logins_across_instances(
    pair: tuple[Process, Process, Cli, Provisioner],
) -> None:
    a, b, _, provisioner = pair
    terminal = provisioner.make()

    async def race() -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one(i: int) -> tuple[str, httpx.Response]:
                key = ("KEYA", "KEYB")[i % 2]
                body = {
                    "mid": terminal.mid,
                    "key": key,
                    "password": terminal.password,
                    "os": terminal.os,
                }
                return key, await client.post(f"{(a, b)[i % 2].base_url}/v1/login", json=body)

            return await asyncio.gather(*(one(i) for i in range(10)))

    answers = asyncio.run(race())
    winners = {key for key, r in answers if r.status_code == 200}
    assert len(winners) == 1
    losers = [r for key, r in answers if key not in winners]
    assert losers and all(r.status_code == 409 for r in losers)
    assert {r.json()["error"]["code"] for r in losers} == {"TERMINAL_IN_USE"}


def test_refunds_racing_across_instances_never_exceed_the_payment(
    pair: tuple[Process, Process, Cli, Provisioner],
) -> None:
    a, b, cli, provisioner = pair
    pos = _logged_in(a.base_url, provisioner)
    paid = pos.pay(_codes(a.base_url, 1)[0], amount=1000)
    trans_id = paid["transId"]

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{(a, b)[i % 2].base_url}/v1/payments/{trans_id}/refunds",
                        headers=pos.auth(),
                        json={"passCode": pos.terminal.pass_code, "amount": 100},
                    )
                    for i in range(20)
                )
            )

    answers = asyncio.run(race())
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert len(ok) == 10
    # Once nothing remains the payment is REFUNDED, which no refund may touch.
    assert {r.json()["error"]["code"] for r in refused} <= {
        "REFUND_EXCEEDS_REMAINING",
        "PAYMENT_NOT_REFUNDABLE",
    }
    final = pos.paycheck(trans_id).json()
    assert final["status"] == "REFUNDED" and final["refundedAmount"] == 1000
    assert sum(r["amount"] for r in final["refunds"] if r["status"] == "SUCCEEDED") == 1000
    charge = next(row for row in cli.ledger() if row["ref"] == trans_id)
    assert charge["refundedAmount"] == 1000


def test_passcode_lockout_counts_guesses_from_every_instance(
    pair: tuple[Process, Process, Cli, Provisioner],
) -> None:
    a, b, _, provisioner = pair
    pos = _logged_in(a.base_url, provisioner)
    trans_id = pos.pay(_codes(a.base_url, 1)[0], amount=500)["transId"]
    wrong = "0000" if pos.terminal.pass_code != "0000" else "1111"

    async def guesses() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{(a, b)[i % 2].base_url}/v1/payments/{trans_id}/refunds",
                        headers=pos.auth(),
                        json={"passCode": wrong},
                    )
                    for i in range(12)
                )
            )

    codes = [r.json()["error"]["code"] for r in asyncio.run(guesses())]
    assert codes.count("WRONG_PASSCODE") <= 4
    assert "PASSCODE_LOCKED" in codes
    for base in (a.base_url, b.base_url):
        right = httpx.post(
            f"{base}/v1/payments/{trans_id}/refunds",
            headers=pos.auth(),
            json={"passCode": pos.terminal.pass_code},
        )
        assert right.status_code == 429
        assert right.json()["error"]["code"] == "PASSCODE_LOCKED"
