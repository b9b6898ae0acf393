"""The gateway's books and the sandbox wallets' ledger, read without writing, and their checks.

``read_books`` takes one consistent, read-only snapshot of a database (SQLite opened with
``mode=ro``, PostgreSQL in a READ ONLY transaction). ``check`` compares that snapshot with what the
terminals were told (``SeenPayment``, one per 200 answer carrying a payment) and answers every
broken invariant as a ``Violation``; it is a pure function, so that it can be proved against
deliberately corrupted books.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

PAID: Final = frozenset({"COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"})
UNPAID_FINAL: Final = frozenset({"FAILED", "EXPIRED", "CANCELED"})
# Where a status may go next in what one terminal observes, answer after answer (the books'
# final state counting as the last observation). Anything else means a committed change was lost.
_LATER: Final[Mapping[str, frozenset[str]]] = {
    "PENDING": frozenset({"PENDING", "COMPLETED", "PARTIALLY_REFUNDED", "REFUNDED"}) | UNPAID_FINAL,
    "COMPLETED": PAID,
    "PARTIALLY_REFUNDED": frozenset({"PARTIALLY_REFUNDED", "REFUNDED"}),
    "REFUNDED": frozenset({"REFUNDED"}),
    "FAILED": frozenset({"FAILED"}),
    "EXPIRED": frozenset({"EXPIRED"}),
    "CANCELED": frozenset({"CANCELED"}),
}
_REFUND_LATER: Final[Mapping[str, frozenset[str]]] = {
    "PENDING": frozenset({"PENDING", "SUCCEEDED", "FAILED"}),
    "SUCCEEDED": frozenset({"SUCCEEDED"}),
    "FAILED": frozenset({"FAILED"}),
}

# The invariants, by the name a Violation carries.
TOLD_PAID: Final = "told-paid-stays-paid"
TOLD_FINAL: Final = "told-unpaid-stays-unpaid"
NEVER_BACK: Final = "answers-never-go-back"
ANSWERED_KEPT: Final = "answered-payments-kept"
ONE_PER_KEY: Final = "one-payment-per-transkey"
WITHIN_PAID: Final = "refunds-within-paid"
REFUNDS_KEPT: Final = "answered-refunds-kept"
LEDGER: Final = "ledger-matches-books"
NOTHING_UNKNOWN: Final = "nothing-unknown"
INVARIANTS: Final = (
    TOLD_PAID,
    TOLD_FINAL,
    NEVER_BACK,
    ANSWERED_KEPT,
    ONE_PER_KEY,
    WITHIN_PAID,
    REFUNDS_KEPT,
    LEDGER,
    NOTHING_UNKNOWN,
)


# --- the books -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BookPayment:
    """A row of the gateway's ``payments``."""

    trans_id: str
    trans_key: str
    merchant_id: int
    kind: str
    amount: int
    status: str
    pending_reason: str | None
    refunded_amount: int
    failure_code: str | None


@dataclass(frozen=True)
class BookRefund:
    """A row of the gateway's ``refunds``, with its payment's transId."""

    refund_id: str
    trans_id: str
    refund_key: str
    amount: int
    status: str


@dataclass(frozen=True)
class Charge:
    """A row of the sandbox wallets' ``sandbox_charges``: what a customer was asked to pay."""

    ref: str
    kind: str
    amount: int
    status: str
    refunded_amount: int


@dataclass(frozen=True)
class WalletRefund:
    """A row of ``sandbox_refunds``: money the wallet gave back to a customer."""

    refund_ref: str
    charge_ref: str
    amount: int


