"""The invariants, checked after every step and, for the books, at quiescent points.

Per step (cheap, they must hold at every step):

- every payment a terminal was told COMPLETED stays paid (COMPLETED or refunded);
- a payment told FAILED, EXPIRED or CANCELED stays so;
- no transKey has two payments (and no answer shows two transIds for one transKey);
- refunds never exceed the paid amount (succeeded and reserved ones alike), and the refunded
  amount is exactly the sum of the succeeded refunds;
- no refund that was answered to a terminal goes missing, and a succeeded one stays succeeded;
- a unit of work that failed left nothing behind, and the call it belonged to answered an error;
- a payment already final both in the books and at the wallet has the same money on both sides
  (reconciliation could not put it right any more).

The database triggers of ``database.Probe`` see each forbidden change as it is written (a paid
payment unpaid, a settled refund changed, a row deleted); ``Checker.rows`` reads the payments a
step touched, with all their refunds, once the step is over.

At quiescent points (no faults, every deadline passed, the worker run until nothing is unknown):
the wallet's ledger — what each customer was charged, refunded and given back — equals the
gateway's books, payment by payment and refund by refund.

``check_books`` is a pure function of plain rows so that it can be shown to catch corrupted data.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

PAID: Final = frozenset({"COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"})
UNPAID_FINAL: Final = frozenset({"FAILED", "EXPIRED", "CANCELED"})

TOLD_PAID: Final = "told-paid-stays-paid"
TOLD_FINAL: Final = "told-final-stays-final"
ONE_PER_KEY: Final = "one-payment-per-transkey"
WITHIN_PAID: Final = "refunds-within-paid"
ANSWERED_REFUND: Final = "answered-refund-kept"
ATOMIC: Final = "failed-unit-leaves-nothing"
FAILED_WRITE_ANSWERS_ERROR: Final = "failed-write-answers-error"
LEDGER: Final = "ledger-matches-books"
SETTLED: Final = "reconciliation-settles-everything"
NO_CRASH: Final = "no-unexpected-error"
ANSWER: Final = "answer-matches-request"


class InvariantViolation(AssertionError):
    """An invariant that does not hold; ``name`` says which."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail


@dataclass
class RefundTold:
    """A refund as the terminal last saw it in an answer."""

    amount: int
    succeeded: bool


@dataclass
class Told:
    """Everything terminals were told about one payment (by its transKey)."""

    name: str  # P<n>: stable across replays, unlike the random transId
    merchant_id: int
    trans_key: str
    amount: int
    trans_id: str | None = None
    status: str | None = None
    paid: bool = False
    final: str | None = None
    refunded: int = 0
    refunds: dict[str, RefundTold] = field(default_factory=dict)


