"""The simulation: terminals, customers, a faulty wallet and a faulty database around the gateway.

One ``random.Random(seed)`` decides everything — which operation comes next, its arguments, what
the customer does, and every fault — and one ``SimClock`` is the only time. The gateway is the
real service layer (``Gateway`` and ``Worker``) on a real SQLite file. Each step is one operation;
after every step the invariants are checked (``checks``); every ``quiesce_every`` steps and at the
end the faults stop, time passes every deadline, the worker settles what is unknown, and the
wallet's ledger is compared with the gateway's books.

A "race" step runs two or three operations concurrently on the one event loop, mostly about one
payment (a CANCEL while the worker settles refunds, a PAYCHECK while a notification resolves the
same payment, two workers at once). Everything runs on one thread: units of work run to the end
without yielding, the wallet yields a seeded number of event-loop turns on each call, and nothing
waits on the wall clock, so the interleaving is the seed's alone.

Each step appends one line to the trace; the trace's SHA-256 is the run's fingerprint, so replaying
a seed must give the same digest. Lines never contain transIds, refund ids or tokens (drawn from
the OS by the gateway), only names the simulation chose.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import shutil
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
import sqlalchemy as sa
from argon2 import PasswordHasher

from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.adapters.migrate import upgrade
from kessai.config import Settings
from kessai.domain.errors import KessaiError
from kessai.domain.identify import generate_code
from kessai.domain.model import MAX_AMOUNT_YEN, Payment
from kessai.service import admin
from kessai.service.gateway import Gateway, PaymentView
from kessai.service.worker import Worker, WorkerReport

from . import checks as c
from .checks import Checker, InvariantViolation, Told, WalletCharge, WalletRefund, check_books
from .clock import SimClock
from .database import INJECTED, FaultyDatabase, InjectedDatabaseFailure, Probe
from .faults import (
    NOTIFICATION_DROPPED,
    NOTIFICATION_DUPLICATED,
    NOTIFICATION_FORGED,
    NOTIFICATION_REORDERED,
    FaultPlan,
    FaultRates,
)
from .wallet import BEHAVIOURS, NAME, NOTIFY_PATH, SUCCESS, SimWallet

T = TypeVar("T")

SERVICES: Final = ("01", "02", "03", "04", "05")
PASSCODE: Final = "2468"
# Terminal credentials are hashed cheaply in the simulation's own database.
_CHEAP_HASH: Final = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)

# How often each operation is chosen (relative weights).
WEIGHTS: Final = {
    "request": 22,
    "qr": 8,
    "customer": 8,
    "paycheck": 14,
    "status": 6,
    "refund": 12,
    "voucher": 3,
    "worker": 5,
    "clock": 8,
    "notify": 8,
    "session": 2,
    "race": 10,
}
# The operations a race runs concurrently, and how often each is picked for one.
RACE_WEIGHTS: Final = {
    "request": 3,
    "qr": 1,
    "customer": 2,
    "paycheck": 4,
    "status": 2,
    "refund": 4,
    "voucher": 1,
    "worker": 4,
    "clock": 2,
    "notify": 2,
}


@dataclass(frozen=True)
class SimConfig:
    """One simulation run; everything but ``seed`` and ``ops`` has sensible defaults."""

    seed: int
    ops: int = 2_000
    merchants: int = 3
    terminals_per_merchant: int = 2
    quiesce_every: int = 2_500
    rates: FaultRates = field(default_factory=FaultRates)
    # Deliberately broken variants, to show the checks catch what they claim to.
    double_charging_wallet: bool = False
    leaky_database: bool = False
    # A wallet whose cancel reverses paid payments too (Alipay+ cancelPayment, WeChat Pay
    # reverse), beyond the connector contract's "withdraw an unpaid payment".
    reversing_cancel: bool = False
    # Where the SQLite file lives (tmpfs by default, so commits cost no disk flush).
    directory: str | None = None
    # How many trace lines the result keeps (None: all of them).
    trace_tail: int | None = 40
    # Called after every step, before its checks: tests corrupt the books here on purpose.
    tamper: Callable[[Simulation, int], None] | None = None
    # Called with (steps done, wall seconds) every ``progress_every`` steps.
    progress: Callable[[int, float], None] | None = None
    progress_every: int = 5_000


@dataclass
class SimResult:
    """What a run did and whether every invariant held."""

    seed: int
    ops: int
    steps: int
    seconds: float
    digest: str
    faults: dict[str, int]
    checks: int
    quiescent_points: int
    op_counts: dict[str, int]
    outcomes: dict[str, int]
    gateway_calls: int
    units_of_work: int
    wallet_calls: int
    settings: dict[str, float] = field(default_factory=dict)
    failure: str | None = None
    failed_step: int | None = None
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every invariant held for the whole run."""
        return self.failure is None

    @property
    def ops_per_second(self) -> float:
        """Steps per wall-clock second (the figure the benchmark reports)."""
        return self.steps / self.seconds if self.seconds > 0 else 0.0


@dataclass(eq=False)
class Terminal:
    """One register: its credentials and what it knows."""

    index: int
    merchant_id: int
    mid: str
    password: str
    os_value: str
    device: str
    token: str | None = None
    passcode_failures: int = 0
    login_failures: int = 0
    # Its payments by kind (CUSTOMER_CODE, MERCHANT_QR), oldest first.
    payments: dict[str, list[PaymentPlan]] = field(default_factory=dict)
    keys: int = 0
    refund_keys: int = 0