@dataclass(frozen=True)
class Books:
    """One snapshot of both sets of books."""

    payments: tuple[BookPayment, ...]
    refunds: tuple[BookRefund, ...]
    charges: tuple[Charge, ...]
    wallet_refunds: tuple[WalletRefund, ...]

    def unsettled(self) -> tuple[int, int]:
        """PENDING payments and refunds that reconciliation must still settle.

        A customer-code payment waiting for its customer's password, which the wallet still
        shows as waiting, has no deadline: it may wait for ever (the terminal that would have
        approved it was switched off), so it does not count. Everything else ends by itself —
        an unknown outcome by the wallet's answer or by giving up, a QR code by its deadline,
        a payment the customer has decided by the next query.
        """
        waiting = {c.ref for c in self.charges if c.status == "WAITING"}
        return (
            sum(
                1
                for p in self.payments
                if p.status == "PENDING"
                and not (
                    p.kind == "CUSTOMER_CODE"
                    and p.pending_reason == "WAITING_FOR_CUSTOMER"
                    and p.trans_id in waiting
                )
            ),
            sum(1 for r in self.refunds if r.status == "PENDING"),
        )


_QUERIES: Final = {
    "payments": "SELECT trans_id, trans_key, merchant_id, kind, amount, status, pending_reason, "
    "refunded_amount, failure_code FROM payments ORDER BY id",
    "refunds": "SELECT r.refund_id, p.trans_id, r.refund_key, r.amount, r.status FROM refunds r "
    "JOIN payments p ON p.id = r.payment_id ORDER BY r.id",
    "charges": "SELECT ref, kind, amount, status, refunded_amount FROM sandbox_charges ORDER BY id",
    "wallet_refunds": "SELECT refund_ref, charge_ref, amount FROM sandbox_refunds ORDER BY id",
}


def _books(rows: Mapping[str, Iterable[Sequence[Any]]]) -> Books:
    return Books(
        payments=tuple(
            BookPayment(
                str(r[0]),
                str(r[1]),
                int(r[2]),
                str(r[3]),
                int(r[4]),
                str(r[5]),
                None if r[6] is None else str(r[6]),
                int(r[7]),
                None if r[8] is None else str(r[8]),
            )
            for r in rows["payments"]
        ),
        refunds=tuple(
            BookRefund(str(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4]))
            for r in rows["refunds"]
        ),
        charges=tuple(
            Charge(str(r[0]), str(r[1]), int(r[2]), str(r[3]), int(r[4])) for r in rows["charges"]
        ),
        wallet_refunds=tuple(
            WalletRefund(str(r[0]), str(r[1]), int(r[2])) for r in rows["wallet_refunds"]
        ),
    )


def sqlite_path(database_url: str) -> str:
    """The file of a ``sqlite:///…`` URL."""
    return database_url.removeprefix("sqlite:///")


def read_books(database_url: str) -> Books:
    """Both sets of books in one read-only snapshot (SQLite or PostgreSQL)."""
    if database_url.startswith("sqlite"):
        return _read_sqlite(sqlite_path(database_url))
    return asyncio.run(_read_postgres(database_url))


def _read_sqlite(path: str) -> Books:
    # mode=ro: the checker can never repair what it is checking.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("BEGIN")  # one snapshot for all four tables
        rows = {name: conn.execute(sql).fetchall() for name, sql in _QUERIES.items()}
        conn.execute("COMMIT")
    finally:
        conn.close()
    return _books(rows)


async def _read_postgres(url: str) -> Books:
    conn = await asyncpg.connect(url)
    try:
        # REPEATABLE READ: all four queries see the same committed state.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = {
                name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in _QUERIES.items()
            }
    finally:
        await conn.close()
    return _books(rows)


_WORKER_ACTIONS: Final = (
    "SELECT action, COUNT(*) FROM audit_events WHERE request_id = 'worker' GROUP BY action"
)


