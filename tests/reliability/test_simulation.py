"""Seeded fault simulation of the service layer: a few short seeds, replay, and broken variants.

The long runs are ``bench/simulate.py --ops 100000``; here each seed is a few hundred steps, so
that the whole module stays within tens of seconds on a loaded machine. The broken variants prove
that each family of checks fails when what it guards is broken: a wallet that charges twice, a
database unit that commits although it reports a failure, books corrupted behind the gateway's
back.
"""

from __future__ import annotations

import pytest

from reliability.sim import FaultRates, SimConfig, SimResult, Simulation, check_books, simulate
from reliability.sim.checks import WalletCharge, WalletRefund
from reliability.sim.faults import DEFAULT_CALL_RATES, CallKind, Fault

CI_OPS = 500


def explain(result: SimResult) -> str:
    """Everything needed to replay a failing run."""
    tail = "\n".join(result.tail)
    return (
        f"seed {result.seed} failed at step {result.failed_step}: {result.failure}\n"
        f"replay: .venv/bin/python bench/simulate.py --replay {result.seed} --ops {result.ops}\n"
        f"{tail}"
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_seed_keeps_every_invariant(seed: int) -> None:
    result = simulate(SimConfig(seed=seed, ops=CI_OPS, quiesce_every=200))
    assert result.ok, explain(result)
    assert result.steps == CI_OPS
    # The run did what it claims: faults of several kinds, checks after every step, and the
    # books compared at two quiescent points and at the end.
    assert sum(result.faults.values()) > 20
    assert len({kind.split(".")[0] for kind in result.faults}) >= 5
    assert result.checks > CI_OPS
    assert result.quiescent_points == 3
    assert result.outcomes.get("request:ok", 0) > 0
    assert result.outcomes.get("refund:ok", 0) > 0


def test_a_cancel_never_reverses_a_payment_another_check_just_booked_paid() -> None:
    # Seed 400 once caught a give-up cancel, decided on an old reading while another check's
    # answer (paid) was still on its way, reversing a payment the terminal was told was paid.
    # The claim on a check is now a lease that outlasts the call.
    result = simulate(SimConfig(seed=400, ops=1_500, quiesce_every=1_000, reversing_cancel=True))
    assert result.ok, explain(result)


def test_replaying_a_seed_gives_the_same_trace() -> None:
    first = simulate(SimConfig(seed=11, ops=300, quiesce_every=150))
    again = simulate(SimConfig(seed=11, ops=300, quiesce_every=150))
    other = simulate(SimConfig(seed=12, ops=300, quiesce_every=150))
    assert first.ok, explain(first)
    assert again.digest == first.digest
    assert again.faults == first.faults
    assert again.outcomes == first.outcomes
    assert other.digest != first.digest


def _only(kind: CallKind, fault: Fault, rate: float) -> FaultRates:
    """The default rates, with ``fault`` on ``kind`` calls made frequent."""
    calls = {k: dict(v) for k, v in DEFAULT_CALL_RATES.items()}
    calls[kind][fault] = rate
    return FaultRates(calls=calls)


def test_a_wallet_that_charges_twice_is_caught_by_the_books() -> None:
    # Every other payment is delivered to the wallet twice; this wallet charges the copy again.
    rates = _only(CallKind.PAY, Fault.DUPLICATE, 0.5)
    result = simulate(
        SimConfig(seed=5, ops=400, quiesce_every=100, rates=rates, double_charging_wallet=True)
    )
    assert not result.ok
    assert result.failure is not None
    assert result.failure.startswith("ledger-matches-books"), result.failure
    assert "the wallet" in result.failure


def test_a_unit_that_commits_and_then_fails_is_caught() -> None:
    rates = FaultRates(db_write_failure=0.2)
    result = simulate(SimConfig(seed=6, ops=200, rates=rates, leaky_database=True))
    assert not result.ok
    assert result.failure is not None
    assert result.failure.startswith(("failed-unit-leaves-nothing", "failed-write-answers-error"))


def _corrupt_at(step: int, sql: str) -> SimConfig:
    def tamper(sim: Simulation, now: int) -> None:
        if now == step:
            sim.probe.execute(sql)

    return SimConfig(seed=7, ops=300, tamper=tamper)


def test_a_paid_payment_unpaid_behind_the_gateways_back_is_caught() -> None:
    result = simulate(
        _corrupt_at(
            150,
            "UPDATE payments SET status = 'FAILED', failure_code = 'DECLINED' "
            "WHERE id = (SELECT min(id) FROM payments WHERE status = 'COMPLETED')",
        )
    )
    assert result.failed_step == 150
    assert result.failure is not None
    assert result.failure.startswith("paid-stays-paid"), result.failure


def test_a_refund_deleted_from_the_books_is_caught() -> None:
    result = simulate(
        _corrupt_at(
            200,
            "DELETE FROM refunds WHERE id = "
            "(SELECT min(id) FROM refunds WHERE status = 'SUCCEEDED')",
        )
    )
    assert result.failed_step == 200
    assert result.failure is not None
    assert result.failure.startswith("refund-deleted"), result.failure


def test_a_refunded_amount_that_disagrees_with_the_refunds_is_caught() -> None:
    result = simulate(
        _corrupt_at(
            150,
            "UPDATE payments SET refunded_amount = refunded_amount + 1, status = "
            "'PARTIALLY_REFUNDED' WHERE id = (SELECT min(id) FROM payments "
            "WHERE status = 'COMPLETED' AND amount > 1)",
        )
    )
    assert result.failed_step == 150
    assert result.failure is not None
    assert result.failure.startswith("refunds-within-paid"), result.failure


# -- the books checker on its own ------------------------------------------------------------------

PAYMENTS = [
    # (pk, transId, merchant, transKey, status, amount, refunded)
    (1, "1000000001", 1, "K1", "COMPLETED", 1000, 0),
    (2, "1000000002", 1, "K2", "PARTIALLY_REFUNDED", 800, 300),
    (3, "1000000003", 1, "K3", "FAILED", 500, 0),
]
REFUNDS = [(2, "R00000000001", "RK1", 300, "SUCCEEDED")]
CHARGES = {
    "1000000001": WalletCharge("1000000001", 1000),
    "1000000002": WalletCharge("1000000002", 500),
    "1000000003": WalletCharge("1000000003", 0),
}
WALLET_REFUNDS = [WalletRefund("R00000000001", "1000000002", 300)]


def test_books_that_agree_pass() -> None:
    assert check_books(PAYMENTS, REFUNDS, CHARGES, WALLET_REFUNDS) == []


def test_every_kind_of_disagreement_is_reported() -> None:
    charged_twice = {**CHARGES, "1000000001": WalletCharge("1000000001", 2000)}
    assert (
        "books 1000 yen, the wallet 2000 yen"
        in check_books(PAYMENTS, REFUNDS, charged_twice, WALLET_REFUNDS)[0]
    )
    failed_but_charged = {**CHARGES, "1000000003": WalletCharge("1000000003", 500)}
    assert check_books(PAYMENTS, REFUNDS, failed_but_charged, WALLET_REFUNDS)
    unknown_charge = {**CHARGES, "1999999999": WalletCharge("1999999999", 10)}
    assert "unknown 1999999999" in check_books(PAYMENTS, REFUNDS, unknown_charge, WALLET_REFUNDS)[0]
    assert check_books(PAYMENTS, REFUNDS, CHARGES, [])  # a booked refund the wallet never made
    extra = [*WALLET_REFUNDS, WalletRefund("R00000000009", "1000000001", 5)]
    assert check_books(PAYMENTS, REFUNDS, CHARGES, extra)
    pending = [*PAYMENTS, (4, "1000000004", 1, "K4", "PENDING", 100, 0)]
    assert "still PENDING" in check_books(pending, REFUNDS, CHARGES, WALLET_REFUNDS)[0]
