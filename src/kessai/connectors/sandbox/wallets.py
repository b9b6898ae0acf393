"""Simulated wallets that behave like real ones, decided by the customer code they issued.

``kessai sandbox code SERVICE --outcome OUTCOME`` issues one-time codes in the service's real
format. Paying with a code gives that code's outcome:

- ``success``: charged at once;
- ``password``: the customer must confirm in the app; waits until approved or declined;
- ``declined``: refused (as for insufficient balance);
- ``timeout-success`` / ``timeout-failure``: the charge succeeds / fails, but the answer is lost,
  and queries say "in process" until ``reveal_after_seconds`` have passed;
- ``error``: the wallet answers a definite error; nothing is charged.

A code is one-time: a second use is declined. The wallets keep their own ledger
(``sandbox_charges``, ``sandbox_refunds``), separate from the gateway's books, so that the two
can be compared.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.adapters.hot import Hot, StaleRows
from kessai.adapters.repository import code_key
from kessai.clock import Clock, system_clock
from kessai.connectors.base import (
    ALL_FLOWS,
    Along,
    Flow,
    FlowNotSupported,
    Notification,
    PayRequest,
    ProviderOutcome,
    ProviderResult,
    QrRequest,
    RefundResult,
    Schedule,
)
from kessai.domain.catalog import load_catalog
from kessai.domain.errors import InvalidRequest, NotFound
from kessai.domain.identify import generate_code
from kessai.security import keyed_hash

OUTCOMES: Final = ("success", "password", "declined", "timeout-success", "timeout-failure", "error")
MAX_CODES_PER_CALL: Final = 10_000


# Charge statuses in the sandbox's own books.
WAITING: Final = "WAITING"
SUCCEEDED: Final = "SUCCEEDED"
FAILED: Final = "FAILED"
CANCELED: Final = "CANCELED"
EXPIRED: Final = "EXPIRED"


@dataclass(frozen=True, slots=True)
class ChargeView:
    """What the simulator page shows of a charge."""

    ref: str
    service_id: str
    service_name: str
    amount: int
    status: str
    merchant_name: str
    expires_at: datetime | None


def issue_codes(
    conn: Connection, service_id: str, outcome: str, count: int, now: datetime
) -> list[str]:
    """Issue ``count`` fresh one-time codes of ``service_id`` that pay with ``outcome``."""
    service = load_catalog().require(service_id)
    if outcome not in OUTCOMES:
        raise InvalidRequest(f"outcome must be one of {', '.join(OUTCOMES)}", field="outcome")
    if not 1 <= count <= MAX_CODES_PER_CALL:
        raise InvalidRequest(f"count must be 1 to {MAX_CODES_PER_CALL}", field="count")
    key = code_key(conn)
    # Seeded from the OS's randomness: codes must not be predictable from one another.
    rng = random.Random(secrets.randbits(128))  # noqa: S311
    # Some formats have only ten random digits, so after a few hundred thousand codes a fresh
    # draw can repeat one already issued (or one of the same batch): those are drawn again.
    issued: dict[str, str] = {}
    for _ in range(_MAX_DRAWS):
        fresh: dict[str, str] = {}
        for _ in range(2 * count):  # bounded: a spent format must not spin forever
            if len(issued) + len(fresh) >= count:
                break
            code = generate_code(service.service_id, rng)
            digest = keyed_hash(key, code)
            if digest not in issued:
                fresh[digest] = code
        digests = list(fresh)
        for start in range(0, len(digests), _LOOKUP_CHUNK):
            chunk = digests[start : start + _LOOKUP_CHUNK]
            for taken in conn.execute(_TAKEN_CODES, {"digests": chunk}).scalars():
                del fresh[taken]
        issued.update(fresh)
        if len(issued) == count:
            break
    else:
        raise InvalidRequest(
            f"could not draw {count} unused {service.name_en} codes: the format is nearly spent",
            field="count",
        )
    conn.execute(
        t.sandbox_codes.insert(),
        [
            {
                "code_hash": digest,
                "service_id": service.service_id,
                "outcome": outcome,
                "issued_at": now,
            }
            for digest in issued
        ],
    )
    return list(issued.values())


# Rounds of drawing before giving up on a nearly spent format, and hashes looked up per query.
_MAX_DRAWS: Final = 8
_LOOKUP_CHUNK: Final = 500
_TAKEN_CODES = sa.select(t.sandbox_codes.c.code_hash).where(
    t.sandbox_codes.c.code_hash.in_(sa.bindparam("digests", expanding=True))
)


_CHARGE = sa.select(t.sandbox_charges).where(t.sandbox_charges.c.ref == sa.bindparam("ref"))
_CHARGES = {False: Hot(_CHARGE), True: Hot(_CHARGE.with_for_update())}
# A customer code's row as a new payment's session lookup reads it along (``Along``): one round
# trip less on PostgreSQL. No row reads as None in all three.
CODE_ALONG: Final = Along(
    table=t.sandbox_codes,
    on=t.sandbox_codes.c.code_hash == sa.bindparam("code_digest"),
    columns=(
        t.sandbox_codes.c.code_hash.label("code_hash"),
        t.sandbox_codes.c.outcome.label("code_outcome"),
        t.sandbox_codes.c.used_at.label("code_used_at"),
    ),
)
# The same columns, when the sandbox reads the code itself: either row is read the same way.
_CODE = Hot(
    sa.select(*CODE_ALONG.columns).where(t.sandbox_codes.c.code_hash == sa.bindparam("digest"))
)
_SPEND_CODE = Hot(
    t.sandbox_codes.update().where(
        t.sandbox_codes.c.code_hash == sa.bindparam("digest"), t.sandbox_codes.c.used_at.is_(None)
    )
)
_INSERT_CHARGE = Hot(t.sandbox_charges.insert())


def _charge(conn: Connection, ref: str, lock: bool = False) -> Any:
    return _CHARGES[lock].run(conn, {"ref": ref}).first()


def _result_of(row: sa.Row[tuple[object, ...]], now: datetime) -> ProviderResult:
    """What a query of the provider answers for a charge, at ``now``."""
    visible_at = row.visible_at
    if isinstance(visible_at, datetime) and now < visible_at:
        return ProviderResult(ProviderOutcome.UNKNOWN, provider_ref=str(row.ref))
    status = str(row.status)
    if status == WAITING:
        expires_at = row.expires_at
        if isinstance(expires_at, datetime) and now >= expires_at:
            return ProviderResult(ProviderOutcome.EXPIRED, provider_ref=str(row.ref))
        return ProviderResult(ProviderOutcome.WAITING_FOR_CUSTOMER, provider_ref=str(row.ref))
    if status == SUCCEEDED:
        return ProviderResult(ProviderOutcome.SUCCEEDED, provider_ref=str(row.ref))
    if status == CANCELED:
        return ProviderResult(ProviderOutcome.CANCELED, provider_ref=str(row.ref))
    if status == EXPIRED:
        return ProviderResult(ProviderOutcome.EXPIRED, provider_ref=str(row.ref))
    return _settled_result(status, str(row.outcome), str(row.ref))


def _settled_result(status: str, outcome: str, ref: str) -> ProviderResult:
    """The answer for a charge that succeeded or failed (anything but SUCCEEDED is a failure)."""
    if status == SUCCEEDED:
        return ProviderResult(ProviderOutcome.SUCCEEDED, provider_ref=ref)
    return ProviderResult(
        ProviderOutcome.FAILED,
        provider_ref=ref,
        failure_code=_FAILURE_CODES.get(outcome, "DECLINED"),
        failure_message=_FAILURE_MESSAGES.get(outcome, "the wallet declined"),
    )


# The failureCode a payment carries for each way a sandbox charge can fail (docs/errors.md).
_FAILURE_CODES: Final = {
    "declined": "DECLINED",
    "timeout-failure": "DECLINED",
    "error": "PROVIDER_ERROR",
    "customer-declined": "CUSTOMER_DECLINED",
    "unknown-code": "UNKNOWN_CODE",
    "code-reused": "CODE_ALREADY_USED",
}
_FAILURE_MESSAGES: Final = {
    "declined": "the wallet declined the payment (for example, insufficient balance)",
    "timeout-failure": "the wallet did not complete the payment",
    "error": "the wallet answered with a system error; nothing was charged",
    "customer-declined": "the customer declined the payment in the wallet app",
    "unknown-code": "the wallet does not know this code",
    "code-reused": "this payment code was already used; ask the customer to refresh it",
}


class SandboxWallets:
    """The sandbox provider, as a connector. Its books live in the ``sandbox_*`` tables."""

    name = "sandbox"
    flows = ALL_FLOWS - {Flow.NOTIFICATION}
    not_supported: Final = {Flow.NOTIFICATION: "the sandbox wallets send no notifications"}
    # A new payment's session lookup may read the customer code's row (see ``InDatabase``).
    code_along = CODE_ALONG
    # The simulated wallets answer at once; these timings keep tests and demos quick while
    # still exercising every step (poll, give up, cancel).
    schedule = Schedule(
        # The sandbox's only latency is the gateway's own database queue; under a load test a
        # short timeout would turn queueing into "unknown" outcomes no real wallet would cause.
        read_timeout_seconds=30.0,
        poll_interval_seconds=1.0,
        first_poll_after_seconds=0.0,
        give_up_after_seconds=60.0,
        cancel_not_before_seconds=0.0,
        cancel_retry_interval_seconds=1.0,
        cancel_window_days=365,
    )

    def __init__(
        self,
        db: Database,
        *,
        public_url: str,
        clock: Clock = system_clock,
        reveal_after_seconds: float = 3.0,
    ) -> None:
        self.db = db
        self.public_url = public_url.rstrip("/")
        self.clock = clock
        self.reveal_after = timedelta(seconds=reveal_after_seconds)

    def in_database(self, database: object) -> bool:
        """Whether the sandbox's books are in ``database`` (they are in the gateway's own)."""
        return database is self.db

    def pay_within(
        self,
        conn: Connection,
        request: PayRequest,
        now: datetime,
        *,
        code_digest: str | None = None,
        along: object | None = None,
    ) -> ProviderResult:
        """Charge a customer code inside the caller's unit of work (``request.ref`` is new).

        ``code_digest`` is the code's keyed hash if the caller made it already, and ``along`` the
        code's row if the caller read it along with that hash (see ``InDatabase``).
        """
        digest = code_digest or keyed_hash(code_key(conn), request.code)
        # Read with the session (``code_along``), or here: the same columns either way.
        code: Any = along if along is not None and code_digest is not None else None
        if code is None:
            code = _CODE.run(conn, {"digest": digest}).first()
        if code is None or code.code_hash is None:
            outcome = "unknown-code"
        elif code.code_used_at is not None:
            outcome = "code-reused"
        else:
            outcome = str(code.code_outcome)
            # Spent by a conditional update that must change this one row: a payment racing
            # with the same code that spent it first makes it change none, and the unit fails
            # (``StaleRows``) and is run again, to find the code used. On PostgreSQL the update
            # travels with the charge and the payment (``Hot.defer``).
            _SPEND_CODE.defer(conn, {"digest": digest, "used_at": now}, expect_rows=1)
        status, visible_at = {
            "success": (SUCCEEDED, None),
            "password": (WAITING, None),
            "timeout-success": (SUCCEEDED, now + self.reveal_after),
            "timeout-failure": (FAILED, now + self.reveal_after),
        }.get(outcome, (FAILED, None))
        row = {
            "ref": request.ref,
            "service_id": request.service_id,
            "kind": "CUSTOMER_CODE",
            "amount": request.amount,
            "status": status,
            "outcome": outcome,
            "merchant_name": request.merchant_name,
            "visible_at": visible_at,
            "refunded_amount": 0,
            "created_at": now,
            "updated_at": now,
        }
        _INSERT_CHARGE.defer(conn, row)
        if visible_at is not None:
            # The wallet did the work but its answer never reached us.
            return ProviderResult(ProviderOutcome.UNKNOWN, provider_ref=request.ref)
        if status == WAITING:
            return ProviderResult(ProviderOutcome.WAITING_FOR_CUSTOMER, provider_ref=request.ref)
        # Paid or refused on the spot: answer from what was just written.
        return _settled_result(status, outcome, request.ref)

    async def pay(self, request: PayRequest) -> ProviderResult:
        """Charge a customer code according to the outcome it was issued with."""
        now = self.clock()

        def unit(conn: Connection) -> ProviderResult:
            existing = _charge(conn, request.ref)
            if existing is not None:  # the gateway retried: answer what we did the first time
                return _result_of(existing, now)
            return self.pay_within(conn, request, now)

        try:
            return await self.db.run(unit)
        except (sa.exc.IntegrityError, StaleRows):
            # The same ref raced in twice, or another payment spent the code first: run again,
            # the first one's charge is the answer, or the code is found used.
            return await self.db.run(unit)

    async def create_qr(self, request: QrRequest) -> ProviderResult:
        """Open a charge that waits for the customer to scan and approve it."""
        now = self.clock()
        token = secrets.token_urlsafe(16)

        def unit(conn: Connection) -> ProviderResult:
            existing = _charge(conn, request.ref)
            if existing is None:
                conn.execute(
                    t.sandbox_charges.insert().values(
                        ref=request.ref,
                        service_id=request.service_id,
                        kind="MERCHANT_QR",
                        amount=request.amount,
                        status=WAITING,
                        outcome=None,
                        merchant_name=request.merchant_name,
                        qr_token=token,
                        expires_at=request.expires_at,
                        refunded_amount=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
                qr_token = token
            else:
                qr_token = str(existing.qr_token)
            return ProviderResult(
                ProviderOutcome.WAITING_FOR_CUSTOMER,
                provider_ref=request.ref,
                qr_data=f"{self.public_url}/sandbox/pay/{qr_token}",
            )

        try:
            return await self.db.run(unit)
        except sa.exc.IntegrityError:
            # Two creates of one ref raced; the first one's code is the answer.
            return await self.db.run(unit)

    async def sync(self, ref: str) -> ProviderResult:
        """Answer where a charge stands (a timeout outcome stays UNKNOWN until revealed)."""
        now = self.clock()

        def unit(conn: Connection) -> ProviderResult:
            row = _charge(conn, ref)
            if row is None:
                return ProviderResult(ProviderOutcome.NOT_FOUND, provider_ref=ref)
            return _result_of(row, now)

        return await self.db.run(unit, write=False)

    async def cancel(self, ref: str) -> ProviderResult:
        """Withdraw a charge that waits for the customer, or reverse one whose answer was lost.

        A charge whose success the gateway already could see stays paid.
        """
        now = self.clock()

        def unit(conn: Connection) -> ProviderResult:
            row = _charge(conn, ref, lock=True)
            if row is None:
                return ProviderResult(ProviderOutcome.NOT_FOUND, provider_ref=ref)
            hidden = isinstance(row.visible_at, datetime) and now < row.visible_at
            if row.status == WAITING or hidden:
                # Unpaid, or an outcome the gateway never learned: the wallet withdraws the
                # payment and gives back anything it took, as a real reversal does.
                expired = isinstance(row.expires_at, datetime) and now >= row.expires_at
                status = EXPIRED if expired else CANCELED
                conn.execute(
                    t.sandbox_charges.update()
                    .where(t.sandbox_charges.c.ref == ref)
                    .values(status=status, visible_at=None, updated_at=now)
                )
                row = _charge(conn, ref)
                assert row is not None
            return _result_of(row, now)

        return await self.db.run(unit)

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Give back ``amount`` yen of a succeeded charge, once per ``refund_ref``."""
        now = self.clock()

        def unit(conn: Connection) -> RefundResult:
            done = conn.execute(
                sa.select(t.sandbox_refunds.c.amount).where(
                    t.sandbox_refunds.c.refund_ref == refund_ref
                )
            ).first()
            if done is not None:
                return RefundResult(ProviderOutcome.SUCCEEDED)
            row = _charge(conn, ref, lock=True)
            if row is None or row.status != SUCCEEDED:
                return RefundResult(
                    ProviderOutcome.FAILED, "the wallet has no completed charge to refund"
                )
            refunded = int(row.refunded_amount)
            if refunded + amount > int(row.amount):
                return RefundResult(
                    ProviderOutcome.FAILED, "the refund exceeds what the wallet charged"
                )
            conn.execute(
                t.sandbox_refunds.insert().values(
                    refund_ref=refund_ref, charge_ref=ref, amount=amount, created_at=now
                )
            )
            conn.execute(
                t.sandbox_charges.update()
                .where(t.sandbox_charges.c.ref == ref)
                .values(refunded_amount=refunded + amount, updated_at=now)
            )
            return RefundResult(ProviderOutcome.SUCCEEDED)

        return await self.db.run(unit)

    async def refund_sync(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Whether the sandbox made the refund ``refund_ref`` (NOT_FOUND: it never arrived)."""

        def unit(conn: Connection) -> RefundResult:
            done = conn.execute(
                sa.select(t.sandbox_refunds.c.charge_ref).where(
                    t.sandbox_refunds.c.refund_ref == refund_ref
                )
            ).first()
            if done is None:
                return RefundResult(ProviderOutcome.NOT_FOUND, "the sandbox has no such refund")
            return RefundResult(ProviderOutcome.SUCCEEDED)

        return await self.db.run(unit, write=False)

    async def parse_notification(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> Notification:
        """The sandbox sends no notifications."""
        raise FlowNotSupported(self.not_supported[Flow.NOTIFICATION])

    def for_account(self, account: str) -> SandboxWallets:
        """The sandbox has one built-in account: itself."""
        return self


def settle(conn: Connection, ref: str, approve: bool, now: datetime) -> str:
    """Approve or decline a charge that waits for the customer; answers its new status.

    Used by ``kessai sandbox approve|decline`` and by the simulator page. A charge whose QR code
    expired can no longer be approved, as with a real wallet.
    """
    row = _charge(conn, ref, lock=True)
    if row is None:
        raise NotFound(f"the sandbox has no charge {ref}", field="transId")
    if row.status != WAITING:
        return str(row.status)
    if isinstance(row.expires_at, datetime) and now >= row.expires_at:
        status, outcome = EXPIRED, None
    else:
        status, outcome = (SUCCEEDED, "success") if approve else (FAILED, "customer-declined")
    conn.execute(
        t.sandbox_charges.update()
        .where(t.sandbox_charges.c.ref == ref)
        .values(status=status, outcome=outcome, updated_at=now)
    )
    return status


def charge_by_token(conn: Connection, token: str) -> ChargeView | None:
    """The charge behind a sandbox qrData URL, for the simulator page."""
    row = conn.execute(
        sa.select(t.sandbox_charges).where(t.sandbox_charges.c.qr_token == token)
    ).first()
    if row is None:
        return None
    service = load_catalog().get(str(row.service_id))
    return ChargeView(
        ref=str(row.ref),
        service_id=str(row.service_id),
        service_name=service.name if service else str(row.service_id),
        amount=int(row.amount),
        status=str(row.status),
        merchant_name=str(row.merchant_name),
        expires_at=row.expires_at if isinstance(row.expires_at, datetime) else None,
    )


def ledger(conn: Connection) -> list[dict[str, object]]:
    """Every charge with its net amount, for comparing the sandbox's books with the gateway's."""
    rows = conn.execute(sa.select(t.sandbox_charges).order_by(t.sandbox_charges.c.id)).all()
    return [
        {
            "ref": row.ref,
            "serviceId": row.service_id,
            "status": row.status,
            "amount": row.amount,
            "refundedAmount": row.refunded_amount,
        }
        for row in rows
    ]