def worker_actions(database_url: str) -> dict[str, int]:
    """What the background jobs changed, by audit action (payment.completed, refund.succeeded…)."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(f"file:{sqlite_path(database_url)}?mode=ro", uri=True, timeout=30)
        try:
            rows = conn.execute(_WORKER_ACTIONS).fetchall()
        finally:
            conn.close()
        return {str(action): int(count) for action, count in rows}

    async def fetch() -> dict[str, int]:
        pg = await asyncpg.connect(database_url)
        try:
            return {str(r[0]): int(r[1]) for r in await pg.fetch(_WORKER_ACTIONS)}
        finally:
            await pg.close()

    return asyncio.run(fetch())


# --- what the terminals were told ----------------------------------------------------------------


@dataclass(frozen=True)
class SeenRefund:
    """One refund as an answer showed it."""

    refund_id: str
    refund_key: str
    amount: int
    status: str


@dataclass(frozen=True)
class SeenPayment:
    """One 200 answer that carried a payment, in the order the terminal received it.

    ``asked_refund_key`` is the refundKey a CANCEL sent (its refund is in ``refunds``).
    """

    seq: int
    op: str
    client: int
    trans_key: str
    trans_id: str
    amount: int
    status: str
    pending_reason: str | None
    refunded_amount: int
    refunds: tuple[SeenRefund, ...]
    asked_refund_key: str | None = None


def seen_from_answer(
    seq: int, op: str, client: int, body: Mapping[str, Any], asked_refund_key: str | None = None
) -> SeenPayment:
    """A SeenPayment from the JSON of a Payment answer."""
    return SeenPayment(
        seq=seq,
        op=op,
        client=client,
        trans_key=str(body["transKey"]),
        trans_id=str(body["transId"]),
        amount=int(body["amount"]),
        status=str(body["status"]),
        pending_reason=body.get("pendingReason"),
        refunded_amount=int(body.get("refundedAmount") or 0),
        refunds=tuple(
            SeenRefund(str(r["refundId"]), str(r["refundKey"]), int(r["amount"]), str(r["status"]))
            for r in body.get("refunds") or ()
        ),
        asked_refund_key=asked_refund_key,
    )


# --- the checks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One broken invariant, with what broke it."""

    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


def check(books: Books, seen: Sequence[SeenPayment]) -> list[Violation]:
    """Every invariant the books and the answers must satisfy after crashes and reconciliation."""
    found: list[Violation] = []
    found += _check_answers(books, seen)
    found += _check_doubles(books, seen)
    found += _check_refund_limits(books)
    found += _check_answered_refunds(books, seen)
    found += _check_ledger(books)
    found += _check_settled(books)
    return found


def _by_trans_id(books: Books) -> dict[str, BookPayment]:
    return {p.trans_id: p for p in books.payments}


def _refunds_of(books: Books) -> dict[str, list[BookRefund]]:
    grouped: dict[str, list[BookRefund]] = defaultdict(list)
    for refund in books.refunds:
        grouped[refund.trans_id].append(refund)
    return grouped


def _check_answers(books: Books, seen: Sequence[SeenPayment]) -> list[Violation]:
    """What a terminal was told is still true, and no answer ever showed an earlier state."""
    found: list[Violation] = []
    payments = _by_trans_id(books)
    book_refunds = {r.refund_id: r for r in books.refunds}
    history: dict[str, list[SeenPayment]] = defaultdict(list)
    for answer in sorted(seen, key=lambda s: s.seq):
        history[answer.trans_id].append(answer)
    for trans_id, answers in history.items():
        book = payments.get(trans_id)
        told = answers[0]
        if book is None:
            found.append(
                Violation(
                    ANSWERED_KEPT,
                    f"transId {trans_id} (transKey "
                    f"{told.trans_key}) was answered but is not in the books",
                )
            )
            continue
        if (book.trans_key, book.amount) != (told.trans_key, told.amount):
            found.append(
                Violation(
                    ANSWERED_KEPT,
                    f"transId {trans_id} was answered as "
                    f"{told.trans_key}/{told.amount} yen, the books say "
                    f"{book.trans_key}/{book.amount} yen",
                )
            )
        if any(a.status in PAID for a in answers) and book.status not in PAID:
            found.append(
                Violation(
                    TOLD_PAID, f"transId {trans_id} was answered paid, the books say {book.status}"
                )
            )
        unpaid = {a.status for a in answers if a.status in UNPAID_FINAL}
        if unpaid and book.status not in unpaid:
            found.append(
                Violation(
                    TOLD_FINAL,
                    f"transId {trans_id} was answered "
                    f"{sorted(unpaid)}, the books say {book.status}",
                )
            )
        found += _check_order(trans_id, answers, book, book_refunds)
    return found


