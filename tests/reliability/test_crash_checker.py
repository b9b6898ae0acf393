"""The crash test's checker, proved on books that are right and on copies corrupted on purpose.

Each corruption is one way a crash could have broken the books; the checker must name the
invariant it breaks. Without this, a checker that never complains would pass every crash test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from .books import (
    ANSWERED_KEPT,
    INVARIANTS,
    LEDGER,
    NEVER_BACK,
    NOTHING_UNKNOWN,
    ONE_PER_KEY,
    REFUNDS_KEPT,
    TOLD_FINAL,
    TOLD_PAID,
    WITHIN_PAID,
    BookPayment,
    BookRefund,
    Books,
    Charge,
    SeenPayment,
    SeenRefund,
    WalletRefund,
    check,
    ledger_totals,
)

Case = tuple[Books, list[SeenPayment]]


def pay(
    trans_id: str,
    amount: int,
    status: str,
    refunded: int = 0,
    *,
    kind: str = "CUSTOMER_CODE",
    reason: str | None = None,
) -> BookPayment:
    return BookPayment(trans_id, f"K{trans_id}", 1, kind, amount, status, reason, refunded, None)


def told(
    seq: int,
    p: BookPayment,
    status: str,
    refunded: int = 0,
    refunds: tuple[SeenRefund, ...] = (),
    asked: str | None = None,
) -> SeenPayment:
    return SeenPayment(
        seq,
        "CANCEL" if asked else "REQUEST",
        0,
        p.trans_key,
        p.trans_id,
        p.amount,
        status,
        None,
        refunded,
        refunds,
        asked,
    )


A = pay("1000000001", 1000, "COMPLETED")
B = pay("1000000002", 2000, "PARTIALLY_REFUNDED", 500)
C = pay("1000000003", 3000, "REFUNDED", 3000, kind="MERCHANT_QR")
D = pay("1000000004", 4000, "FAILED")
E = pay("1000000005", 5000, "EXPIRED", kind="MERCHANT_QR")
F = pay("1000000006", 6000, "PENDING", reason="WAITING_FOR_CUSTOMER")
R1 = BookRefund("RF00000001", B.trans_id, "RK1", 500, "SUCCEEDED")
R2 = BookRefund("RF00000002", C.trans_id, "RK2", 3000, "SUCCEEDED")


def consistent() -> Case:
    books = Books(
        payments=(A, B, C, D, E, F),
        refunds=(R1, R2),
        charges=(
            Charge(A.trans_id, A.kind, 1000, "SUCCEEDED", 0),
            Charge(B.trans_id, B.kind, 2000, "SUCCEEDED", 500),
            Charge(C.trans_id, C.kind, 3000, "SUCCEEDED", 3000),
            Charge(D.trans_id, D.kind, 4000, "FAILED", 0),
            Charge(E.trans_id, E.kind, 5000, "EXPIRED", 0),
            Charge(F.trans_id, F.kind, 6000, "WAITING", 0),
        ),
        wallet_refunds=(
            WalletRefund(R1.refund_id, B.trans_id, 500),
            WalletRefund(R2.refund_id, C.trans_id, 3000),
        ),
    )
    r1 = SeenRefund(R1.refund_id, R1.refund_key, 500, "SUCCEEDED")
    r2 = SeenRefund(R2.refund_id, R2.refund_key, 3000, "PENDING")
    seen = [
        told(1, A, "PENDING"),
        told(2, A, "COMPLETED"),
        told(3, B, "COMPLETED"),
        told(4, B, "PARTIALLY_REFUNDED", 500, (r1,), asked="RK1"),
        told(5, C, "COMPLETED"),
        # The wallet's answer was lost: told PENDING, settled later by the worker.
        told(6, C, "COMPLETED", 0, (r2,), asked="RK2"),
        told(7, D, "FAILED"),
        told(8, E, "PENDING"),
        told(9, E, "EXPIRED"),
        told(10, F, "PENDING"),
    ]
    return books, seen


def with_payment(books: Books, trans_id: str, **changes: Any) -> Books:
    payments = tuple(replace(p, **changes) if p.trans_id == trans_id else p for p in books.payments)
    return replace(books, payments=payments)


def with_charge(books: Books, ref: str, **changes: Any) -> Books:
    charges = tuple(replace(c, **changes) if c.ref == ref else c for c in books.charges)
    return replace(books, charges=charges)


def paid_answer_now_failed(books: Books, seen: list[SeenPayment]) -> Case:
    return with_payment(books, A.trans_id, status="FAILED"), seen


def declined_answer_now_paid(books: Books, seen: list[SeenPayment]) -> Case:
    return with_payment(books, D.trans_id, status="COMPLETED"), seen


def answer_went_back(books: Books, seen: list[SeenPayment]) -> Case:
    return books, [*seen, told(11, A, "PENDING")]


def refund_vanished_between_answers(books: Books, seen: list[SeenPayment]) -> Case:
    return books, [*seen, told(11, B, "PARTIALLY_REFUNDED", 500)]


def answered_payment_missing(books: Books, seen: list[SeenPayment]) -> Case:
    return replace(books, payments=books.payments[1:]), seen


def two_payments_one_transkey(books: Books, seen: list[SeenPayment]) -> Case:
    double = replace(A, trans_id="1000000099", status="FAILED")
    return replace(books, payments=(*books.payments, double)), seen


def transkey_answered_two_transids(books: Books, seen: list[SeenPayment]) -> Case:
    return books, [*seen, replace(told(11, A, "COMPLETED"), trans_id="1000000099")]


def charged_twice(books: Books, seen: list[SeenPayment]) -> Case:
    return replace(books, charges=(*books.charges, books.charges[0])), seen


def refunded_more_than_paid(books: Books, seen: list[SeenPayment]) -> Case:
    extra = BookRefund("RF00000003", B.trans_id, "RK3", 1800, "SUCCEEDED")
    books = replace(books, refunds=(*books.refunds, extra))
    return with_payment(books, B.trans_id, refunded_amount=2300), seen


def answered_refund_missing(books: Books, seen: list[SeenPayment]) -> Case:
    return replace(books, refunds=books.refunds[1:]), seen


def answered_refund_undone(books: Books, seen: list[SeenPayment]) -> Case:
    failed = replace(R1, status="FAILED")
    books = replace(books, refunds=(failed, R2))
    return with_payment(books, B.trans_id, status="COMPLETED", refunded_amount=0), seen


def wallet_refunded_unbooked(books: Books, seen: list[SeenPayment]) -> Case:
    books = replace(
        books, wallet_refunds=(*books.wallet_refunds, WalletRefund("RF00000009", A.trans_id, 100))
    )
    return with_charge(books, A.trans_id, refunded_amount=100), seen


def wallet_charged_a_declined_payment(books: Books, seen: list[SeenPayment]) -> Case:
    return with_charge(books, D.trans_id, status="SUCCEEDED"), seen


def wallet_charge_without_payment(books: Books, seen: list[SeenPayment]) -> Case:
    stray = Charge("1000000077", "CUSTOMER_CODE", 700, "SUCCEEDED", 0)
    return replace(books, charges=(*books.charges, stray)), seen


def outcome_left_unknown(books: Books, seen: list[SeenPayment]) -> Case:
    return with_payment(books, F.trans_id, pending_reason="OUTCOME_UNKNOWN"), seen


def refund_left_pending(books: Books, seen: list[SeenPayment]) -> Case:
    pending = replace(R1, status="PENDING")
    books = replace(books, refunds=(pending, R2), wallet_refunds=books.wallet_refunds[1:])
    books = with_charge(books, B.trans_id, refunded_amount=0)
    return with_payment(books, B.trans_id, status="COMPLETED", refunded_amount=0), seen


CORRUPTIONS: list[tuple[Callable[[Books, list[SeenPayment]], Case], str]] = [
    (paid_answer_now_failed, TOLD_PAID),
    (declined_answer_now_paid, TOLD_FINAL),
    (answer_went_back, NEVER_BACK),
    (refund_vanished_between_answers, NEVER_BACK),
    (answered_payment_missing, ANSWERED_KEPT),
    (two_payments_one_transkey, ONE_PER_KEY),
    (transkey_answered_two_transids, ONE_PER_KEY),
    (charged_twice, ONE_PER_KEY),
    (refunded_more_than_paid, WITHIN_PAID),
    (answered_refund_missing, REFUNDS_KEPT),
    (answered_refund_undone, REFUNDS_KEPT),
    (wallet_refunded_unbooked, LEDGER),
    (wallet_charged_a_declined_payment, LEDGER),
    (wallet_charge_without_payment, LEDGER),
    (outcome_left_unknown, NOTHING_UNKNOWN),
    (refund_left_pending, NOTHING_UNKNOWN),
]


def test_consistent_books_pass() -> None:
    books, seen = consistent()
    assert check(books, seen) == []
    assert ledger_totals(books) == {
        "gatewayPaidYen": 6000,
        "gatewayRefundedYen": 3500,
        "walletChargedYen": 6000,
        "walletRefundedYen": 3500,
    }


@pytest.mark.parametrize(
    ("corrupt", "invariant"), CORRUPTIONS, ids=[c.__name__ for c, _ in CORRUPTIONS]
)
def test_each_corruption_is_caught(
    corrupt: Callable[[Books, list[SeenPayment]], Case], invariant: str
) -> None:
    books, seen = corrupt(*consistent())
    found = check(books, seen)
    assert invariant in {v.invariant for v in found}, [str(v) for v in found]


def test_every_invariant_has_a_corruption() -> None:
    assert {invariant for _, invariant in CORRUPTIONS} == set(INVARIANTS)
