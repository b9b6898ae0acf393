"""`kessai worker`: payments nobody polls reach their true state; a crashed worker loses nothing.

The server's own provider re-check is pushed out to an hour, so PAYCHECK only reads the books:
whatever changes is the worker's doing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from e2e.support import Cli, Pos, Provisioner, new_key

from .support import Process, migrate, serve, worker

pytestmark = pytest.mark.e2e

SERVER = {
    "KESSAI_SANDBOX_REVEAL_AFTER_SECONDS": "1",
    "KESSAI_PROVIDER_RECHECK_INTERVAL_MS": "3600000",
    "KESSAI_QR_TTL_MIN_SECONDS": "1",
}
WORKER = {"KESSAI_WORKER_RECHECK_INTERVAL_MS": "200", "KESSAI_WORKER_IDLE_SLEEP_MS": "100"}


class Rig:
    """A server, its database, a logged-in terminal, and room for workers."""

    def __init__(self, tmp_path: Path, url: str, server_settings: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.url = url
        migrate(url)
        self.server = serve(tmp_path, url, server_settings)
        self.cli = Cli(url)
        self.pos = Pos(
            httpx.Client(base_url=self.server.base_url, timeout=30),
            Provisioner(self.cli, ahead=0).make(),
        )
        self.pos.login_ok()
        self.workers: list[Process] = []

    def codes(self, outcome: str, count: int = 1, service: str = "21") -> list[str]:
        response = self.pos.http.post(
            "/sandbox/codes", json={"serviceId": service, "outcome": outcome, "count": count}
        )
        return list(response.json()["codes"])

    def worker(self, settings: dict[str, str] | None = None) -> Process:
        started = worker(self.tmp_path, self.url, WORKER | (settings or {}))
        self.workers.append(started)
        return started

    def wait_final(self, trans_ids: list[str], timeout: float = 30) -> dict[str, dict[str, object]]:
        deadline = time.monotonic() + timeout
        while True:
            seen = {t: self.pos.paycheck(t).json() for t in trans_ids}
            if all(p["status"] != "PENDING" for p in seen.values()):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"still pending: {seen}")
            time.sleep(0.2)

    def close(self) -> None:
        for running in self.workers:
            running.stop()
        self.server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def rig(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: Callable[[str], str]
) -> Iterator[Rig]:
    made = Rig(tmp_path, database_url(request.param), dict(SERVER))
    try:
        yield made
    finally:
        made.close()


def test_timeouts_reach_their_true_outcome_without_polling(rig: Rig) -> None:
    success = rig.pos.pay(rig.codes("timeout-success")[0], amount=1500)
    failure = rig.pos.pay(rig.codes("timeout-failure")[0], amount=1600)
    for payment in (success, failure):
        assert (payment["status"], payment["pendingReason"]) == ("PENDING", "OUTCOME_UNKNOWN")
    time.sleep(1.2)
    # Nobody has asked the provider: the books still say unknown.
    assert rig.pos.paycheck(success["transId"]).json()["status"] == "PENDING"
    rig.worker()
    final = rig.wait_final([success["transId"], failure["transId"]])
    assert final[success["transId"]]["status"] == "COMPLETED"
    assert final[failure["transId"]]["status"] == "FAILED"


def test_unpaid_qr_code_expires_by_the_worker(rig: Rig) -> None:
    qr = rig.pos.qr(new_key(), 800, "01", ttl_seconds=1).json()
    rig.worker()
    final = rig.wait_final([qr["transId"]])
    assert final[qr["transId"]]["status"] == "EXPIRED"
    assert final[qr["transId"]]["failureCode"] == "QR_EXPIRED"
    charge = next(row for row in rig.cli.ledger() if row["ref"] == qr["transId"])
    assert charge["status"] == "EXPIRED"


def test_a_worker_killed_mid_batch_loses_nothing(rig: Rig) -> None:
    codes = rig.codes("timeout-success", count=20)
    paid = [rig.pos.pay(code, amount=100 + i) for i, code in enumerate(codes)]
    time.sleep(1.1)
    first = rig.worker()
    time.sleep(0.6)
    first.kill()
    rig.worker()
    final = rig.wait_final([p["transId"] for p in paid])
    assert {p["status"] for p in final.values()} == {"COMPLETED"}
    ledger = {row["ref"]: row for row in rig.cli.ledger()}
    for payment in paid:
        charge = ledger[payment["transId"]]
        assert charge["status"] == "SUCCEEDED" and charge["amount"] == payment["amount"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_outcome_that_stays_unknown_is_reversed_then_failed(
    backend: str, tmp_path: Path, database_url: Callable[[str], str]
) -> None:
    rig = Rig(
        tmp_path, database_url(backend), SERVER | {"KESSAI_SANDBOX_REVEAL_AFTER_SECONDS": "3600"}
    )
    try:
        payment = rig.pos.pay(rig.codes("timeout-success")[0], amount=900)
        rig.worker({"KESSAI_PROVIDER_GIVE_UP_SECONDS": "2"})
        final = rig.wait_final([payment["transId"]])[payment["transId"]]
        assert final["status"] == "FAILED"
        assert final["failureCode"] == "REVERSED"
        charge = next(row for row in rig.cli.ledger() if row["ref"] == payment["transId"])
        assert charge["status"] == "CANCELED"
    finally:
        rig.close()