def _check_order(
    trans_id: str,
    answers: Sequence[SeenPayment],
    book: BookPayment,
    book_refunds: Mapping[str, BookRefund],
) -> list[Violation]:
    """Each answer, then the books, must be reachable from the answer before it."""
    found: list[Violation] = []
    states: list[tuple[str, str, int, dict[str, str]]] = [
        (
            f"answer #{a.seq} ({a.op})",
            a.status,
            a.refunded_amount,
            {r.refund_id: r.status for r in a.refunds},
        )
        for a in answers
    ]
    final_refunds = {rid: r.status for rid, r in book_refunds.items() if r.trans_id == trans_id}
    states.append(("the books", book.status, book.refunded_amount, final_refunds))
    for (was_name, was, was_refunded, was_refunds), (
        now_name,
        now,
        now_refunded,
        now_refunds,
    ) in itertools.pairwise(states):
        if now not in _LATER.get(was, frozenset()):
            found.append(
                Violation(
                    NEVER_BACK,
                    f"transId {trans_id}: {was_name} said {was}, then {now_name} said {now}",
                )
            )
        if now_refunded < was_refunded:
            found.append(
                Violation(
                    NEVER_BACK,
                    f"transId {trans_id}: {was_name} said "
                    f"{was_refunded} yen refunded, then {now_name} said "
                    f"{now_refunded}",
                )
            )
        for refund_id, status in was_refunds.items():
            later = now_refunds.get(refund_id)
            if later is None or later not in _REFUND_LATER[status]:
                found.append(
                    Violation(
                        NEVER_BACK,
                        f"transId {trans_id}: refund {refund_id} was "
                        f"{status} in {was_name}, then {later or 'absent'} in "
                        f"{now_name}",
                    )
                )
    return found


def _check_doubles(books: Books, seen: Sequence[SeenPayment]) -> list[Violation]:
    """One payment per (merchant, transKey), one transId per transKey, one charge per payment."""
    found: list[Violation] = []
    per_key: dict[tuple[int, str], list[str]] = defaultdict(list)
    for payment in books.payments:
        per_key[(payment.merchant_id, payment.trans_key)].append(payment.trans_id)
    for (merchant, key), ids in per_key.items():
        if len(ids) > 1:
            found.append(
                Violation(ONE_PER_KEY, f"merchant {merchant} transKey {key} has payments {ids}")
            )
    answered: dict[str, set[str]] = defaultdict(set)
    for answer in seen:
        answered[answer.trans_key].add(answer.trans_id)
    for key, trans_ids in answered.items():
        if len(trans_ids) > 1:
            found.append(
                Violation(
                    ONE_PER_KEY, f"transKey {key} was answered with transIds {sorted(trans_ids)}"
                )
            )
    charges: dict[str, int] = defaultdict(int)
    for charge in books.charges:
        charges[charge.ref] += 1
    for ref, count in charges.items():
        if count > 1:
            found.append(Violation(ONE_PER_KEY, f"the wallet charged transId {ref} {count} times"))
    keys: dict[tuple[str, str], int] = defaultdict(int)
    for refund in books.refunds:
        keys[(refund.trans_id, refund.refund_key)] += 1
    for (trans_id, key), count in keys.items():
        if count > 1:
            found.append(
                Violation(ONE_PER_KEY, f"transId {trans_id} refundKey {key} has {count} refunds")
            )
    return found


