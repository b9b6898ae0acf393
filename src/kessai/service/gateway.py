"""The nine operations of the terminal API, as the HTTP layer calls them.

Each operation is one to three units of work (one database hop each) around at most one provider
call, and never holds a transaction open while a provider is asked. A payment is written as
PENDING (outcome unknown) *before* its provider is called, so a crash between the two leaves a
payment that PAYCHECK/STATUS resolve, never a charge the books do not know. A provider whose books
are in our own database (the sandbox) is asked inside the unit that writes the payment instead:
the charge and the payment then commit together or not at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar, cast

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import repository as repo
from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.adapters.hot import Hot, StaleRows
from kessai.adapters.schema import UTCDateTime
from kessai.clock import Clock, system_clock
from kessai.config import Settings
from kessai.connectors import routing
from kessai.connectors.base import (
    Connector,
    Flow,
    InDatabase,
    Notification,
    NotificationRejected,
    PayRequest,
    ProviderOutcome,
    ProviderResult,
    QrRequest,
    RefundResult,
    Schedule,
)
from kessai.domain import fields
from kessai.domain.catalog import Service, load_catalog
from kessai.domain.errors import (
    Conflict,
    InternalError,
    InvalidRequest,
    KessaiError,
    NotFound,
    RateLimited,
    UnprocessableCode,
)
from kessai.domain.identify import Identification, identify
from kessai.domain.model import (
    VOUCHER_EDITABLE_STATUSES,
    Payment,
    PaymentKind,
    PaymentStatus,
    PendingReason,
    Refund,
    RefundStatus,
    require_refundable,
)
from kessai.security import (
    keyed_hash,
    mask_code,
    new_refund_id,
    new_session_token,
    new_trans_id,
    token_hash,
    verify_secret,
)
from kessai.service import events, sessions
from kessai.service.sessions import TerminalContext

log = logging.getLogger("kessai.gateway")
T = TypeVar("T")
S = PaymentStatus

# Added to the longest provider call for the lease of a claimed check (database time, clocks).
LEASE_MARGIN_SECONDS: Final = 5.0
# How often a unit that lost a race to a concurrent writer is run again before giving up.
MAX_RACE_RETRIES: Final = 8
# An argon2 hash compared against when the mid is unknown, so that the answer takes as long as
# for a known mid with a wrong password.
_DUMMY_HASH: Final = (
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$"
    "2Fqkh8Wj3UsxDM3Tuf6IfYQ7EmVN1ZhFqWv7Y3r6sCk"
)


@dataclass(frozen=True, slots=True)
class LoginResult:
    """The answer to LOGIN."""

    session_token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class PaymentView:
    """A payment and what the answer shows of its service."""

    payment: Payment
    service: Service | None
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class _Keyed:
    """A new payment's keyed hashes, worked out before its unit, with the key they used."""

    key: str
    request_hash: str
    # The customer's code (REQUEST), as the sandbox looks it up; None for GET-QR-CODE.
    code_digest: str | None


@dataclass(frozen=True, slots=True)
class _Hop:
    """What the first unit of REQUEST or GET-QR-CODE found or wrote."""

    stored: repo.StoredPayment
    ctx: TerminalContext
    replayed: bool
    # The payment as recorded after an in-database provider answered within the same unit.
    settled: Payment | None = None