class Checker:
    """Holds what terminals were told and checks answers and committed rows against it."""

    def __init__(self) -> None:
        self.by_trans_id: dict[str, Told] = {}
        self.by_key: dict[tuple[int, str], Told] = {}
        # The transId each (merchant, transKey) was first seen with in the books.
        self.book_keys: dict[tuple[int, str], str] = {}
        self.checks = 0
        # During a race: what each payment's terminal had been told before it (by name).
        self._baselines: dict[str, Told] | None = None

    def fail(self, name: str, detail: str) -> None:
        """Raise the violation ``name``."""
        raise InvariantViolation(name, detail)

    # -- answers ---------------------------------------------------------------------------------

    def begin_race(self) -> None:
        """Concurrent calls follow: judge each answer against what was told before them."""
        self._baselines = {}

    def end_race(self) -> None:
        """Back to one call at a time."""
        self._baselines = None

    def observe(self, told: Told, payment: Any) -> None:
        """Check one answer about ``told`` (a ``Payment``) and remember what it said.

        One call at a time, an answer must never go back on an earlier one. Within a race of
        concurrent calls their answers may arrive in any order, so each is held to what was told
        before the race, and together they must still agree (never both paid and unpaid).
        """
        self.checks += 1
        base = told
        if self._baselines is not None:
            base = self._baselines.setdefault(told.name, copy.deepcopy(told))
        if told.trans_id is None:
            other = self.by_trans_id.get(payment.trans_id)
            if other is not None and other is not told:
                self.fail(ONE_PER_KEY, f"{told.name} and {other.name} share a transId")
            told.trans_id = payment.trans_id
            self.by_trans_id[payment.trans_id] = told
        elif payment.trans_id != told.trans_id:
            self.fail(ONE_PER_KEY, f"{told.name} ({told.trans_key}) answered two transIds")
        if payment.trans_key != told.trans_key or payment.amount != told.amount:
            self.fail(ANSWER, f"{told.name}: answer is for another transKey or amount")
        status = payment.status.value
        if base.paid and status not in PAID:
            self.fail(TOLD_PAID, f"{told.name} was told paid, now answered {status}")
        if base.final is not None and status != base.final:
            self.fail(TOLD_FINAL, f"{told.name} was told {base.final}, now answered {status}")
        if payment.refunded_amount < base.refunded:
            self.fail(WITHIN_PAID, f"{told.name}: refunded amount went down in an answer")
        keys = {r.refund_key: r for r in payment.refunds}
        for key, seen in base.refunds.items():
            now = keys.get(key)
            if now is None:
                self.fail(ANSWERED_REFUND, f"{told.name}: answered refund {key} is missing")
            elif now.amount != seen.amount or (seen.succeeded and now.status.value != "SUCCEEDED"):
                self.fail(ANSWERED_REFUND, f"{told.name}: answered refund {key} changed")
        self._sums(
            told.name,
            payment.amount,
            payment.refunded_amount,
            status,
            [(r.amount, r.status.value) for r in payment.refunds],
        )
        self._remember(told, status, payment)

    def _remember(self, told: Told, status: str, payment: Any) -> None:
        told.status = status
        told.paid = told.paid or status in PAID
        if status in UNPAID_FINAL:
            if told.final is not None and told.final != status:
                self.fail(TOLD_FINAL, f"{told.name} was answered {told.final} and {status}")
            told.final = status
        if told.paid and told.final is not None:
            self.fail(TOLD_PAID, f"{told.name} was answered both paid and {told.final}")
        told.refunded = max(told.refunded, payment.refunded_amount)
        for r in payment.refunds:
            before = told.refunds.get(r.refund_key)
            if before is not None and before.amount != r.amount:
                self.fail(ANSWERED_REFUND, f"{told.name}: refund {r.refund_key} changed amount")
            succeeded = r.status.value == "SUCCEEDED" or (before is not None and before.succeeded)
            told.refunds[r.refund_key] = RefundTold(r.amount, succeeded)

    def register(self, told: Told) -> None:
        """Know a payment by its transKey before any answer names its transId."""
        self.by_key[told.merchant_id, told.trans_key] = told

    # -- committed rows --------------------------------------------------------------------------

    def rows(self, payments: Sequence[tuple[Any, ...]], refunds: Iterable[tuple[Any, ...]]) -> None:
        """Check committed payment rows (with all their refunds) against what was told."""
        by_payment: dict[int, list[tuple[Any, ...]]] = {}
        for row in refunds:
            by_payment.setdefault(int(row[0]), []).append(row)
        for pk, trans_id, merchant_id, trans_key, status, amount, refunded in payments:
            self.checks += 1
            key = (int(merchant_id), str(trans_key))
            first = self.book_keys.setdefault(key, str(trans_id))
            if first != trans_id:
                self.fail(ONE_PER_KEY, f"transKey {trans_key} has payments {first} and {trans_id}")
            mine = by_payment.get(int(pk), [])
            told = self.by_trans_id.get(str(trans_id)) or self.by_key.get(key)
            name = told.name if told is not None else str(trans_key)
            self._sums(name, int(amount), int(refunded), str(status), [(r[3], r[4]) for r in mine])
            if told is None:
                continue
            if told.paid and status not in PAID:
                self.fail(TOLD_PAID, f"{name} was told paid, the books say {status}")
            if told.final is not None and status != told.final:
                self.fail(TOLD_FINAL, f"{name} was told {told.final}, the books say {status}")
            rows_by_key = {str(r[2]): r for r in mine}
            for refund_key, seen in told.refunds.items():
                row = rows_by_key.get(refund_key)
                if row is None:
                    self.fail(ANSWERED_REFUND, f"{name}: answered refund {refund_key} not booked")
                elif int(row[3]) != seen.amount or (seen.succeeded and row[4] != "SUCCEEDED"):
                    self.fail(ANSWERED_REFUND, f"{name}: answered refund {refund_key} changed")

    def settled(
        self,
        payments: Sequence[tuple[Any, ...]],
        refunds: Iterable[tuple[Any, ...]],
        nets: Mapping[str, int | None],
    ) -> None:
        """Payments final in the books and at the wallet: their money must already agree.

        ``nets`` maps a transId to what its customer is out of pocket at the wallet, or None
        while the wallet's side may still change.
        """
        unsettled = {int(row[0]) for row in refunds if row[4] == "PENDING"}
        for pk, trans_id, _m, trans_key, status, amount, refunded in payments:
            wallet = nets.get(str(trans_id))
            if status == "PENDING" or int(pk) in unsettled or wallet is None:
                continue
            self.checks += 1
            books = int(amount) - int(refunded) if status in PAID else 0
            if books != wallet:
                self.fail(
                    LEDGER, f"{trans_key} ({status}) books {books} yen, the wallet {wallet} yen"
                )

    def _sums(
        self, name: str, amount: int, refunded: int, status: str, refunds: Sequence[tuple[int, str]]
    ) -> None:
        succeeded = sum(a for a, s in refunds if s == "SUCCEEDED")
        reserved = sum(a for a, s in refunds if s == "PENDING")
        if refunded != succeeded:
            self.fail(WITHIN_PAID, f"{name}: refunded {refunded} but refunds succeeded {succeeded}")
        if succeeded + reserved > amount or refunded > amount:
            self.fail(WITHIN_PAID, f"{name}: {succeeded}+{reserved} refunded of {amount}")
        if (succeeded or reserved) and status not in PAID:
            self.fail(WITHIN_PAID, f"{name}: refunds on a payment that is {status}")