def _check_refund_limits(books: Books) -> list[Violation]:
    """Refunds never exceed what was paid, in the gateway's books and in the wallet's."""
    found: list[Violation] = []
    refunds = _refunds_of(books)
    for payment in books.payments:
        mine = refunds.get(payment.trans_id, [])
        succeeded = sum(r.amount for r in mine if r.status == "SUCCEEDED")
        reserved = sum(r.amount for r in mine if r.status == "PENDING")
        where = f"transId {payment.trans_id} ({payment.amount} yen, {payment.status})"
        if succeeded != payment.refunded_amount:
            found.append(
                Violation(
                    WITHIN_PAID,
                    f"{where}: refunds succeeded for {succeeded} "
                    f"yen, refundedAmount says {payment.refunded_amount}",
                )
            )
        if succeeded + reserved > payment.amount or payment.refunded_amount > payment.amount:
            found.append(
                Violation(
                    WITHIN_PAID,
                    f"{where}: {succeeded} yen refunded and "
                    f"{reserved} reserved exceed the paid amount",
                )
            )
        if (succeeded or reserved) and payment.status not in PAID:
            found.append(Violation(WITHIN_PAID, f"{where}: refunds of a payment never paid"))
        expected = (
            "REFUNDED"
            if payment.refunded_amount == payment.amount
            else "PARTIALLY_REFUNDED"
            if payment.refunded_amount > 0
            else None
        )
        if payment.status in PAID and expected is not None and payment.status != expected:
            found.append(
                Violation(
                    WITHIN_PAID,
                    f"{where}: {payment.refunded_amount} yen refunded should make it {expected}",
                )
            )
        if payment.status in ("PARTIALLY_REFUNDED", "REFUNDED") and expected is None:
            found.append(Violation(WITHIN_PAID, f"{where}: refunded status without a refund"))
    given_back: dict[str, int] = defaultdict(int)
    for wallet_refund in books.wallet_refunds:
        given_back[wallet_refund.charge_ref] += wallet_refund.amount
    for charge in books.charges:
        back = given_back.pop(charge.ref, 0)
        if back != charge.refunded_amount or back > charge.amount:
            found.append(
                Violation(
                    WITHIN_PAID,
                    f"wallet charge {charge.ref} ({charge.amount} "
                    f"yen): refunds of {back} yen, refundedAmount "
                    f"{charge.refunded_amount}",
                )
            )
        if back and charge.status != "SUCCEEDED":
            found.append(
                Violation(
                    WITHIN_PAID,
                    f"wallet charge {charge.ref} is {charge.status} but gave back {back} yen",
                )
            )
    for ref, back in given_back.items():
        found.append(
            Violation(
                WITHIN_PAID, f"the wallet refunded {back} yen of charge {ref}, which it never made"
            )
        )
    return found


def _check_answered_refunds(books: Books, seen: Sequence[SeenPayment]) -> list[Violation]:
    """Every refund a CANCEL answered is in the books, as answered or further along."""
    found: list[Violation] = []
    by_key = {(r.trans_id, r.refund_key): r for r in books.refunds}
    for answer in seen:
        if answer.asked_refund_key is None:
            continue
        told = next((r for r in answer.refunds if r.refund_key == answer.asked_refund_key), None)
        where = (
            f"CANCEL #{answer.seq} of transId {answer.trans_id} (refundKey "
            f"{answer.asked_refund_key})"
        )
        if told is None:
            found.append(Violation(REFUNDS_KEPT, f"{where} answered without its refund"))
            continue
        book = by_key.get((answer.trans_id, answer.asked_refund_key))
        if book is None:
            found.append(
                Violation(
                    REFUNDS_KEPT,
                    f"{where}: refund {told.refund_id} of "
                    f"{told.amount} yen is missing from the books",
                )
            )
            continue
        if (book.refund_id, book.amount) != (told.refund_id, told.amount):
            found.append(
                Violation(
                    REFUNDS_KEPT,
                    f"{where}: answered refund {told.refund_id} of "
                    f"{told.amount} yen, the books have {book.refund_id} of "
                    f"{book.amount} yen",
                )
            )
        if book.status not in _REFUND_LATER[told.status]:
            found.append(
                Violation(
                    REFUNDS_KEPT, f"{where}: answered {told.status}, the books say {book.status}"
                )
            )
    return found