class Gateway:
    """The terminal API's operations over one database and a set of connectors."""

    def __init__(
        self,
        db: Database,
        connectors: Mapping[str, Connector],
        settings: Settings,
        *,
        clock: Clock = system_clock,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.db = db
        # The pooled client real connectors share; closed with the gateway.
        self.http = http
        self.connectors = dict(connectors)
        self.settings = settings
        self.clock = clock
        self.catalog = load_catalog()
        # Per connector name: the connector last seen, and itself if its books are in our database.
        self._local: dict[str, tuple[Connector | None, InDatabase | None]] = {}
        # The database's key for customer codes, as the last unit read it (it never changes once
        # created): with it, a new payment's keyed hashes are made before its unit (``_keyed``).
        self._code_key: str | None = None

    # -- plumbing ---------------------------------------------------------------------------

    async def _retrying(self, unit: Callable[[Connection], T]) -> T:
        """Run a unit that may lose a race (a duplicate key, a stale version or row): run it again.

        A racing writer that committed first is then seen, so the retry decides on top of it.
        """
        for _ in range(MAX_RACE_RETRIES):
            try:
                return await self.db.run(unit)
            except (sa.exc.IntegrityError, repo.StaleWrite, StaleRows):
                continue
        return await self.db.run(unit)

    def _connector(self, name: str) -> Connector:
        """The connector a payment recorded: ``sandbox``, or ``<provider>:<account id>``."""
        kind, _, account = name.partition(routing.SEPARATOR)
        connector = self.connectors.get(kind)
        if connector is None:
            raise UnprocessableCode(
                f"no connector named {kind} is configured", code="SERVICE_NOT_SUPPORTED"
            )
        return connector.for_account(account) if account else connector

    def check_lease(self, calls_in_a_row: int = 1) -> timedelta:
        """How long a claim to ask a provider about a payment keeps others from doing the same.

        Longer than any provider call (each is bounded by ``provider_timeout_seconds``), so
        that a second resolver never acts on a reading older than an answer still in flight.
        """
        seconds = self.settings.provider_timeout_seconds * calls_in_a_row + LEASE_MARGIN_SECONDS
        return timedelta(seconds=seconds)

    def _timeout(self, connector: Connector) -> float:
        """How long one call may take: the provider's own read timeout, within our bound."""
        schedule: Schedule | None = getattr(connector, "schedule", None)
        bound = self.settings.provider_timeout_seconds
        return min(bound, schedule.read_timeout_seconds) if schedule is not None else bound

    def _give_up_seconds(self, connector: Connector) -> float:
        """When an unknown outcome is cancelled: the sooner of the provider's rule and ours."""
        schedule: Schedule | None = getattr(connector, "schedule", None)
        ours = float(self.settings.provider_give_up_seconds)
        if schedule is None:
            return ours
        # A cancel sent before the provider accepts one (WeChat Pay: 15 s) would be refused.
        return max(min(ours, schedule.give_up_after_seconds), schedule.cancel_not_before_seconds)

    async def _call(self, call: Callable[[], Any], what: str, connector: Connector) -> Any:
        """Ask a provider, bounded in time; any failure to get an answer is UNKNOWN, not FAILED.

        A connector that refuses outright (a KessaiError such as SERVICE_NOT_SUPPORTED) has
        definitely charged nothing: that is a FAILED result carrying the refusal's code.
        """
        try:
            return await asyncio.wait_for(call(), timeout=self._timeout(connector))
        except KessaiError as exc:
            log.warning("provider refused %s: %s", what, exc.code)
            if what in ("pay", "create_qr"):
                return ProviderResult(
                    ProviderOutcome.FAILED, failure_code=exc.code, failure_message=exc.message
                )
            if what == "refund":
                return RefundResult(ProviderOutcome.FAILED, exc.message)
            return None
        except Exception as exc:  # the outcome is unknown: never report it as failed
            log.warning("provider call %s gave no answer: %s", what, type(exc).__name__)
            return None

    async def _auth_unit(
        self, token: str, fn: Callable[[Connection, TerminalContext], T], *, write: bool = True
    ) -> T:
        digest = token_hash(token)
        now = self.clock()

        def unit(conn: Connection) -> T | _Refused:
            ctx = sessions.authenticate(conn, digest, now, self.settings)
            if write:
                return fn(conn, ctx)
            try:
                return fn(conn, ctx)
            except KessaiError as exc:
                # A read that ends in an error (an unknown transId) still used the session: its
                # touch must commit, or a terminal that keeps polling would be idle-timed out.
                return _Refused(exc)

        answer = await self.db.run(unit, write=write)
        if isinstance(answer, _Refused):
            raise answer.error
        return answer

    def _view(self, payment: Payment, replayed: bool = False) -> PaymentView:
        return PaymentView(payment, self.catalog.get(payment.service_id), replayed)

    # -- LOGIN / LOGOUT -----------------------------------------------------------------------

    async def login(
        self, *, mid: str, key: str, password: str, os_value: str, request_id: str
    ) -> LoginResult:
        """LOGIN: open the terminal's session (one device per mid)."""
        fields.check("mid", mid)
        fields.check("key", key)
        fields.check("password", password)
        fields.check("os", os_value)
        now = self.clock()

        def first(conn: Connection) -> sessions.LoginSubject:
            subject = sessions.read_login_subject(conn, os_value, mid)
            if subject.terminal_id is not None:
                sessions.check_login_lock(conn, subject.terminal_id, now)
            return subject

        subject = await self.db.run(first, write=False)
        # argon2 takes tens of milliseconds: keep it off the event loop and off the database
        # thread.
        password_ok = await asyncio.to_thread(
            verify_secret, subject.password_hash or _DUMMY_HASH, password
        )
        if subject.terminal_id is None:
            raise sessions.wrong_credentials()
        token = new_session_token()
        terminal_id = subject.terminal_id

        def second(conn: Connection) -> sessions.LoginOutcome:
            return sessions.finish_login(
                conn,
                terminal_id=terminal_id,
                password_ok=password_ok,
                device_key=key,
                os_value=os_value,
                token_digest=token_hash(token),
                now=now,
                settings=self.settings,
                request_id=request_id,
            )

        try:
            outcome = await self.db.run(second)
        except sa.exc.IntegrityError as exc:
            # Another LOGIN for this mid won the race for the live-session slot.
            raise Conflict(
                "this mid is logging in on another device at the same moment",
                code="TERMINAL_IN_USE",
                field="key",
                retryable=True,
            ) from exc
        if outcome.error is not None:
            raise outcome.error
        assert outcome.session_expires_at is not None
        return LoginResult(token, outcome.session_expires_at)

    async def logout(self, token: str, request_id: str) -> None:
        """LOGOUT: end the caller's session."""
        now = self.clock()
        digest = token_hash(token)
        await self.db.run(
            lambda conn: sessions.logout(conn, digest, now, self.settings, request_id)
        )

    # -- REQUEST ------------------------------------------------------------------------------

    def _service_for_code(
        self, code: str, service_id: str | None
    ) -> tuple[Service, Identification]:
        identification = identify(code)
        service = self.catalog.require(identification.service_id)
        if service_id is not None:
            fields.check("serviceId", service_id)
            claimed = self.catalog.require(service_id)
            if claimed.service_id != service.service_id:
                raise InvalidRequest(
                    f"serviceId {claimed.service_id} ({claimed.name}) does not match the code, "
                    f"which is a {service.name} code ({service.service_id})",
                    code="SERVICE_MISMATCH",
                    field="serviceId",
                )
        # The code named the service unless the terminal did: the error points at what was sent.
        self._require_active(service, field="serviceId" if service_id is not None else "code")
        if not service.supports_customer_code:
            raise UnprocessableCode(
                f"{service.name} does not accept customer-presented codes here",
                code="SERVICE_NOT_SUPPORTED",
                field="code",
            )
        return service, identification

    @staticmethod
    def _require_active(service: Service, field: str = "serviceId") -> None:
        if not service.active:
            raise UnprocessableCode(
                f"{service.name} is no longer offered",
                code="SERVICE_NOT_SUPPORTED",
                field=field,
            )

    def _in_database(self, name: str) -> InDatabase | None:
        """The connector ``name`` when its books are in our own database (the sandbox)."""
        connector = self.connectors.get(name)
        known = self._local.get(name)
        if known is not None and known[0] is connector:
            return known[1]
        # The class itself must offer it: a wrapper that forwards unknown attributes to a
        # sandbox inside (as fault-injecting test doubles do) is asked the ordinary way.
        offers = callable(getattr(type(connector), "pay_within", None))
        local = cast(InDatabase, connector) if offers else None
        if local is not None and not local.in_database(self.db):
            local = None
        self._local[name] = (connector, local)
        return local

    @staticmethod
    def _keyed(key: str, fingerprint: str, code: str | None) -> _Keyed:
        """A new payment's keyed hashes under ``key``: its request's and its customer code's.

        Made before the payment's unit is queued once the database's code key is known, so that
        the hashing is done on the event loop rather than in the unit, while the writer holds
        the lock every process waits for. The unit uses them only if the key it reads is the one
        they were made with, and otherwise makes them again itself.
        """
        code_digest = None if code is None else keyed_hash(key, code)
        return _Keyed(key, keyed_hash(key, fingerprint), code_digest)

    def _new_payment_unit(
        self,
        trans_key: str,
        digest: str,
        now: datetime,
        service: Service,
        flow: Flow,
        build: Callable[[TerminalContext, str], Payment],
        fingerprint: str,
        request_id: str,
        within: Callable[
            [Connection, InDatabase, Payment, TerminalContext, str | None, object | None],
            ProviderResult,
        ]
        | None = None,
        code: str | None = None,
    ) -> Callable[[Connection], _Hop]:
        """The first hop of REQUEST and GET-QR-CODE: replay, conflict, or a new PENDING payment.

        The session lookup also reads the merchant's account for ``service``, from which the
        connector is chosen (``kessai.connectors.routing``, the sandbox by default); a ``flow``
        the provider lacks is refused in this unit, before any payment exists. With ``within``,
        a provider whose books are in our database is asked in the same unit (its answer
        recorded there too), so the payment and the charge commit together; it is given the
        keyed hash of the customer's ``code``. ``build`` makes the payment with ``now`` as its
        creation time.

        Whatever needs no database is done here, before the unit is queued: the first transId
        drawn and, once the code key is known, the keyed hashes (``_keyed``). With those, the
        session lookup also reads the customer code's row for the sandbox (``code_along``), in
        case the payment goes there: on PostgreSQL, one round trip less.
        """
        runs = 0
        first_trans_id = new_trans_id()
        known = self._code_key
        ahead = None if known is None else self._keyed(known, fingerprint, code)
        code_digest = ahead.code_digest if ahead is not None else None
        sandbox = self._in_database(routing.SANDBOX) if within is not None else None
        along = sandbox.code_along if sandbox is not None and code_digest is not None else None
        along_params = {"code_digest": code_digest} if along is not None else None

        def unit(conn: Connection) -> _Hop:
            nonlocal runs
            runs += 1
            ctx, new_pk, along_row = sessions.authenticate_for_payment(
                conn,
                digest,
                now,
                self.settings,
                service.service_id,
                along=along,
                along_params=along_params,
            )
            key = self._code_key = repo.code_key(conn)
            keyed = ahead if ahead is not None and ahead.key == key else None
            if keyed is None:
                # The code's row read along was looked up by a hash under another key.
                along_row = None
                keyed = self._keyed(key, fingerprint, code)
            request_hash = keyed.request_hash
            # No lookup on the first run: a transKey or transId already taken fails the insert
            # on its unique constraint, and the unit, run again, then finds what is there.
            existing = (
                repo.find_payment(conn, ctx.merchant_id, trans_key=trans_key) if runs > 1 else None
            )
            if existing is not None:
                if existing.request_hash != request_hash:
                    raise Conflict(
                        f"transKey {trans_key} was already used with other parameters",
                        code="IDEMPOTENCY_CONFLICT",
                        field="transKey",
                    )
                return _Hop(existing, ctx, True)
            # A run after the first draws afresh: the first transId may be the one that clashed.
            trans_id = first_trans_id if runs == 1 else new_trans_id()
            payment = build(ctx, trans_id)
            provider = routing.choose(
                ctx.account_of(service.service_id),
                service.service_id,
                flow,
                self.connectors,
                sandbox=self.settings.sandbox_enabled,
            )
            local = self._in_database(provider) if within is not None else None
            move: _Move | None = None
            final = payment
            if within is not None and local is not None:
                # Asked before the payment row is written, so that the row is written once, in
                # its final state; the charge and the row commit together all the same.
                # The row read along is the sandbox's: another provider in our database reads
                # its own.
                read = along_row if local is sandbox else None
                answer = within(conn, local, payment, ctx, keyed.code_digest, read)
                move = _decide(payment, answer, now, self.settings)
                final = move.after or payment
            pk = repo.insert_payment(
                conn,
                final,
                provider=provider,
                request_hash=request_hash,
                pk=new_pk,
                **(move.extra if move is not None else {}),
            )
            created = repo.audit_entry(
                at=payment.created_at,
                actor=ctx.actor,
                action="payment.created",
                merchant_id=ctx.merchant_id,
                terminal_id=ctx.terminal_id,
                payment_pk=pk,
                to_status=payment.status.value,
                detail={
                    "kind": payment.kind.value,
                    "amount": payment.amount,
                    "serviceId": payment.service_id,
                    "code": payment.code_masked,
                },
                request_id=request_id,
            )
            if move is None or move.after is None:
                repo.append_audit(conn, created)
            else:
                # Settled within the unit: both entries in one statement, creation first.
                actor = f"provider:{provider}"
                _record_move(
                    conn,
                    pk,
                    payment,
                    move.after,
                    now,
                    actor,
                    request_id,
                    listening=ctx.listening,
                    created=created,
                )
            if move is None:
                stored = repo.StoredPayment(pk, payment, provider, None, None, request_hash)
                return _Hop(stored, ctx, False)
            ref = move.extra.get("provider_ref")
            stored = repo.StoredPayment(pk, final, provider, ref, now, request_hash)
            return _Hop(stored, ctx, False, final)

        return unit

    async def _first_hop(self, unit: Callable[[Connection], _Hop]) -> _Hop:
        # A racing duplicate with the same transKey that committed first makes this unit fail on
        # the unique constraint; run again, it then finds that payment and replays it.
        return await self._retrying(unit)

    async def request(
        self,
        token: str,
        *,
        trans_key: str,
        amount: int,
        code: str,
        service_id: str | None,
        request_id: str,
    ) -> PaymentView:
        """REQUEST: charge the code the terminal scanned from the customer's phone."""
        fields.check("transKey", trans_key)
        fields.check_amount(amount)
        service, _ = self._service_for_code(code, service_id)
        now = self.clock()
        digest = token_hash(token)
        fingerprint = f"CUSTOMER_CODE|{amount}|{service.service_id}|{code}"
        masked = mask_code(code)

        def build(ctx: TerminalContext, trans_id: str) -> Payment:
            return Payment(
                trans_id=trans_id,
                trans_key=trans_key,
                merchant_id=ctx.merchant_id,
                terminal_id=ctx.terminal_id,
                kind=PaymentKind.CUSTOMER_CODE,
                service_id=service.service_id,
                amount=amount,
                status=S.PENDING,
                pending_reason=PendingReason.OUTCOME_UNKNOWN,
                code_masked=masked,
                created_at=now,
                updated_at=now,
            )

        def ask(payment: Payment, ctx: TerminalContext) -> PayRequest:
            return PayRequest(
                ref=payment.trans_id,
                service_id=service.service_id,
                amount=amount,
                code=code,
                merchant_name=ctx.merchant_name,
            )

        def pay_within(
            conn: Connection,
            local: InDatabase,
            payment: Payment,
            ctx: TerminalContext,
            code_digest: str | None,
            along: object | None,
        ) -> ProviderResult:
            request = ask(payment, ctx)
            return local.pay_within(conn, request, now, code_digest=code_digest, along=along)

        unit = self._new_payment_unit(
            trans_key,
            digest,
            now,
            service,
            Flow.PAY,
            build,
            fingerprint,
            request_id,
            within=pay_within,
            code=code,
        )
        hop = await self._first_hop(unit)
        stored, ctx, replayed = hop.stored, hop.ctx, hop.replayed
        if hop.settled is not None:
            return self._view(hop.settled)
        if replayed:
            if stored.payment.kind is not PaymentKind.CUSTOMER_CODE:
                raise Conflict(
                    f"transKey {trans_key} belongs to a QR-code payment",
                    code="IDEMPOTENCY_CONFLICT",
                    field="transKey",
                )
            return self._view(await self._refresh(stored, request_id), replayed=True)
        connector = self._connector(stored.provider)
        pay = ask(stored.payment, ctx)
        result = await self._call(lambda: connector.pay(pay), "pay", connector)
        payment = await self._apply(
            stored.pk, ctx.merchant_id, result, f"provider:{stored.provider}", request_id
        )
        return self._view(payment)

    # -- applying provider answers ------------------------------------------------------------

    async def _apply(
        self,
        pk: int,
        merchant_id: int,
        result: ProviderResult | None,
        actor: str,
        request_id: str,
        *,
        expiring: bool = False,
        giving_up: bool = False,
    ) -> Payment:
        """Record what the provider said about a payment, in one unit with its audit entry."""
        now = self.clock()

        def unit(conn: Connection) -> Payment:
            # One read by primary key: this runs on every REQUEST and every provider answer.
            stored = repo.load_payment(conn, pk, lock=True)
            if stored.payment.merchant_id != merchant_id:
                raise InternalError(f"payment {pk} is not merchant {merchant_id}'s")
            return _apply_result(
                conn,
                stored,
                result,
                now,
                actor,
                request_id,
                self.settings,
                expiring=expiring,
                giving_up=giving_up,
            )

        return await self._retrying(unit)

    async def _refresh(self, stored: repo.StoredPayment, request_id: str) -> Payment:
        """For a PENDING payment whose last provider answer is stale, ask the provider again."""
        payment = stored.payment
        if payment.status is not S.PENDING:
            return payment
        now = self.clock()
        interval = timedelta(milliseconds=self.settings.provider_recheck_interval_ms)
        pk = stored.pk

        def claim(conn: Connection) -> str | None:
            # Claiming the check in the database lets only one of many concurrent pollers (on
            # any instance, or a worker) ask the provider per interval. The claim is a lease
            # that outlasts the call: nobody else may decide to cancel on an older reading
            # while this answer is still on its way (recording an answer ends the lease).
            result = _CLAIM_CHECK.run(
                conn,
                {
                    "b_pk": pk,
                    "b_due": now - interval,
                    "provider_checked_at": now + self.check_lease(),
                },
            )
            if result.rowcount != 1:
                return None
            return repo.merchant_name(conn, payment.merchant_id)

        merchant_name = await self.db.run(claim)
        if merchant_name is None:
            return payment
        return await self.resolve(stored, merchant_name, request_id)

    async def resolve(
        self, stored: repo.StoredPayment, merchant_name: str, request_id: str
    ) -> Payment:
        """Bring a PENDING payment (already claimed for a check) closer to its final state.

        An expired QR code is withdrawn at the provider; an outcome still unknown after the
        give-up time is cancelled (reversed) at the provider and FAILED only once the provider
        confirms the cancel; anything else is a plain query.
        """
        payment = stored.payment
        now = self.clock()
        connector = self._connector(stored.provider)
        ref = payment.trans_id
        expiring = (
            payment.kind is PaymentKind.MERCHANT_QR
            and payment.qr_expires_at is not None
            and now >= payment.qr_expires_at
        )
        # A customer who never confirms in the wallet (walked away, paid in cash) must not be
        # charged later by a confirmation nobody waits for: a customer-code payment still
        # waiting at the give-up time is withdrawn like one whose outcome is unknown. A QR code
        # waiting to be scanned ends at its own deadline instead (``expiring``).
        given_up_on = payment.pending_reason is PendingReason.OUTCOME_UNKNOWN or (
            payment.kind is PaymentKind.CUSTOMER_CODE
            and payment.pending_reason is PendingReason.WAITING_FOR_CUSTOMER
        )
        giving_up = (
            not expiring
            and given_up_on
            and (now - payment.created_at).total_seconds() >= self._give_up_seconds(connector)
        )
        result: ProviderResult | None
        if expiring or giving_up:
            # Withdraw at the provider first: the payment ends only once the provider confirms
            # that nobody paid it meanwhile (or that the charge was reversed).
            result = await self._call(lambda: connector.cancel(ref), "cancel", connector)
        elif payment.kind is PaymentKind.MERCHANT_QR and payment.qr_data is None:
            qr = self._qr_request(payment, merchant_name)
            result = await self._call(lambda: connector.create_qr(qr), "create_qr", connector)
        else:
            result = await self._call(lambda: connector.sync(ref), "sync", connector)
        return await self._apply(
            stored.pk,
            payment.merchant_id,
            result,
            f"provider:{stored.provider}",
            request_id,
            expiring=expiring,
            giving_up=giving_up,
        )

    # -- PAYCHECK / STATUS -------------------------------------------------------------------

    async def paycheck(self, token: str, trans_id: str, request_id: str) -> PaymentView:
        """PAYCHECK: a payment by its transId, asking the provider when it is still PENDING."""
        fields.check("transId", trans_id)
        return await self._lookup(token, request_id, trans_id=trans_id)

    async def status(self, token: str, trans_key: str, request_id: str) -> PaymentView:
        """STATUS: a payment by the transKey the terminal generated."""
        fields.check("transKey", trans_key)
        return await self._lookup(token, request_id, trans_key=trans_key)

    async def _lookup(
        self,
        token: str,
        request_id: str,
        *,
        trans_id: str | None = None,
        trans_key: str | None = None,
    ) -> PaymentView:
        def fn(conn: Connection, ctx: TerminalContext) -> repo.StoredPayment:
            stored = repo.find_payment(
                conn, ctx.merchant_id, trans_id=trans_id, trans_key=trans_key
            )
            if stored is None:
                raise _not_found(trans_id, trans_key)
            return stored

        stored = await self._auth_unit(token, fn, write=False)
        return self._view(await self._refresh(stored, request_id))

    async def find_for_terminal(self, token: str, trans_id: str) -> Payment:
        """A payment by transId without asking the provider (for the QR image routes)."""
        fields.check("transId", trans_id)

        def fn(conn: Connection, ctx: TerminalContext) -> Payment:
            stored = repo.find_payment(conn, ctx.merchant_id, trans_id=trans_id)
            if stored is None:
                raise _not_found(trans_id, None)
            return stored.payment

        return await self._auth_unit(token, fn, write=False)

    # -- GET-QR-CODE --------------------------------------------------------------------------

    @staticmethod
    def _qr_request(payment: Payment, merchant_name: str) -> QrRequest:
        assert payment.qr_expires_at is not None
        return QrRequest(
            ref=payment.trans_id,
            service_id=payment.service_id,
            amount=payment.amount,
            expires_at=payment.qr_expires_at,
            merchant_name=merchant_name,
        )

    async def get_qr_code(
        self,
        token: str,
        *,
        trans_key: str,
        amount: int,
        service_id: str,
        ttl_seconds: int | None,
        request_id: str,
    ) -> PaymentView:
        """GET-QR-CODE: a dynamic QR code for one payment that the customer scans."""
        fields.check("transKey", trans_key)
        fields.check_amount(amount)
        fields.check("serviceId", service_id)
        service = self.catalog.require(service_id)
        self._require_active(service)
        if not service.supports_merchant_qr:
            raise UnprocessableCode(
                f"{service.name} does not offer merchant-presented QR codes here",
                code="SERVICE_NOT_SUPPORTED",
                field="serviceId",
            )
        s = self.settings
        ttl = s.qr_ttl_default_seconds if ttl_seconds is None else ttl_seconds
        if isinstance(ttl, bool) or not s.qr_ttl_min_seconds <= ttl <= s.qr_ttl_max_seconds:
            raise InvalidRequest(
                f"ttlSeconds must be {s.qr_ttl_min_seconds} to {s.qr_ttl_max_seconds}",
                field="ttlSeconds",
            )
        now = self.clock()
        digest = token_hash(token)
        fingerprint = f"MERCHANT_QR|{amount}|{service.service_id}"
        expires_at = now + timedelta(seconds=ttl)

        def build(ctx: TerminalContext, trans_id: str) -> Payment:
            return Payment(
                trans_id=trans_id,
                trans_key=trans_key,
                merchant_id=ctx.merchant_id,
                terminal_id=ctx.terminal_id,
                kind=PaymentKind.MERCHANT_QR,
                service_id=service.service_id,
                amount=amount,
                status=S.PENDING,
                # Waiting for the customer only once the provider has made the code: a call
                # left unanswered must not show a terminal a wait with nothing to scan.
                pending_reason=PendingReason.OUTCOME_UNKNOWN,
                qr_expires_at=expires_at,
                created_at=now,
                updated_at=now,
            )

        unit = self._new_payment_unit(
            trans_key,
            digest,
            now,
            service,
            Flow.CREATE_QR,
            build,
            fingerprint,
            request_id,
        )
        hop = await self._first_hop(unit)
        stored, ctx, replayed = hop.stored, hop.ctx, hop.replayed
        if replayed:
            if stored.payment.kind is not PaymentKind.MERCHANT_QR:
                raise Conflict(
                    f"transKey {trans_key} belongs to a customer-code payment",
                    code="IDEMPOTENCY_CONFLICT",
                    field="transKey",
                )
            if stored.payment.status is S.PENDING and stored.payment.qr_data is None:
                # A retry racing the first request: creating the code is idempotent at the
                # provider, so ask for it rather than answer a QR payment without a code.
                connector = self._connector(stored.provider)
                qr = self._qr_request(stored.payment, ctx.merchant_name)
                result = await self._call(lambda: connector.create_qr(qr), "create_qr", connector)
                actor = f"provider:{stored.provider}"
                payment = await self._apply(stored.pk, ctx.merchant_id, result, actor, request_id)
                return self._view(payment, replayed=True)
            return self._view(await self._refresh(stored, request_id), replayed=True)
        connector = self._connector(stored.provider)
        qr = QrRequest(
            ref=stored.payment.trans_id,
            service_id=service.service_id,
            amount=amount,
            expires_at=expires_at,
            merchant_name=ctx.merchant_name,
        )
        result = await self._call(lambda: connector.create_qr(qr), "create_qr", connector)
        payment = await self._apply(
            stored.pk, ctx.merchant_id, result, f"provider:{stored.provider}", request_id
        )
        return self._view(payment)

    # -- CANCEL (refund) ----------------------------------------------------------------------

    async def refund(
        self,
        token: str,
        trans_id: str,
        *,
        passcode: str,
        amount: int | None,
        refund_key: str | None,
        request_id: str,
    ) -> PaymentView:
        """CANCEL: refund all that remains of a payment, or part of it, with the passCode."""
        fields.check("transId", trans_id)
        fields.check("passCode", passcode)
        if amount is not None:
            fields.check_amount(amount)
        if refund_key is not None:
            fields.check("refundKey", refund_key)
        now = self.clock()

        def first(conn: Connection, ctx: TerminalContext) -> tuple[TerminalContext, str]:
            row = _PASSCODE_OF.run(conn, {"terminal_id": ctx.terminal_id}).one()
            _check_passcode_lock(row.passcode_locked_until, now)
            if repo.find_payment(conn, ctx.merchant_id, trans_id=trans_id) is None:
                raise _not_found(trans_id, None)
            return ctx, str(row.passcode_hash)

        ctx, passcode_hash = await self._auth_unit(token, first, write=False)
        passcode_ok = await asyncio.to_thread(verify_secret, passcode_hash, passcode)
        ask = _RefundAsk(trans_id, refund_key or new_refund_id(), amount, passcode_ok)
        return await self._refund(ctx, ask, now, request_id)

    async def refund_for_merchant(
        self,
        merchant_id: int,
        trans_id: str,
        *,
        amount: int | None,
        refund_key: str | None,
        actor: str,
        request_id: str,
    ) -> PaymentView:
        """A refund made by the merchant itself (the console): CANCEL's rules without a passCode.

        The caller has already authenticated and authorised ``actor`` as one of the merchant's
        owners; the amount rules, idempotency and audit are exactly those of CANCEL.
        """
        fields.check("transId", trans_id)
        if amount is not None:
            fields.check_amount(amount)
        if refund_key is not None:
            fields.check("refundKey", refund_key)
        who = MerchantActor(merchant_id=merchant_id, terminal_id=None, actor=actor)

        def exists(conn: Connection) -> None:
            if repo.find_payment(conn, merchant_id, trans_id=trans_id) is None:
                raise _not_found(trans_id, None)

        await self.db.run(exists, write=False)
        ask = _RefundAsk(trans_id, refund_key or new_refund_id(), amount, None)
        return await self._refund(who, ask, self.clock(), request_id)

    async def _refund(
        self,
        who: TerminalContext | MerchantActor,
        ask: _RefundAsk,
        now: datetime,
        request_id: str,
    ) -> PaymentView:
        """Reserve, ask the provider, and settle one refund (the shared part of both refunds)."""

        def second(conn: Connection) -> _Reservation:
            return _reserve_refund(conn, who, ask, now, self.settings, request_id)

        reservation = await self._retrying(second)
        if reservation.error is not None:
            raise reservation.error
        stored, refund = reservation.stored, reservation.refund
        assert stored is not None
        if refund is None:  # an idempotent replay
            return self._view(stored.payment, replayed=True)
        connector = self._connector(stored.provider)
        result: RefundResult | None = await self._call(
            lambda: connector.refund(ask.trans_id, refund.refund_id, refund.amount),
            "refund",
            connector,
        )
        actor = f"provider:{stored.provider}"

        def third(conn: Connection) -> Payment:
            return _settle_refund(
                conn, who, ask.trans_id, refund.refund_id, result, now, actor, request_id
            )

        return self._view(await self._retrying(third))

    async def resolve_refund(self, payment_pk: int, refund_id: str, request_id: str) -> Payment:
        """Ask the provider about a refund whose outcome was not known (a worker's job)."""
        stored = await self.db.run(lambda conn: repo.load_payment(conn, payment_pk), write=False)
        payment = stored.payment
        refund = next(r for r in payment.refunds if r.refund_id == refund_id)
        if refund.status is not RefundStatus.PENDING:
            return payment
        connector = self._connector(stored.provider)
        result: RefundResult | None = await self._call(
            lambda: connector.refund_sync(payment.trans_id, refund_id, refund.amount),
            "refund_sync",
            connector,
        )
        age = (self.clock() - refund.created_at).total_seconds()
        if result is not None and result.outcome is ProviderOutcome.NOT_FOUND:
            result = None
            if age >= self.settings.provider_not_found_grace_seconds:
                # The request never reached the provider: send it again. The same refund id
                # makes it idempotent, so a late original cannot refund twice.
                result = await self._call(
                    lambda: connector.refund(payment.trans_id, refund_id, refund.amount),
                    "refund",
                    connector,
                )
        who = MerchantActor(payment.merchant_id, payment.terminal_id, f"provider:{stored.provider}")
        now = self.clock()

        def unit(conn: Connection) -> Payment:
            return _settle_refund(
                conn, who, payment.trans_id, refund_id, result, now, who.actor, request_id
            )

        return await self._retrying(unit)

    async def aclose(self) -> None:
        """Release the database and the connectors' HTTP client."""
        if self.http is not None:
            await self.http.aclose()
        await self.db.aclose()

    async def notify(
        self, provider: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Notification:
        """A provider's notification about a payment: verify it, then settle by asking.

        A notification is a hint. Whatever it claims, the payment moves only by what the
        provider answers to a query made now (or by the signed notification's own outcome
        when the connector verified it, which the query then confirms).
        """
        connector = self.connectors.get(provider)
        if connector is None or provider == "sandbox":
            raise NotFound(f"no provider named {provider}", code="NOT_FOUND", field="provider")
        try:
            note = await connector.parse_notification(path, headers, body)
        except NotificationRejected as exc:
            raise InvalidRequest(
                f"notification rejected ({exc.part}): {exc}", code="NOTIFICATION_REJECTED"
            ) from exc
        now = self.clock()

        def claim(conn: Connection) -> tuple[repo.StoredPayment, str] | None:
            row = conn.execute(
                sa.select(t.payments.c.id).where(
                    t.payments.c.trans_id == note.ref,
                    t.payments.c.provider.like(f"{provider}%"),
                )
            ).first()
            if row is None:
                return None
            stored = repo.load_payment(conn, row.id)
            if stored.payment.status is not S.PENDING:
                return None
            # A check already under way (its lease still running) will learn the news itself.
            leased = conn.execute(
                t.payments.update()
                .where(
                    t.payments.c.id == row.id,
                    sa.or_(
                        t.payments.c.provider_checked_at.is_(None),
                        t.payments.c.provider_checked_at <= now,
                    ),
                )
                .values(provider_checked_at=now + self.check_lease())
            )
            if leased.rowcount != 1:
                return None
            return stored, repo.merchant_name(conn, stored.payment.merchant_id)

        claimed = await self.db.run(claim)
        if claimed is not None:
            await self.resolve(claimed[0], claimed[1], f"notification:{provider}")
        return note

    # -- VOUCHERNO ----------------------------------------------------------------------------

    async def set_voucher(
        self, token: str, trans_id: str, voucher_no: str, request_id: str
    ) -> PaymentView:
        """VOUCHERNO: attach or replace the shop's slip number on a payment."""
        fields.check("transId", trans_id)
        fields.check("voucherNo", voucher_no)
        now = self.clock()

        def fn(conn: Connection, ctx: TerminalContext) -> Payment:
            return set_voucher(conn, ctx, trans_id, voucher_no, now, request_id)

        digest = token_hash(token)

        def unit(conn: Connection) -> Payment:
            return fn(conn, sessions.authenticate(conn, digest, now, self.settings))

        return self._view(await self._retrying(unit))

    # -- IDENTIFY-SCANNED-QR-CODE -------------------------------------------------------------

    async def identify(self, token: str, code: str) -> Service:
        """IDENTIFY-SCANNED-QR-CODE: which wallet service a scanned code belongs to."""
        await self._auth_unit(token, lambda conn, ctx: None, write=False)
        return self.catalog.require(identify(code).service_id)


# Statements of CANCEL and PAYCHECK, built once (see kessai.adapters.hot).
_PASSCODE_OF = Hot(
    sa.select(t.terminals.c.passcode_hash, t.terminals.c.passcode_locked_until).where(
        t.terminals.c.id == sa.bindparam("terminal_id")
    )
)
_PASSCODE_COUNT = Hot(
    sa.select(t.terminals.c.passcode_failures, t.terminals.c.passcode_locked_until)
    .where(t.terminals.c.id == sa.bindparam("terminal_id"))
    .with_for_update()
)
_SET_PASSCODE_COUNT = Hot(t.terminals.update().where(t.terminals.c.id == sa.bindparam("b_id")))
_CLAIM_CHECK = Hot(
    t.payments.update().where(
        t.payments.c.id == sa.bindparam("b_pk"),
        t.payments.c.status == S.PENDING.value,
        sa.or_(
            t.payments.c.provider_checked_at.is_(None),
            t.payments.c.provider_checked_at <= sa.bindparam("b_due", type_=UTCDateTime()),
        ),
    )
)


def _not_found(trans_id: str | None, trans_key: str | None) -> NotFound:
    # The same words whether the payment does not exist or belongs to another merchant.
    if trans_id is not None:
        return NotFound(
            f"no payment with transId {trans_id}", code="PAYMENT_NOT_FOUND", field="transId"
        )
    # A terminal asks by transKey when a REQUEST's answer was lost: "not found" may only mean
    # "not arrived yet", and the safe next step is that same REQUEST again.
    return NotFound(
        f"no payment with transKey {trans_key} (yet): if its REQUEST went unanswered, send that "
        "REQUEST again with the same transKey, which never charges twice",
        code="PAYMENT_NOT_FOUND",
        field="transKey",
    )


def _check_passcode_lock(locked_until: datetime | None, now: datetime) -> None:
    if locked_until is not None and now < locked_until:
        wait = int((locked_until - now).total_seconds()) + 1
        raise RateLimited(
            "refunds are locked on this terminal after repeated wrong passCodes; an "
            f"administrator can unlock it, or try again in {wait} seconds",
            code="PASSCODE_LOCKED",
            field="passCode",
            retry_after_seconds=wait,
        )


def _count_passcode(
    conn: Connection,
    ctx: TerminalContext,
    ok: bool,
    now: datetime,
    settings: Settings,
    request_id: str,
) -> KessaiError | None:
    """Count a wrong passCode (locking at the limit) or clear the count; answers the error."""
    # The row lock makes concurrent wrong guesses at several instances count one by one.
    row = _PASSCODE_COUNT.run(conn, {"terminal_id": ctx.terminal_id}).one()
    try:
        _check_passcode_lock(row.passcode_locked_until, now)
    except RateLimited as exc:
        return exc
    if ok:
        if row.passcode_failures:
            _SET_PASSCODE_COUNT.run(conn, {"b_id": ctx.terminal_id, "passcode_failures": 0})
        return None
    failures = int(row.passcode_failures) + 1
    locked = failures >= settings.passcode_max_failures
    _SET_PASSCODE_COUNT.run(
        conn,
        {
            "b_id": ctx.terminal_id,
            # The count starts afresh once the lock is set, so after it expires (or an admin
            # unlocks) the terminal has its full number of attempts again.
            "passcode_failures": 0 if locked else failures,
            "passcode_locked_until": now + timedelta(seconds=settings.passcode_lock_seconds)
            if locked
            else None,
        },
    )
    repo.audit(
        conn,
        at=now,
        actor=ctx.actor,
        action="terminal.refunds_locked" if locked else "terminal.passcode_failed",
        merchant_id=ctx.merchant_id,
        terminal_id=ctx.terminal_id,
        detail={"failures": failures},
        request_id=request_id,
    )
    if locked:
        return RateLimited(
            f"{failures} wrong passCodes: refunds on this terminal are now locked",
            code="PASSCODE_LOCKED",
            field="passCode",
            retry_after_seconds=settings.passcode_lock_seconds,
        )
    left = settings.passcode_max_failures - failures
    return KessaiError(
        f"the passCode is wrong; {left} more wrong attempts lock refunds on this terminal",
        code="WRONG_PASSCODE",
        field="passCode",
    )


_OUTCOME_TO_STATUS: Final[dict[ProviderOutcome, PaymentStatus]] = {
    ProviderOutcome.SUCCEEDED: S.COMPLETED,
    ProviderOutcome.FAILED: S.FAILED,
    ProviderOutcome.CANCELED: S.CANCELED,
    ProviderOutcome.EXPIRED: S.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class _Move:
    """What a provider's answer does to a payment, decided before anything is written."""

    # The payment's next state; None when it stays as it is.
    after: Payment | None
    # Provider bookkeeping written with it (when it was asked, its reference).
    extra: dict[str, Any]
    # For a payment already final: the status the provider claims, when it contradicts ours.
    disagrees: PaymentStatus | None = None


def _decide(
    payment: Payment,
    result: ProviderResult | None,
    now: datetime,
    settings: Settings,
    *,
    expiring: bool = False,
    giving_up: bool = False,
) -> _Move:
    """How a provider's answer moves a payment; unknown answers leave it PENDING."""
    outcome = result.outcome if result is not None else ProviderOutcome.UNKNOWN
    extra: dict[str, Any] = {"provider_checked_at": now}
    if result is not None and result.provider_ref:
        extra["provider_ref"] = result.provider_ref
    if payment.status is not S.PENDING:
        target = _OUTCOME_TO_STATUS.get(outcome)
        reversed_after_paid = target is S.CANCELED and payment.status is S.COMPLETED
        if (
            target is not None
            and target is not payment.status
            and (target is S.COMPLETED or reversed_after_paid)
        ):
            # The provider says paid (or reversed what we booked as paid), our books say
            # otherwise: keep the fact for reconciliation.
            return _Move(None, extra, disagrees=target)
        return _Move(None, extra)
    if (
        outcome is ProviderOutcome.NOT_FOUND
        and payment.kind is PaymentKind.MERCHANT_QR
        and payment.qr_data is not None
        and payment.qr_expires_at is not None
        and now >= payment.qr_expires_at
    ):
        # A code that was shown and has lapsed: providers that drop expired codes (PayPay)
        # answer "not found", which here means nobody paid before the deadline.
        outcome = ProviderOutcome.EXPIRED
    if outcome is ProviderOutcome.NOT_FOUND:
        age = (now - payment.created_at).total_seconds()
        outcome = (
            ProviderOutcome.FAILED
            if age >= settings.provider_not_found_grace_seconds
            else ProviderOutcome.UNKNOWN
        )
        if outcome is ProviderOutcome.FAILED:
            result = ProviderResult(
                ProviderOutcome.FAILED,
                failure_code="NOT_RECEIVED",
                failure_message="the provider never received the payment",
            )
    if outcome is ProviderOutcome.CANCELED and expiring:
        outcome = ProviderOutcome.EXPIRED
    if outcome is ProviderOutcome.CANCELED and giving_up:
        # The terminal was told "unknown" or "waiting"; the provider has now confirmed that no
        # money moved.
        outcome = ProviderOutcome.FAILED
        who = (
            "the customer"
            if payment.pending_reason is PendingReason.WAITING_FOR_CUSTOMER
            else "the provider"
        )
        result = ProviderResult(
            ProviderOutcome.FAILED,
            failure_code="REVERSED",
            failure_message=f"{who} did not confirm the payment in time; it was "
            "cancelled at the provider and nothing was charged",
        )
    qr_data = result.qr_data if result is not None and result.qr_data else payment.qr_data
    if outcome in (ProviderOutcome.UNKNOWN, ProviderOutcome.WAITING_FOR_CUSTOMER):
        reason = (
            PendingReason.WAITING_FOR_CUSTOMER
            if outcome is ProviderOutcome.WAITING_FOR_CUSTOMER
            else payment.pending_reason
        )
        if reason is payment.pending_reason and qr_data == payment.qr_data:
            return _Move(None, extra)
        return _Move(
            payment.moved_to(S.PENDING, now, pending_reason=reason, qr_data=qr_data), extra
        )
    target = _OUTCOME_TO_STATUS[outcome]
    failure_code = result.failure_code if result is not None else None
    failure_message = result.failure_message if result is not None else None
    if target is S.FAILED and failure_code is None:
        failure_code = "DECLINED"
    if target is S.EXPIRED:
        failure_code, failure_message = "QR_EXPIRED", "the QR code expired before it was paid"
    after = payment.moved_to(
        target,
        now,
        failure_code=failure_code,
        failure_message=failure_message,
        qr_data=qr_data,
    )
    return _Move(after, extra)


def _record_move(
    conn: Connection,
    pk: int,
    before: Payment,
    after: Payment,
    now: datetime,
    actor: str,
    request_id: str,
    *,
    listening: bool | None = None,
    created: Mapping[str, Any] | None = None,
) -> None:
    """The webhook event and the audit entry of a payment's new state (in its unit).

    ``listening``: whether the merchant listens for webhooks, when the unit already knows.
    ``created``: the audit entry of the payment's creation in this same unit, written in one
    statement with the move's, ahead of it.
    """
    events.record(conn, pk, after, now, listening=listening)
    moved = repo.audit_entry(
        at=now,
        actor=actor,
        action=_ACTIONS.get(after.status, "payment.updated"),
        merchant_id=before.merchant_id,
        terminal_id=before.terminal_id,
        payment_pk=pk,
        from_status=before.status.value,
        to_status=after.status.value,
        detail={
            "reason": after.pending_reason.value if after.pending_reason else None,
            "failureCode": after.failure_code,
        },
        request_id=request_id,
    )
    repo.append_audit(conn, *(entry for entry in (created, moved) if entry is not None))


def _apply_result(
    conn: Connection,
    stored: repo.StoredPayment,
    result: ProviderResult | None,
    now: datetime,
    actor: str,
    request_id: str,
    settings: Settings,
    *,
    expiring: bool = False,
    giving_up: bool = False,
) -> Payment:
    """Move a payment by a provider's answer, in one unit with its audit entry."""
    payment = stored.payment
    move = _decide(payment, result, now, settings, expiring=expiring, giving_up=giving_up)
    if move.disagrees is not None:
        repo.audit(
            conn,
            at=now,
            actor=actor,
            action="provider.disagrees",
            merchant_id=payment.merchant_id,
            payment_pk=stored.pk,
            from_status=payment.status.value,
            to_status=move.disagrees.value,
            request_id=request_id,
        )
        return payment
    if move.after is None:
        if payment.status is S.PENDING:
            repo.touch_provider_check(conn, stored.pk, now)
            if "provider_ref" in move.extra:
                conn.execute(
                    t.payments.update()
                    .where(t.payments.c.id == stored.pk)
                    .values(provider_ref=move.extra["provider_ref"])
                )
        return payment
    repo.save_payment(conn, stored.pk, payment, move.after, **move.extra)
    _record_move(conn, stored.pk, payment, move.after, now, actor, request_id)
    return move.after


_ACTIONS: Final = {
    S.PENDING: "payment.waiting",
    S.COMPLETED: "payment.completed",
    S.FAILED: "payment.failed",
    S.EXPIRED: "payment.expired",
    S.CANCELED: "payment.canceled",
}


@dataclass(frozen=True, slots=True)
class _Refused:
    """An error a reading unit met, carried out of the unit so that its session touch commits."""

    error: KessaiError


@dataclass(frozen=True, slots=True)
class MerchantActor:
    """Someone acting for a merchant outside a terminal session (a console owner)."""

    merchant_id: int
    terminal_id: int | None
    actor: str


@dataclass(frozen=True, slots=True)
class _RefundAsk:
    trans_id: str
    refund_key: str
    amount: int | None
    # None when no passCode applies (a merchant's own refund from the console).
    passcode_ok: bool | None


@dataclass(frozen=True, slots=True)
class _Reservation:
    """CANCEL's second hop: an error to raise, a replay (no refund), or a reserved refund."""

    error: KessaiError | None
    stored: repo.StoredPayment | None = None
    refund: Refund | None = None


def _reserve_refund(
    conn: Connection,
    ctx: TerminalContext | MerchantActor,
    ask: _RefundAsk,
    now: datetime,
    settings: Settings,
    request_id: str,
) -> _Reservation:
    """Count the passCode, then replay, refuse, or reserve a new refund's amount."""
    if isinstance(ctx, TerminalContext):
        assert ask.passcode_ok is not None
        error = _count_passcode(conn, ctx, ask.passcode_ok, now, settings, request_id)
        if error is not None:
            return _Reservation(error)
    stored = repo.find_payment(conn, ctx.merchant_id, trans_id=ask.trans_id, lock=True)
    assert stored is not None
    payment = stored.payment
    earlier = next((r for r in payment.refunds if r.refund_key == ask.refund_key), None)
    if earlier is not None:
        if ask.amount is not None and ask.amount != earlier.amount:
            raise Conflict(
                f"refundKey {ask.refund_key} was already used for {earlier.amount} yen",
                code="IDEMPOTENCY_CONFLICT",
                field="refundKey",
            )
        return _Reservation(None, stored, None)
    take = require_refundable(payment, ask.amount)
    refund = Refund(
        refund_id=new_refund_id(),
        refund_key=ask.refund_key,
        amount=take,
        status=RefundStatus.PENDING,
        created_at=now,
        updated_at=now,
    )
    repo.insert_refund(conn, stored.pk, refund, ctx.actor)
    # Bumping the version serialises refunds of one payment across instances: a racing refund
    # that read the old refund list fails its version check and decides again.
    after = replace(
        payment, version=payment.version + 1, updated_at=now, refunds=(*payment.refunds, refund)
    )
    repo.save_payment(conn, stored.pk, payment, after)
    repo.audit(
        conn,
        at=now,
        actor=ctx.actor,
        action="refund.requested",
        merchant_id=ctx.merchant_id,
        terminal_id=ctx.terminal_id,
        payment_pk=stored.pk,
        from_status=payment.status.value,
        to_status=payment.status.value,
        detail={"refundId": refund.refund_id, "refundKey": ask.refund_key, "amount": take},
        request_id=request_id,
    )
    return _Reservation(None, replace(stored, payment=after), refund)


def _settle_refund(
    conn: Connection,
    ctx: TerminalContext | MerchantActor,
    trans_id: str,
    refund_id: str,
    result: RefundResult | None,
    now: datetime,
    actor: str,
    request_id: str,
) -> Payment:
    """Record the provider's answer to a refund; an unknown answer keeps the amount reserved."""
    current = repo.find_payment(conn, ctx.merchant_id, trans_id=trans_id, lock=True)
    assert current is not None
    payment = current.payment
    mine = next(r for r in payment.refunds if r.refund_id == refund_id)
    if mine.status is not RefundStatus.PENDING:
        # Settled already: a worker asked the provider while this CANCEL's own (slow) call was
        # in flight. Settling again would count the money a second time.
        return payment
    outcome = result.outcome if result is not None else ProviderOutcome.UNKNOWN
    if outcome is ProviderOutcome.SUCCEEDED:
        settled = replace(mine, status=RefundStatus.SUCCEEDED, updated_at=now)
        after = payment.with_refund_settled(settled, now)
    elif outcome is ProviderOutcome.FAILED:
        settled = replace(
            mine,
            status=RefundStatus.FAILED,
            updated_at=now,
            failure_reason=result.failure_message if result is not None else None,
        )
        refunds = tuple(settled if r.refund_id == refund_id else r for r in payment.refunds)
        after = replace(payment, refunds=refunds, version=payment.version + 1, updated_at=now)
    else:
        return payment
    repo.update_refund(conn, settled)
    repo.save_payment(conn, current.pk, payment, after)
    if outcome is ProviderOutcome.SUCCEEDED:
        events.record(conn, current.pk, after, now)
    repo.audit(
        conn,
        at=now,
        actor=actor,
        action="refund.succeeded" if outcome is ProviderOutcome.SUCCEEDED else "refund.failed",
        merchant_id=ctx.merchant_id,
        terminal_id=ctx.terminal_id,
        payment_pk=current.pk,
        from_status=payment.status.value,
        to_status=after.status.value,
        detail={"refundId": refund_id, "amount": mine.amount},
        request_id=request_id,
    )
    return after


def set_voucher(
    conn: Connection,
    who: TerminalContext | MerchantActor,
    trans_id: str,
    voucher_no: str,
    now: datetime,
    request_id: str,
) -> Payment:
    """VOUCHERNO's rules in one unit: a terminal's call and a console owner's edit alike."""
    fields.check("voucherNo", voucher_no)
    stored = repo.find_payment(conn, who.merchant_id, trans_id=trans_id, lock=True)
    if stored is None:
        raise _not_found(trans_id, None)
    payment = stored.payment
    if payment.status not in VOUCHER_EDITABLE_STATUSES:
        raise Conflict(
            f"payment {trans_id} is {payment.status}: it was never paid, so it takes no voucher "
            "number",
            code="PAYMENT_NOT_EDITABLE",
            field="transId",
        )
    if payment.voucher_no == voucher_no:
        return payment
    after = replace(payment, voucher_no=voucher_no, version=payment.version + 1, updated_at=now)
    repo.save_payment(conn, stored.pk, payment, after)
    repo.audit(
        conn,
        at=now,
        actor=who.actor,
        action="payment.voucher_set",
        merchant_id=who.merchant_id,
        terminal_id=who.terminal_id,
        payment_pk=stored.pk,
        detail={"from": payment.voucher_no, "to": voucher_no},
        request_id=request_id,
    )
    return after
