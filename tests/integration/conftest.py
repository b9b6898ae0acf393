"""Integration fixtures: a real, migrated SQLite file per test, a movable clock, a gateway.

There is no pytest-asyncio: the gateway's coroutines run with ``asyncio.run`` from plain tests.
Time never passes by itself: tests move ``FakeClock`` to cross every deadline without sleeping.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import repository as repo
from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.adapters.migrate import upgrade
from kessai.api.app import build_gateway
from kessai.config import Settings
from kessai.connectors.sandbox import wallets
from kessai.domain.model import Payment
from kessai.service import admin
from kessai.service.admin import IssuedTerminal
from kessai.service.gateway import Gateway, PaymentView

T = TypeVar("T")
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion on a fresh event loop."""
    return asyncio.run(coro)


class FakeClock:
    """An aware UTC clock that moves only when told to."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def seed_terminal(url: str, shop: str, codes: int) -> tuple[dict[str, Any], list[str]]:
    """Migrate a new database; one merchant's terminal (its LOGIN body) and sandbox codes."""
    db = Database(url)
    try:
        upgrade(db)
        now = datetime.now(UTC)

        def seed(conn: Connection) -> tuple[dict[str, Any], list[str]]:
            merchant = admin.create_merchant(conn, shop, now)
            os_value = admin.create_integration(conn, f"{shop} POS", now)
            terminal = admin.create_terminal(conn, merchant, now)
            login = {"mid": terminal.mid, "password": terminal.password, "os": os_value}
            return login, wallets.issue_codes(conn, "01", "success", codes, now)

        return db.run_sync(seed)
    finally:
        db.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'kessai.db'}"


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated database with no gateway around it."""
    database = Database(db_url)
    upgrade(database)
    yield database
    database.close()


@dataclass(frozen=True)
class Shop:
    """A provisioned merchant with one terminal and the integration it logs in with."""

    merchant_id: int
    name: str
    os: str
    terminal: IssuedTerminal

    @property
    def mid(self) -> str:
        return self.terminal.mid


class Harness:
    """A gateway (sandbox connector, real SQLite file, fake clock) and handy ways to drive it."""

    def __init__(self, url: str, clock: FakeClock, settings: Settings) -> None:
        self.url = url
        self.clock = clock
        self.settings = settings
        self.gateway: Gateway = build_gateway(url, settings, clock)
        upgrade(self.gateway.db)
        self._ids = itertools.count(1)
        self.secrets: set[str] = set()  # every credential and code handed out, for leak checks

    @property
    def db(self) -> Database:
        return self.gateway.db

    def rid(self) -> str:
        return f"req-{next(self._ids)}"

    def restart(self) -> None:
        """Drop the process (as after a crash) and start a new gateway on the same database."""
        self.gateway.db.close()
        self.gateway = build_gateway(self.url, self.settings, self.clock)

    def close(self) -> None:
        self.gateway.db.close()

    # -- provisioning ------------------------------------------------------------------------

    def provision(self, name: str = "Kessai Shop", passcode: str | None = None) -> Shop:
        now = self.clock()

        def unit(conn: Connection) -> Shop:
            merchant_id = admin.create_merchant(conn, name, now)
            os_value = admin.create_integration(conn, "Test POS", now)
            terminal = admin.create_terminal(conn, merchant_id, now, passcode=passcode)
            return Shop(merchant_id, name, os_value, terminal)

        shop = self.db.run_sync(unit)
        self.secrets |= {shop.terminal.password, shop.terminal.passcode}
        return shop

    def codes(self, service_id: str = "01", outcome: str = "success", count: int = 1) -> list[str]:
        now = self.clock()
        issued = self.db.run_sync(
            lambda conn: wallets.issue_codes(conn, service_id, outcome, count, now)
        )
        self.secrets.update(issued)
        return issued

    def login(self, shop: Shop, key: str = "AA:BB:CC:DD:EE:01", password: str | None = None) -> str:
        result = run(
            self.gateway.login(
                mid=shop.mid,
                key=key,
                password=shop.terminal.password if password is None else password,
                os_value=shop.os,
                request_id=self.rid(),
            )
        )
        self.secrets.add(result.session_token)
        return result.session_token

    def till(self, shop: Shop | None = None, key: str = "AA:BB:CC:DD:EE:01") -> Till:
        shop = shop or self.provision()
        return Till(self, shop, self.login(shop, key))

    # -- the sandbox wallet's side -------------------------------------------------------------

    def settle(self, trans_id: str, approve: bool) -> str:
        now = self.clock()
        return self.db.run_sync(lambda conn: wallets.settle(conn, trans_id, approve, now))

    def charge(self, trans_id: str) -> dict[str, Any] | None:
        rows = [r for r in self.table("sandbox_charges") if r["ref"] == trans_id]
        return rows[0] if rows else None

    # -- reading the books ---------------------------------------------------------------------

    def table(self, name: str) -> list[dict[str, Any]]:
        table = t.metadata.tables[name]
        rows = self.db.run_sync(
            lambda conn: conn.execute(sa.select(table).order_by(*table.primary_key)).all(),
            write=False,
        )
        return [dict(row._mapping) for row in rows]

    def payment_row(self, trans_id: str) -> dict[str, Any]:
        rows = [r for r in self.table("payments") if r["trans_id"] == trans_id]
        assert len(rows) == 1, trans_id
        return rows[0]

    def audit(self, trans_id: str) -> list[dict[str, Any]]:
        pk = self.payment_row(trans_id)["id"]
        return self.db.run_sync(lambda conn: repo.audit_trail(conn, pk), write=False)

    def stored(self, merchant_id: int, trans_id: str) -> Payment:
        found = self.db.run_sync(
            lambda conn: repo.find_payment(conn, merchant_id, trans_id=trans_id), write=False
        )
        assert found is not None
        return found.payment


@dataclass
class Till:
    """One logged-in terminal: the nine operations with test-friendly defaults."""

    h: Harness
    shop: Shop
    token: str
    _keys: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def new_key(self) -> str:
        return f"T{self.shop.merchant_id}x{next(self._keys):05d}"

    def request(
        self,
        amount: int = 1000,
        *,
        outcome: str = "success",
        code: str | None = None,
        service_id: str = "01",
        trans_key: str | None = None,
    ) -> Payment:
        code = code or self.h.codes(service_id, outcome)[0]
        view = run(
            self.h.gateway.request(
                self.token,
                trans_key=trans_key or self.new_key(),
                amount=amount,
                code=code,
                service_id=None,
                request_id=self.h.rid(),
            )
        )
        return view.payment

    def qr(
        self,
        amount: int = 1000,
        *,
        ttl_seconds: int | None = None,
        service_id: str = "01",
        trans_key: str | None = None,
    ) -> Payment:
        view = run(
            self.h.gateway.get_qr_code(
                self.token,
                trans_key=trans_key or self.new_key(),
                amount=amount,
                service_id=service_id,
                ttl_seconds=ttl_seconds,
                request_id=self.h.rid(),
            )
        )
        return view.payment

    def paycheck(self, trans_id: str) -> Payment:
        return run(self.h.gateway.paycheck(self.token, trans_id, self.h.rid())).payment

    def status(self, trans_key: str) -> Payment:
        return run(self.h.gateway.status(self.token, trans_key, self.h.rid())).payment

    def refund(
        self,
        trans_id: str,
        amount: int | None = None,
        *,
        passcode: str | None = None,
        refund_key: str | None = None,
    ) -> PaymentView:
        return run(
            self.h.gateway.refund(
                self.token,
                trans_id,
                passcode=self.shop.terminal.passcode if passcode is None else passcode,
                amount=amount,
                refund_key=refund_key,
                request_id=self.h.rid(),
            )
        )

    def voucher(self, trans_id: str, voucher_no: str) -> Payment:
        return run(
            self.h.gateway.set_voucher(self.token, trans_id, voucher_no, self.h.rid())
        ).payment

    def logout(self) -> None:
        run(self.h.gateway.logout(self.token, self.h.rid()))


@pytest.fixture
def make_harness(db_url: str, clock: FakeClock) -> Iterator[Callable[..., Harness]]:
    """Build the test's gateway with ``Settings`` overrides (one per test)."""
    made: list[Harness] = []

    def make(**overrides: Any) -> Harness:
        assert not made, "one harness per test: they would share the database file"
        # The harness pays with the sandbox's codes, which production leaves off.
        harness = Harness(db_url, clock, Settings(**{"sandbox_enabled": True, **overrides}))
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def h(make_harness: Callable[..., Harness]) -> Harness:
    """A gateway with the default settings."""
    return make_harness()