def _check_ledger(books: Books) -> list[Violation]:
    """The wallets charged and refunded exactly what the gateway's books say."""
    found: list[Violation] = []
    payments = _by_trans_id(books)
    charges = {c.ref: c for c in books.charges}
    for made in books.charges:
        payment = payments.get(made.ref)
        if payment is None:
            found.append(
                Violation(
                    LEDGER,
                    f"the wallet has charge {made.ref} ({made.status}, "
                    f"{made.amount} yen) that the gateway has no payment for",
                )
            )
        elif payment.amount != made.amount:
            found.append(
                Violation(
                    LEDGER,
                    f"transId {made.ref}: the gateway says "
                    f"{payment.amount} yen, the wallet {made.amount}",
                )
            )
    for payment in books.payments:
        charge = charges.get(payment.trans_id)
        charged = charge is not None and charge.status == "SUCCEEDED"
        paid = payment.status in PAID
        if charged != paid:
            found.append(
                Violation(
                    LEDGER,
                    f"transId {payment.trans_id}: the gateway says "
                    f"{payment.status}, the wallet says "
                    f"{charge.status if charge else 'no charge'}",
                )
            )
        if (
            charge is not None
            and charged
            and paid
            and (charge.refunded_amount != payment.refunded_amount)
        ):
            found.append(
                Violation(
                    LEDGER,
                    f"transId {payment.trans_id}: the gateway refunded "
                    f"{payment.refunded_amount} yen, the wallet "
                    f"{charge.refunded_amount}",
                )
            )
    gateway_refunds = {r.refund_id: r for r in books.refunds if r.status == "SUCCEEDED"}
    wallet_refunds = {r.refund_ref: r for r in books.wallet_refunds}
    for refund_id in sorted(gateway_refunds.keys() - wallet_refunds.keys()):
        refund = gateway_refunds[refund_id]
        found.append(
            Violation(
                LEDGER,
                f"refund {refund_id} of {refund.amount} yen (transId "
                f"{refund.trans_id}) is SUCCEEDED but the wallet never paid it",
            )
        )
    for refund_id in sorted(wallet_refunds.keys() - gateway_refunds.keys()):
        wallet = wallet_refunds[refund_id]
        found.append(
            Violation(
                LEDGER,
                f"the wallet refunded {wallet.amount} yen as {refund_id} "
                f"(charge {wallet.charge_ref}); the gateway has no such "
                "succeeded refund",
            )
        )
    for refund_id in sorted(gateway_refunds.keys() & wallet_refunds.keys()):
        ours, theirs = gateway_refunds[refund_id], wallet_refunds[refund_id]
        if (ours.trans_id, ours.amount) != (theirs.charge_ref, theirs.amount):
            found.append(
                Violation(
                    LEDGER,
                    f"refund {refund_id}: the gateway says "
                    f"{ours.amount} yen of {ours.trans_id}, the wallet "
                    f"{theirs.amount} yen of {theirs.charge_ref}",
                )
            )
    totals = ledger_totals(books)
    if (totals["gatewayPaidYen"], totals["gatewayRefundedYen"]) != (
        totals["walletChargedYen"],
        totals["walletRefundedYen"],
    ):
        found.append(Violation(LEDGER, f"totals differ: {totals}"))
    return found


def _check_settled(books: Books) -> list[Violation]:
    """After reconciliation no outcome is unknown; a payment may only still wait for a customer."""
    found: list[Violation] = []
    charges = {c.ref: c for c in books.charges}
    for payment in books.payments:
        if payment.status != "PENDING":
            continue
        charge = charges.get(payment.trans_id)
        if payment.pending_reason != "WAITING_FOR_CUSTOMER":
            found.append(
                Violation(
                    NOTHING_UNKNOWN,
                    f"transId {payment.trans_id} is still PENDING ({payment.pending_reason})",
                )
            )
        elif charge is None or charge.status != "WAITING":
            found.append(
                Violation(
                    NOTHING_UNKNOWN,
                    f"transId {payment.trans_id} waits for the "
                    f"customer, the wallet says "
                    f"{charge.status if charge else 'no charge'}",
                )
            )
    for refund in books.refunds:
        if refund.status == "PENDING":
            found.append(
                Violation(
                    NOTHING_UNKNOWN,
                    f"refund {refund.refund_id} of transId {refund.trans_id} is still PENDING",
                )
            )
    return found


def ledger_totals(books: Books) -> dict[str, int]:
    """Money in both sets of books, in yen."""
    return {
        "gatewayPaidYen": sum(p.amount for p in books.payments if p.status in PAID),
        "gatewayRefundedYen": sum(r.amount for r in books.refunds if r.status == "SUCCEEDED"),
        "walletChargedYen": sum(c.amount for c in books.charges if c.status == "SUCCEEDED"),
        "walletRefundedYen": sum(r.amount for r in books.wallet_refunds),
    }