@dataclass(eq=False)
class PaymentPlan:
    """What a terminal asked for under one transKey, and what it was told (``told``)."""

    told: Told
    terminal: Terminal
    kind: str  # CUSTOMER_CODE or MERCHANT_QR
    service_id: str
    code: str | None
    ttl: int | None
    # refundKey -> the amount asked (None: all that remained), in the order they were sent.
    refund_asks: dict[str, int | None] = field(default_factory=dict)


class DatabaseFailed(KessaiError):
    """The answer to a call during which the database failed a unit of work (by injection)."""


class Simulation:
    """One seeded run."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.plan = FaultPlan(self.rng, config.rates)
        self.plan.on_fault = self._traced_fault
        self.clock = SimClock()
        self.checker = Checker()
        self.terminals: list[Terminal] = []
        self.plans: list[PaymentPlan] = []
        self.step = 0
        self.calls = 0
        self.quiescent_points = 0
        self.op_counts: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.digest = hashlib.sha256()
        self.tail: deque[str] = deque(maxlen=config.trace_tail)
        self._names = 0
        self._ops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("request", self.op_request),
            ("qr", self.op_qr),
            ("customer", self.op_customer),
            ("paycheck", self.op_paycheck),
            ("status", self.op_status),
            ("refund", self.op_refund),
            ("voucher", self.op_voucher),
            ("worker", self.op_worker),
            ("clock", self.op_clock),
            ("notify", self.op_notify),
            ("session", self.op_session),
            ("race", self.op_race),
        ]
        self._weights = [WEIGHTS[name] for name, _ in self._ops]
        self._by_name = dict(self._ops)
        # During a race: several operations in flight at once, around one payment in focus.
        self._racing = False
        self._focus: PaymentPlan | None = None

    # -- building the world ----------------------------------------------------------------------

    def _build(self, directory: str) -> None:
        path = str(Path(directory) / "kessai.db")
        inner = Database(f"sqlite:///{path}")
        upgrade(inner)
        now = self.clock()
        count = self.config.merchants

        def provision(conn: sa.Connection) -> list[tuple[int, str, str, str]]:
            made = []
            os_value = admin.create_integration(conn, "Simulated POS", now)
            for m in range(count):
                merchant_id = admin.create_merchant(conn, f"Shop {m + 1}", now)
                for service_id in SERVICES:
                    conn.execute(
                        t.provider_settings.insert().values(
                            merchant_id=merchant_id,
                            service_id=service_id,
                            provider=NAME,
                            active=True,
                            version=1,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                for _ in range(self.config.terminals_per_merchant):
                    issued = admin.create_terminal(conn, merchant_id, now, passcode=PASSCODE)
                    made.append((merchant_id, issued.mid, issued.password, os_value))
            return made

        # The gateway verifies whatever argon2 parameters a hash carries; the default ones would
        # cost 20 ms per hash, per LOGIN and per CANCEL, without testing anything more.
        real_hash = admin.hash_secret
        admin.hash_secret = _CHEAP_HASH.hash  # type: ignore[assignment]
        try:
            terminals = inner.run_sync(provision)
        finally:
            admin.hash_secret = real_hash  # type: ignore[assignment]
        for index, (merchant_id, mid, password, os_value) in enumerate(terminals):
            self.terminals.append(
                Terminal(index, merchant_id, mid, password, os_value, f"REG-{index:02d}")
            )
        self.probe = Probe(path)
        self.probe.install()
        self.db = FaultyDatabase(inner, self.plan, self.probe, leaky=self.config.leaky_database)
        self.wallet = SimWallet(
            self.clock,
            self.plan,
            double_charge=self.config.double_charging_wallet,
            reverse_paid=self.config.reversing_cancel,
        )
        # Timings within their documented ranges, drawn from the seed: a short worker interval
        # puts the worker inside a CANCEL's or a REQUEST's window, a long one leaves PAYCHECK
        # alone with the wallet. The worker's jobs get no wall-clock budget: a loaded machine
        # must not change the run.
        self.settings = Settings(
            sandbox_enabled=True,
            provider_recheck_interval_ms=self.rng.choice((250, 1000, 3000)),
            worker_recheck_interval_ms=self.rng.choice((500, 3000, 10000)),
            worker_batch_size=self.rng.choice((5, 100)),
            worker_job_seconds=3600.0,
        )
        self.gateway = Gateway(
            self.db,  # type: ignore[arg-type]
            {NAME: self.wallet},
            self.settings,
            clock=self.clock,
        )
        # No webhook endpoint is configured; a transport of our own spares building TLS contexts.
        self.worker = Worker(
            self.gateway,
            httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(204))),
        )

    # -- running -----------------------------------------------------------------------------------

    async def run(self) -> SimResult:
        """Run every step, then the final reconciliation; never raises for a violation."""
        directory = self.config.directory or _scratch_root()
        scratch = tempfile.mkdtemp(prefix="kessai-sim-", dir=directory)
        logger = logging.getLogger("kessai")
        level = logger.level
        # Injected faults make the gateway log warnings by the thousand; they are expected here.
        logger.setLevel(logging.CRITICAL)
        # LOGIN and CANCEL check their secrets on a worker thread; here they run on the loop
        # (after one turn of it, as a hand-off would), so that no thread's timing can reorder a
        # race and every replay interleaves alike.
        real_to_thread = asyncio.to_thread
        asyncio.to_thread = _on_the_loop
        started = time.perf_counter()
        failure: str | None = None
        failed_step: int | None = None
        try:
            self._build(scratch)
            for terminal in self.terminals:
                await self._login(terminal)
            for step in range(1, self.config.ops + 1):
                self.step = step
                self.wallet.tick()
                index = self.rng.choices(range(len(self._ops)), self._weights)[0]
                name, op = self._ops[index]
                self.op_counts[name] += 1
                await op()
                if self.config.tamper is not None:
                    self.config.tamper(self, step)
                self._check_step()
                if step % self.config.quiesce_every == 0 and step < self.config.ops:
                    await self._quiesce()
                if self.config.progress and step % self.config.progress_every == 0:
                    self.config.progress(step, time.perf_counter() - started)
            await self._quiesce()
        except InvariantViolation as exc:
            failure, failed_step = str(exc), self.step
            self._trace(f"VIOLATION {exc}")
        finally:
            seconds = time.perf_counter() - started
            asyncio.to_thread = real_to_thread
            logger.setLevel(level)
            await self._close()
            shutil.rmtree(scratch, ignore_errors=True)
        return SimResult(
            seed=self.config.seed,
            ops=self.config.ops,
            steps=self.step,
            seconds=seconds,
            digest=self.digest.hexdigest(),
            faults=dict(sorted(self.plan.counts.items())),
            checks=self.checker.checks,
            quiescent_points=self.quiescent_points,
            op_counts=dict(sorted(self.op_counts.items())),
            outcomes=dict(sorted(self.outcomes.items())),
            gateway_calls=self.calls,
            units_of_work=self.db.units if hasattr(self, "db") else 0,
            wallet_calls=self.wallet.calls if hasattr(self, "wallet") else 0,
            settings=self._drawn_settings(),
            failure=failure,
            failed_step=failed_step,
            tail=list(self.tail),
        )

    def _drawn_settings(self) -> dict[str, float]:
        if not hasattr(self, "settings"):
            return {}
        s = self.settings
        return {
            "provider_recheck_interval_ms": s.provider_recheck_interval_ms,
            "worker_recheck_interval_ms": s.worker_recheck_interval_ms,
            "worker_batch_size": s.worker_batch_size,
        }

    async def _close(self) -> None:
        if hasattr(self, "worker"):
            await self.worker.aclose()
        if hasattr(self, "db"):
            self.db.close()
        if hasattr(self, "probe"):
            self.probe.close()

    def _traced_fault(self, name: str, about: str) -> None:
        told = self.checker.by_trans_id.get(about)
        # A transId is the OS's draw; the trace names payments the simulation's way.
        what = told.name if told is not None else ("?" if about.isdigit() else about)
        self._trace(f"  fault {name} {what}".rstrip())

    def _trace(self, line: str) -> None:
        text = f"{self.step} {line}"
        self.digest.update(text.encode())
        self.digest.update(b"\n")
        self.tail.append(text)

    async def _gateway(self, what: str, make: Callable[[], Awaitable[T]]) -> T | KessaiError:
        """Call the gateway; answer its result or its refusal, and judge anything else."""
        self.calls += 1
        box = [0]
        token = INJECTED.set(box)
        try:
            value = await make()
        except InjectedDatabaseFailure:
            self.outcomes[f"{what}:DB_FAILURE"] += 1
            return DatabaseFailed("the database failed")
        except KessaiError as exc:
            if exc.code == "INTERNAL_ERROR":
                raise InvariantViolation(
                    c.NO_CRASH, f"{what} answered INTERNAL_ERROR: {exc}"
                ) from exc
            self.outcomes[f"{what}:{exc.code}"] += 1
            return exc
        except Exception as exc:
            raise InvariantViolation(
                c.NO_CRASH, f"{what} raised {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            INJECTED.reset(token)
        if box[0]:
            raise InvariantViolation(
                c.FAILED_WRITE_ANSWERS_ERROR,
                f"{what} answered success although one of its units of work failed",
            )
        self.outcomes[f"{what}:ok"] += 1
        return value

    def _check_step(self) -> None:
        for kind, pk, detail in self.probe.new_violations():
            raise InvariantViolation(kind, f"payment #{pk}: {detail}")
        self.checker.checks += 1
        if self.db.half_applied:
            raise InvariantViolation(c.ATOMIC, f"unit {self.db.half_applied[0]} was half applied")
        touched = self.probe.newly_touched()
        rows = self.probe.payments(touched) if touched else []
        refunds = self.probe.refunds(touched) if touched else []
        if rows:
            self.checker.rows(rows, refunds)
        for ref in self.wallet.dirty:
            charge = self.wallet.charges[ref]
            self.checker.checks += 1
            given_back = charge.refunded + charge.reversed
            if charge.refunded > charge.amount or given_back > charge.captured:
                raise InvariantViolation(c.WITHIN_PAID, f"the wallet refunded more than {ref} paid")
        # A payment settled on both sides can no longer be put right by reconciliation: its
        # money must agree now, not only at the next quiescent point.
        known = {str(row[1]) for row in rows}
        others = [ref for ref in self.wallet.dirty if ref not in known]
        if others:
            more = self.probe.payments_by_trans_id(others)
            rows = [*rows, *more]
            refunds = [*refunds, *self.probe.refunds([int(row[0]) for row in more])]
        if rows:
            busy = self.wallet.in_flight()
            nets = {str(row[1]): self.wallet.settled_net(str(row[1]), busy) for row in rows}
            self.checker.settled(rows, refunds, nets)
        self.wallet.dirty.clear()

    # -- helpers -----------------------------------------------------------------------------------

    def _live(self) -> list[Terminal]:
        return [term for term in self.terminals if term.token is not None]

    def _terminal(self) -> Terminal | None:
        live = self._live()
        return self.rng.choice(live) if live else None

    def _caller_for(self, plan: PaymentPlan) -> Terminal | None:
        """The payment's own register, or another logged-in one of the same shop."""
        if plan.terminal.token is not None:
            return plan.terminal
        shop = [x for x in self._live() if x.merchant_id == plan.terminal.merchant_id]
        return self.rng.choice(shop) if shop else None

    def _recent(self, plans: list[PaymentPlan], window: int = 48) -> PaymentPlan | None:
        if not plans:
            return None
        recent = plans[-window:]
        focus = self._focus
        if focus is not None and any(p is focus for p in recent) and self.rng.random() < 0.7:
            return focus
        return recent[len(recent) - 1 - self.rng.randrange(len(recent))]

    def _amount(self) -> int:
        draw = self.rng.random()
        if draw < 0.7:
            return self.rng.randint(100, 5_000)
        if draw < 0.95:
            return self.rng.randint(5_001, 100_000)
        return self.rng.randint(100_001, MAX_AMOUNT_YEN)

    def _new_plan(
        self,
        terminal: Terminal,
        kind: str,
        service_id: str,
        amount: int,
        code: str | None,
        ttl: int | None,
    ) -> PaymentPlan:
        terminal.keys += 1
        self._names += 1
        told = Told(
            name=f"P{self._names}",
            merchant_id=terminal.merchant_id,
            trans_key=f"S{terminal.index}K{terminal.keys:07d}",
            amount=amount,
        )
        plan = PaymentPlan(told, terminal, kind, service_id, code, ttl)
        self.checker.register(told)
        terminal.payments.setdefault(kind, []).append(plan)
        self.plans.append(plan)
        return plan

    def _describe(self, payment: Payment) -> str:
        refunds = ",".join(f"{r.refund_key}:{r.amount}:{r.status.value}" for r in payment.refunds)
        reason = payment.pending_reason.value if payment.pending_reason else "-"
        return (
            f"{payment.status.value}/{reason}/{payment.failure_code or '-'} "
            f"r{payment.refunded_amount} [{refunds}] v{payment.voucher_no or '-'}"
        )

    def _answer(self, plan: PaymentPlan, answer: PaymentView | KessaiError, what: str) -> bool:
        """Trace and check an answer about ``plan``; True when it was a payment."""
        if isinstance(answer, KessaiError):
            self._trace(f"{what} {plan.told.name} -> {_code(answer)}")
            return False
        self.checker.observe(plan.told, answer.payment)
        self._trace(f"{what} {plan.told.name} -> {self._describe(answer.payment)}")
        return True

    def _rid(self) -> str:
        return f"sim-{self.step}"

    async def _unchanged(self, what: str, make: Callable[[], Awaitable[Any]], code: str) -> None:
        """Bad input: a documented error, and not one committed change."""
        before = self.probe.data_version()
        answer = await self._gateway(what, make)
        if not isinstance(answer, KessaiError) or answer.code != code:
            got = answer.code if isinstance(answer, KessaiError) else "success"
            raise InvariantViolation(c.ANSWER, f"{what} with bad input answered {got}, not {code}")
        if not self._racing and self.probe.data_version() != before:
            raise InvariantViolation(c.ATOMIC, f"{what} with bad input changed the books")
        self._trace(f"{what} bad input -> {code}")

    # -- the operations ----------------------------------------------------------------------------

    async def op_request(self) -> None:
        """REQUEST: a new customer code, a retry, a transKey reused for other parameters."""
        terminal = self._terminal()
        if terminal is None:
            return await self.op_session()
        draw = self.rng.random()
        mine = terminal.payments.get("CUSTOMER_CODE", [])
        focus = self._focus
        if self._racing and focus is not None and focus.kind == "CUSTOMER_CODE":
            caller = self._caller_for(focus)
            if caller is not None and self.rng.random() < 0.7:
                await self._request(caller, focus, "request-retry")
                return None
        if draw < 0.12 and mine:
            plan = self._recent(mine)
            assert plan is not None
            await self._request(terminal, plan, "request-retry")
            return None
        if draw < 0.15 and mine and not self._racing:
            plan = self._recent(mine)
            assert plan is not None and plan.code is not None
            token = terminal.token
            assert token is not None
            known = self.probe.payment_by_key(terminal.merchant_id, plan.told.trans_key)
            other = plan.told.amount + 1 if plan.told.amount < MAX_AMOUNT_YEN else 1
            answer = await self._gateway(
                "request-conflict",
                lambda: self.gateway.request(
                    token,
                    trans_key=plan.told.trans_key,
                    amount=other,
                    code=plan.code or "",
                    service_id=None,
                    request_id=self._rid(),
                ),
            )
            if known is not None and not isinstance(answer, KessaiError):
                raise InvariantViolation(
                    c.ONE_PER_KEY,
                    f"transKey {plan.told.trans_key} was accepted again with another amount",
                )
            self._trace(f"request-conflict {plan.told.name} -> {_code(answer)}")
            if not isinstance(answer, KessaiError):
                # The first attempt never committed: this one is the payment now.
                plan.told.amount = other
                self.checker.observe(plan.told, answer.payment)
            return None
        if draw < 0.17:
            token = terminal.token
            assert token is not None
            bad = self.rng.choice((0, -5, MAX_AMOUNT_YEN + 1))
            code = self.wallet.issue_code("01", SUCCESS)
            await self._unchanged(
                "request",
                lambda: self.gateway.request(
                    token,
                    trans_key="BADAMOUNT1",
                    amount=bad,
                    code=code,
                    service_id=None,
                    request_id=self._rid(),
                ),
                "INVALID_FIELD",
            )
            return None
        service_id = self.rng.choice(SERVICES)
        behaviour = self.rng.choices((*BEHAVIOURS, "unknown"), (75, 9, 13, 3))[0]
        if behaviour == "unknown":
            # A well-formed code the wallet never issued.
            code = generate_code(service_id, self.rng)
        else:
            code = self.wallet.issue_code(service_id, behaviour)
        plan = self._new_plan(terminal, "CUSTOMER_CODE", service_id, self._amount(), code, None)
        await self._request(terminal, plan, f"request({behaviour})")
        return None

    async def _request(self, terminal: Terminal, plan: PaymentPlan, what: str) -> None:
        token = terminal.token
        assert token is not None and plan.code is not None
        code = plan.code
        claim = plan.service_id if self.rng.random() < 0.5 else None
        answer = await self._gateway(
            "request",
            lambda: self.gateway.request(
                token,
                trans_key=plan.told.trans_key,
                amount=plan.told.amount,
                code=code,
                service_id=claim,
                request_id=self._rid(),
            ),
        )
        if isinstance(answer, KessaiError) and answer.code == "IDEMPOTENCY_CONFLICT":
            raise InvariantViolation(
                c.ANSWER, f"{plan.told.name}: a retry with the same parameters was refused"
            )
        self._answer(plan, answer, what)

    async def op_qr(self) -> None:
        """GET-QR-CODE: a new dynamic code, or the same request again."""
        terminal = self._terminal()
        if terminal is None:
            return await self.op_session()
        mine = terminal.payments.get("MERCHANT_QR", [])
        if mine and self.rng.random() < 0.1:
            plan = self._recent(mine)
            assert plan is not None
            what = "qr-retry"
        else:
            ttl = self.rng.choice((None, 30, 60, 120, 300))
            service_id = self.rng.choice(SERVICES)
            plan = self._new_plan(terminal, "MERCHANT_QR", service_id, self._amount(), None, ttl)
            what = "qr"
        token = terminal.token
        assert token is not None
        answer = await self._gateway(
            "qr",
            lambda: self.gateway.get_qr_code(
                token,
                trans_key=plan.told.trans_key,
                amount=plan.told.amount,
                service_id=plan.service_id,
                ttl_seconds=plan.ttl,
                request_id=self._rid(),
            ),
        )
        if isinstance(answer, KessaiError) and answer.code == "IDEMPOTENCY_CONFLICT":
            raise InvariantViolation(
                c.ANSWER, f"{plan.told.name}: a QR retry with the same parameters was refused"
            )
        self._answer(plan, answer, what)
        return None

    async def op_customer(self) -> None:
        """A customer approves or declines in the wallet app (a scanned QR, a password)."""
        deciding = self.wallet.deciding()
        if not deciding:
            return await self.op_clock()
        ref = self.rng.choice(deciding)
        approve = self.rng.random() < 0.85
        status = self.wallet.customer_acts(ref, approve)
        told = self.checker.by_trans_id.get(ref)
        name = told.name if told is not None else "?"
        self._trace(f"customer {'approves' if approve else 'declines'} {name} -> {status}")
        return None

    def _pick_known(self, pending_bias: float = 0.6) -> PaymentPlan | None:
        focus = self._focus
        if focus is not None and focus.told.trans_id is not None and self.rng.random() < 0.7:
            return focus
        known = [p for p in self.plans[-400:] if p.told.trans_id is not None]
        if not known:
            return None
        if self.rng.random() < pending_bias:
            pending = [p for p in known if p.told.status == "PENDING"]
            if pending:
                return self.rng.choice(pending)
        return self._recent(known, 96)

    async def op_paycheck(self) -> None:
        """PAYCHECK: a payment by its transId (asks the wallet while it is PENDING)."""
        plan = self._pick_known()
        terminal = plan and self._caller_for(plan)
        if plan is None or terminal is None or terminal.token is None:
            return await self.op_request()
        token, trans_id = terminal.token, plan.told.trans_id
        assert trans_id is not None
        answer = await self._gateway(
            "paycheck", lambda: self.gateway.paycheck(token, trans_id, self._rid())
        )
        if isinstance(answer, KessaiError) and answer.code == "PAYMENT_NOT_FOUND":
            raise InvariantViolation(c.ANSWER, f"{plan.told.name} was answered before, now lost")
        self._answer(plan, answer, "paycheck")
        return None

    async def op_status(self) -> None:
        """STATUS: a payment by its transKey (also those whose first answer never came)."""
        plan = self._recent(self.plans, 96)
        terminal = plan and self._caller_for(plan)
        if plan is None or terminal is None or terminal.token is None:
            return await self.op_request()
        token, key = terminal.token, plan.told.trans_key
        answer = await self._gateway("status", lambda: self.gateway.status(token, key, self._rid()))
        lost = isinstance(answer, KessaiError) and answer.code == "PAYMENT_NOT_FOUND"
        if lost and plan.told.trans_id is not None:
            raise InvariantViolation(c.ANSWER, f"{plan.told.name} was answered before, now lost")
        self._answer(plan, answer, "status")
        return None

    async def op_refund(self) -> None:
        """CANCEL: full and partial refunds, repeated refundKeys, wrong passCodes, bad input."""
        paid = [p for p in self.plans[-600:] if p.told.paid and p.told.refunded < p.told.amount]
        draw = self.rng.random()
        if draw < 0.05:
            unpaid = [p for p in self.plans[-200:] if p.told.final is not None]
            if unpaid:
                paid = unpaid
        plan = self.rng.choice(paid) if paid else None
        focus = self._focus
        if focus is not None and focus.told.trans_id is not None and self.rng.random() < 0.7:
            plan = focus
        terminal = plan and self._caller_for(plan)
        if plan is None or terminal is None or terminal.token is None:
            return await self.op_paycheck()
        token, trans_id = terminal.token, plan.told.trans_id
        assert trans_id is not None
        asks = plan.refund_asks
        passcode = PASSCODE
        amount: int | None
        key: str | None
        if draw < 0.05 and plan.told.final is not None:
            what, key, amount = "refund-unpaid", None, None
        elif draw < 0.10 and terminal.passcode_failures < 2:
            what, key, amount, passcode = "refund-wrong-passcode", None, None, "9999"
        elif draw < 0.13:
            bad = self.rng.choice((0, -1))
            await self._unchanged(
                "refund",
                lambda: self.gateway.refund(
                    token,
                    trans_id,
                    passcode=PASSCODE,
                    amount=bad,
                    refund_key=None,
                    request_id=self._rid(),
                ),
                "INVALID_FIELD",
            )
            return None
        elif draw < 0.33 and asks and not self._racing:
            # A repeated refundKey is judged by what the books hold before the call, which a
            # concurrent call could change: repeats are for one call at a time.
            key = self.rng.choice(list(asks))
            amount = asks[key]
            what = "refund-repeat"
            if self.rng.random() < 0.2 and amount is not None:
                amount += 1
                what = "refund-repeat-other-amount"
        else:
            terminal.refund_keys += 1
            key = f"R{terminal.index}N{terminal.refund_keys:07d}"
            remaining = plan.told.amount - plan.told.refunded
            amount = None if self.rng.random() < 0.35 else self.rng.randint(1, max(1, remaining))
            asks[key] = amount
            what = "refund" if amount is not None else "refund-all"
        # What the books already hold under this refundKey decides what a correct answer is.
        booked = self.probe.refund_amount(trans_id, key) if key is not None else None
        answer = await self._gateway(
            "refund",
            lambda: self.gateway.refund(
                token,
                trans_id,
                passcode=passcode,
                amount=amount,
                refund_key=key,
                request_id=self._rid(),
            ),
        )
        self._judge_refund(plan, terminal, what, key, amount, booked, answer)
        return None

    def _judge_refund(
        self,
        plan: PaymentPlan,
        terminal: Terminal,
        what: str,
        key: str | None,
        amount: int | None,
        booked: int | None,
        answer: PaymentView | KessaiError,
    ) -> None:
        told = plan.told
        conflict = booked is not None and amount is not None and amount != booked
        if what == "refund-wrong-passcode":
            if not isinstance(answer, KessaiError):
                raise InvariantViolation(c.ANSWER, f"{told.name}: refunded with a wrong passCode")
            if answer.code == "WRONG_PASSCODE":
                terminal.passcode_failures += 1
        elif what == "refund-unpaid" and not isinstance(answer, KessaiError):
            raise InvariantViolation(c.WITHIN_PAID, f"{told.name} ({told.final}) was refunded")
        elif isinstance(answer, KessaiError):
            if answer.code == "IDEMPOTENCY_CONFLICT" and not conflict:
                raise InvariantViolation(
                    c.ANSWER, f"{told.name}: refund {key} refused as a conflict (booked {booked})"
                )
        else:
            terminal.passcode_failures = 0
            if conflict:
                raise InvariantViolation(
                    c.ANSWER, f"{told.name}: refundKey {key} of {booked} accepted for {amount}"
                )
            mine = [r for r in answer.payment.refunds if r.refund_key == key] if key else []
            if key is not None and not mine:
                raise InvariantViolation(
                    c.ANSWERED_REFUND, f"{told.name}: the answer to refund {key} lacks it"
                )
            expected = booked if booked is not None else amount
            if mine and expected is not None and mine[0].amount != expected:
                raise InvariantViolation(
                    c.ANSWER, f"{told.name}: refund {key} of {expected} answered {mine[0].amount}"
                )
        self._answer(plan, answer, f"{what} {key or '-'} {amount}")

    async def op_voucher(self) -> None:
        """VOUCHERNO: attach a slip number."""
        plan = self._pick_known(0.2)
        terminal = plan and self._caller_for(plan)
        if plan is None or terminal is None or terminal.token is None:
            return await self.op_request()
        token, trans_id = terminal.token, plan.told.trans_id
        assert trans_id is not None
        voucher = f"V{self.step}"
        answer = await self._gateway(
            "voucher", lambda: self.gateway.set_voucher(token, trans_id, voucher, self._rid())
        )
        if isinstance(answer, KessaiError):
            if answer.code == "PAYMENT_NOT_EDITABLE" and plan.told.paid:
                raise InvariantViolation(c.ANSWER, f"{plan.told.name}: paid, but no voucher taken")
        elif plan.told.final is not None:
            raise InvariantViolation(c.ANSWER, f"{plan.told.name}: unpaid, yet took a voucher")
        elif answer.payment.voucher_no != voucher:
            raise InvariantViolation(c.ANSWER, f"{plan.told.name}: voucher not kept")
        self._answer(plan, answer, "voucher")
        return None

    async def op_worker(self) -> None:
        """One pass of the background jobs (reconcile payments, settle refunds, prune).

        In a race, one job alone now and then, so that it lands inside another call's window.
        """
        self.calls += 1
        job = self.rng.choice(("pass", "reconcile", "refunds")) if self._racing else "pass"
        box = [0]
        token = INJECTED.set(box)
        try:
            if job == "pass":
                report = await self.worker.run_once()
            else:
                report = WorkerReport()
                await getattr(self.worker, job)(report)
        except InjectedDatabaseFailure:
            self._trace(f"worker {job} -> DB_FAILURE")
            return
        except Exception as exc:
            raise InvariantViolation(
                c.NO_CRASH, f"worker raised {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            INJECTED.reset(token)
        for error in report.errors:
            if not error.endswith("InjectedDatabaseFailure"):
                raise InvariantViolation(c.NO_CRASH, f"worker job failed: {error}")
        if len(report.errors) > box[0]:
            raise InvariantViolation(c.NO_CRASH, f"worker errors {report.errors}")
        self._trace(f"worker {job} checked {report.checked} finished {report.finished}")

    async def op_clock(self) -> None:
        """Time passes."""
        draw = self.rng.random()
        if draw < 0.7 or self._racing:
            # While calls are in flight, time passes as it would during them, not by minutes.
            seconds = self.rng.uniform(0.5, 5.0)
        elif draw < 0.95:
            seconds = self.rng.uniform(5.0, 40.0)
        else:
            seconds = self.rng.uniform(60.0, 400.0)
        self.clock.advance(seconds)
        self._trace(f"clock +{seconds:.3f}s")

    async def op_notify(self) -> None:
        """The wallet's notifications: reordered, duplicated, dropped, and now and then forged."""
        outbox = self.wallet.outbox
        if self.plan.chance(NOTIFICATION_FORGED, self.plan.rates.notification_forged) and outbox:
            ref, _ = outbox[self.rng.randrange(len(outbox))]
            headers, body = self.wallet.notification(ref, "SUCCEEDED", forged=True)
            answer = await self._gateway(
                "notify-forged", lambda: self.gateway.notify(NAME, NOTIFY_PATH, headers, body)
            )
            if not isinstance(answer, KessaiError) or not (
                answer.code == "NOTIFICATION_REJECTED" or isinstance(answer, DatabaseFailed)
            ):
                raise InvariantViolation(c.ANSWER, "a forged notification was accepted")
            self._trace(f"notify forged -> {_code(answer)}")
            return
        if not outbox:
            await self.op_clock()
            return
        index = self.rng.randrange(len(outbox))
        focus = self._focus
        if focus is not None and focus.told.trans_id is not None:
            about = [i for i, (ref, _) in enumerate(outbox) if ref == focus.told.trans_id]
            if about:
                index = self.rng.choice(about)
        if index != len(outbox) - 1 and index != 0:
            self.plan.count(NOTIFICATION_REORDERED)
        ref, status = outbox[index]
        if self.plan.chance(NOTIFICATION_DROPPED, self.plan.rates.notification_drop):
            del outbox[index]
            self._trace("notify dropped")
            return
        if not self.plan.chance(NOTIFICATION_DUPLICATED, self.plan.rates.notification_duplicate):
            del outbox[index]
        headers, body = self.wallet.notification(ref, status)
        answer = await self._gateway(
            "notify", lambda: self.gateway.notify(NAME, NOTIFY_PATH, headers, body)
        )
        told = self.checker.by_trans_id.get(ref)
        self._trace(f"notify {told.name if told else '?'} {status} -> {_code(answer)}")

    async def op_session(self) -> None:
        """LOGIN and LOGOUT: out and in, a replaced session, a second device, a wrong password."""
        terminal = self.rng.choice(self.terminals)
        if terminal.token is None:
            await self._login(terminal)
            return
        draw = self.rng.random()
        old = terminal.token
        if draw < 0.35:
            answer = await self._gateway("logout", lambda: self.gateway.logout(old, self._rid()))
            if not isinstance(answer, KessaiError):
                terminal.token = None
            self._trace(f"logout T{terminal.index} -> {_code(answer)}")
        elif draw < 0.6:
            await self._login(terminal)
        elif draw < 0.8:
            answer = await self._gateway(
                "login-other-device",
                lambda: self.gateway.login(
                    mid=terminal.mid,
                    key="OTHER-DEVICE",
                    password=terminal.password,
                    os_value=terminal.os_value,
                    request_id=self._rid(),
                ),
            )
            if not isinstance(answer, KessaiError):
                raise InvariantViolation(c.ANSWER, "a second device logged in on a live session")
            self._trace(f"login other device T{terminal.index} -> {_code(answer)}")
        elif terminal.login_failures < 2:
            answer = await self._gateway(
                "login-wrong-password",
                lambda: self.gateway.login(
                    mid=terminal.mid,
                    key=terminal.device,
                    password="WrongPassw0r",
                    os_value=terminal.os_value,
                    request_id=self._rid(),
                ),
            )
            if not isinstance(answer, KessaiError):
                raise InvariantViolation(c.ANSWER, "a wrong password logged in")
            if answer.code == "WRONG_CREDENTIALS":
                terminal.login_failures += 1
            self._trace(f"login wrong password T{terminal.index} -> {_code(answer)}")

    async def op_race(self) -> None:
        """Two or three operations at once, mostly about one payment.

        The wallet hands control back to the event loop for a seeded number of turns on each
        call, so these interleave — a CANCEL's provider call while the worker settles refunds, a
        PAYCHECK while a notification resolves the same payment — identically on every replay.
        """
        names = list(RACE_WEIGHTS)
        weights = [RACE_WEIGHTS[n] for n in names]
        picked = self.rng.choices(names, weights, k=self.rng.choice((2, 3)))
        if "clock" not in picked and self.rng.random() < 0.5:
            picked.append("clock")  # time passes while the calls are in flight
        self._focus = self._pick_focus()
        self._racing = True
        self.checker.begin_race()
        self._trace(f"race {'+'.join(picked)} on {self._focus.told.name if self._focus else '-'}")
        try:
            starts = [self.rng.choice((0, 0, 1, 2, 4, 8, 16, 32)) for _ in picked]
            outcomes = await asyncio.gather(
                *(
                    self._after(turns, self._by_name[name])
                    for name, turns in zip(picked, starts, strict=True)
                ),
                return_exceptions=True,
            )
        finally:
            self._racing = False
            self._focus = None
            self.checker.end_race()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _pick_focus(self) -> PaymentPlan | None:
        """The payment a race is mostly about: often one that can be refunded, or a pending one."""
        draw = self.rng.random()
        recent = self.plans[-300:]
        if draw < 0.5:
            refundable = [p for p in recent if p.told.paid and p.told.refunded < p.told.amount]
            if refundable:
                return self.rng.choice(refundable)
        elif draw < 0.8:
            pending = [p for p in recent if p.told.status == "PENDING"]
            if pending:
                return self.rng.choice(pending)
        return self._pick_known(0.0)

    @staticmethod
    async def _after(turns: int, op: Callable[[], Awaitable[None]]) -> None:
        """Start ``op`` after ``turns`` turns of the event loop (a later arrival in a race)."""
        for _ in range(turns):
            await asyncio.sleep(0)
        await op()

    async def _login(self, terminal: Terminal) -> None:
        old = terminal.token
        answer = await self._gateway(
            "login",
            lambda: self.gateway.login(
                mid=terminal.mid,
                key=terminal.device,
                password=terminal.password,
                os_value=terminal.os_value,
                request_id=self._rid(),
            ),
        )
        if isinstance(answer, KessaiError):
            self._trace(f"login T{terminal.index} -> {_code(answer)}")
            return
        terminal.token = answer.session_token
        terminal.login_failures = 0
        self._trace(f"login T{terminal.index} -> ok")
        if old is not None:
            # The replaced session's token must stop working at once.
            stale = await self._gateway(
                "stale-token", lambda: self.gateway.status(old, "NOSUCHKEY", self._rid())
            )
            if not isinstance(stale, KessaiError) or not (
                stale.code == "SESSION_INVALID" or isinstance(stale, DatabaseFailed)
            ):
                raise InvariantViolation(c.ANSWER, "a replaced session's token still works")

    # -- quiescent points --------------------------------------------------------------------------

    async def _quiesce(self) -> None:
        """Stop the faults, let every deadline pass, settle everything, compare the books."""
        self.quiescent_points += 1
        self.plan.armed = False
        try:
            while (due := self.wallet.next_delivery()) is not None:
                if due > self.clock():
                    self.clock.advance((due - self.clock()).total_seconds())
                self.wallet.tick()
            self.wallet.outbox.clear()
            # Past the longest QR code, the give-up time, the wallet's password window and the
            # "not found" grace: only the worker's own passes are left to do.
            self.clock.advance(self.settings.qr_ttl_max_seconds + 600.0)
            interval = self.settings.worker_recheck_interval_ms / 1000 + 1.0
            for _ in range(200):
                self.wallet.tick()
                await self.op_worker()
                self._check_step()
                left = self.probe.count(
                    "SELECT (SELECT count(*) FROM payments WHERE status = 'PENDING')"
                    " + (SELECT count(*) FROM refunds WHERE status = 'PENDING')"
                )
                if left == 0:
                    break
                self.clock.advance(interval)
            self.checker.checks += 1
            problems = check_books(
                self.probe.payments(),
                self.probe.refunds(),
                {ref: WalletCharge(ref, net) for ref, net in self.wallet.ledger_nets().items()},
                [
                    WalletRefund(entry.refund_ref, entry.ref, entry.amount)
                    for entry in self.wallet.entries
                    if entry.kind == "refund" and entry.refund_ref is not None
                ],
            )
            if problems:
                name = problems[0].split(":", 1)[0]
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise InvariantViolation(name, problems[0].split(": ", 1)[1] + more)
            self._trace(f"quiescent books agree at {self.clock.elapsed():.0f}s")
        finally:
            self.plan.armed = True


async def _on_the_loop(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    await asyncio.sleep(0)
    return fn(*args, **kwargs)


def _code(answer: object) -> str:
    if isinstance(answer, DatabaseFailed):
        return "DB_FAILURE"
    return answer.code if isinstance(answer, KessaiError) else "ok"


def _scratch_root() -> str:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def simulate(config: SimConfig) -> SimResult:
    """Run one simulation to its end on a fresh event loop."""
    return asyncio.run(Simulation(config).run())
