"""After a mixed, seeded run the gateway's books and the sandbox wallet's ledger agree.

The seed is printed (and is the test id) so that a failing run replays exactly.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from kessai.domain.errors import Conflict
from kessai.domain.model import MAX_AMOUNT_YEN, PaymentStatus

if TYPE_CHECKING:
    from conftest import Harness, Till

S = PaymentStatus
PAID = {"COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"}
# Our status for each final sandbox charge status.
EXPECTED_STATUS = {"SUCCEEDED": PAID, "FAILED": {"FAILED"}, "EXPIRED": {"EXPIRED"}}
SCENARIOS = [
    "success",
    "declined",
    "error",
    "timeout-success",
    "timeout-failure",
    "password-approve",
    "password-decline",
    "reused-code",
    "replay",
    "qr-approve",
    "qr-decline",
    "qr-expire",
    "qr-approve-then-late-check",
]
PAYMENTS_PER_RUN = 26
QR_TTL_SECONDS = 30


def amount(rng: random.Random) -> int:
    return rng.choice([1, MAX_AMOUNT_YEN, rng.randint(1, 100), rng.randint(100, 50_000)])


def start_payment(
    h: Harness, till: Till, rng: random.Random, scenario: str, used: list[str]
) -> str:
    """Start one payment as ``scenario`` says; answers its transId."""
    yen = amount(rng)
    if scenario in {"success", "declined", "error", "timeout-success", "timeout-failure"}:
        return till.request(yen, outcome=scenario).trans_id
    if scenario.startswith("password"):
        p = till.request(yen, outcome="password")
        h.settle(p.trans_id, approve=scenario == "password-approve")
        return p.trans_id
    if scenario == "reused-code":
        code = h.codes()[0]
        used.append(till.request(yen, code=code).trans_id)
        p = till.request(yen, code=code)  # a one-time code shown twice: declined
        assert p.status is S.FAILED
        assert p.failure_code == "CODE_ALREADY_USED"
        return p.trans_id
    if scenario == "replay":
        code, key = h.codes()[0], till.new_key()
        first = till.request(yen, code=code, trans_key=key)
        for _ in range(rng.randint(1, 3)):
            assert till.request(yen, code=code, trans_key=key).trans_id == first.trans_id
        return first.trans_id
    qr = till.qr(yen, ttl_seconds=QR_TTL_SECONDS)
    h.clock.advance(rng.uniform(0, QR_TTL_SECONDS - 1))
    if scenario in {"qr-approve", "qr-approve-then-late-check"}:
        assert h.settle(qr.trans_id, approve=True) == "SUCCEEDED"
    elif scenario == "qr-decline":
        h.settle(qr.trans_id, approve=False)
    if scenario == "qr-approve":
        h.clock.advance(1.5)
        assert till.paycheck(qr.trans_id).status is S.COMPLETED
    return qr.trans_id


def refund_some(till: Till, rng: random.Random, trans_id: str) -> None:
    """Random refunds of one payment, including ones that must be refused."""
    for _ in range(rng.randint(0, 3)):
        p = till.paycheck(trans_id)
        if p.status.value not in PAID:
            with pytest.raises(Conflict) as caught:
                till.refund(trans_id, 1)
            assert caught.value.code == "PAYMENT_NOT_REFUNDABLE"
            return
        remaining = p.amount - p.refunded_amount
        choice = rng.random()
        if remaining == 0:
            with pytest.raises(Conflict) as caught:
                till.refund(trans_id, 1)
            assert caught.value.code == "PAYMENT_NOT_REFUNDABLE"
        elif choice < 0.2 and remaining < MAX_AMOUNT_YEN:
            with pytest.raises(Conflict) as caught:
                till.refund(trans_id, remaining + 1)
            assert caught.value.code == "REFUND_EXCEEDS_REMAINING"
        elif choice < 0.4:
            till.refund(trans_id)  # all that remains
        else:
            till.refund(trans_id, rng.randint(1, remaining))


@pytest.mark.parametrize("seed", [20260105, 424242])
def test_books_agree_with_the_sandbox_ledger_after_a_mixed_run(h: Harness, seed: int) -> None:
    print(f"ledger run seed={seed}")
    rng = random.Random(seed)
    tills = [h.till(h.provision(f"Shop {n}"), key=f"DEVICE-{n}") for n in range(2)]
    owner: dict[str, Till] = {}
    used: list[str] = []
    scenarios: Counter[str] = Counter()
    for _ in range(PAYMENTS_PER_RUN):
        till = rng.choice(tills)
        scenario = rng.choice(SCENARIOS)
        scenarios[scenario] += 1
        trans_id = start_payment(h, till, rng, scenario, used)
        owner[trans_id] = till
        owner.update({u: till for u in used if u not in owner})
        h.clock.advance(rng.uniform(0, 2))
        if rng.random() < 0.3:
            refund_some(till, rng, trans_id)

    # Let every hidden outcome surface and every QR code expire, then look at each payment.
    h.clock.advance(max(h.settings.sandbox_reveal_after_seconds, QR_TTL_SECONDS) + 5)
    for trans_id, till in owner.items():
        assert till.paycheck(trans_id).status is not S.PENDING, trans_id
    for trans_id, till in owner.items():
        refund_some(till, rng, trans_id)

    payments = {p["trans_id"]: p for p in h.table("payments")}
    charges = {c["ref"]: c for c in h.table("sandbox_charges")}
    sandbox_refunds = h.table("sandbox_refunds")
    refunds = h.table("refunds")
    assert set(payments) == set(owner)

    # The totals: what the merchants were paid, net of refunds, on both sides.
    gateway_net = sum(
        p["amount"] - p["refunded_amount"] for p in payments.values() if p["status"] in PAID
    )
    sandbox_net = sum(c["amount"] for c in charges.values() if c["status"] == "SUCCEEDED") - sum(
        r["amount"] for r in sandbox_refunds
    )
    assert gateway_net == sandbox_net, f"seed={seed}"

    # And payment by payment.
    for trans_id, p in payments.items():
        assert p["status"] != "PENDING", trans_id
        assert (p["status"] == "REFUNDED") == (
            p["refunded_amount"] == p["amount"] and p["status"] in PAID
        )
        charge = charges.get(trans_id)
        if charge is None:
            assert p["status"] not in PAID
            continue
        assert p["amount"] == charge["amount"]
        assert p["status"] in EXPECTED_STATUS[charge["status"]], (trans_id, p["status"], charge)
        assert p["refunded_amount"] == charge["refunded_amount"], trans_id
        succeeded = sum(
            r["amount"]
            for r in refunds
            if r["payment_id"] == p["id"] and r["status"] == "SUCCEEDED"
        )
        assert succeeded == p["refunded_amount"], trans_id
    assert {r["status"] for r in refunds} <= {"SUCCEEDED"}
    # Every state change was audited: one audit event per version of each payment row.
    audit_counts = Counter(e["payment_id"] for e in h.table("audit_events") if e["payment_id"])
    for p in payments.values():
        assert audit_counts[p["id"]] == p["version"], p["trans_id"]