# -- the books at a quiescent point ----------------------------------------------------------


@dataclass(frozen=True)
class WalletCharge:
    """What the wallet holds for one payment reference."""

    ref: str
    net: int  # charged minus refunded minus reversed


@dataclass(frozen=True)
class WalletRefund:
    """A refund the wallet made."""

    refund_ref: str
    ref: str
    amount: int


def check_books(
    payments: Sequence[tuple[Any, ...]],
    refunds: Sequence[tuple[Any, ...]],
    charges: Mapping[str, WalletCharge],
    wallet_refunds: Sequence[WalletRefund],
) -> list[str]:
    """Compare the gateway's books with the wallet's ledger; answers every difference.

    ``payments`` and ``refunds`` are the rows ``Probe.payments()`` and ``Probe.refunds()`` read.
    Reconciliation must have run: anything still PENDING is itself a difference.
    """
    problems: list[str] = []
    trans_of = {int(row[0]): str(row[1]) for row in payments}
    known: set[str] = set()
    for _pk, trans_id, _m, trans_key, status, amount, refunded in payments:
        known.add(str(trans_id))
        if status == "PENDING":
            problems.append(f"{SETTLED}: payment {trans_key} is still PENDING")
            continue
        books = int(amount) - int(refunded) if status in PAID else 0
        charge = charges.get(str(trans_id))
        wallet = charge.net if charge is not None else 0
        if books != wallet:
            problems.append(
                f"{LEDGER}: {trans_key} ({status}) books {books} yen, the wallet {wallet} yen"
            )
    for ref in sorted(charges):
        if ref not in known and charges[ref].net != 0:
            problems.append(f"{LEDGER}: the wallet holds {charges[ref].net} yen for unknown {ref}")
    booked = {}
    for payment_pk, refund_id, refund_key, amount, status in refunds:
        if status == "PENDING":
            problems.append(f"{SETTLED}: refund {refund_key} is still PENDING")
        elif status == "SUCCEEDED":
            booked[str(refund_id)] = (trans_of.get(int(payment_pk)), int(amount), str(refund_key))
    made = {r.refund_ref: r for r in wallet_refunds}
    for refund_id, (trans_id, amount, refund_key) in sorted(booked.items()):
        done = made.get(refund_id)
        if done is None or done.amount != amount or done.ref != trans_id:
            problems.append(f"{LEDGER}: refund {refund_key} is booked but the wallet has no match")
    for refund_ref in sorted(made):
        if refund_ref not in booked:
            problems.append(f"{LEDGER}: the wallet made refund {refund_ref} the books do not have")
    return problems
