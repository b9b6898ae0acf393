"""A new payment's session lookup reads the merchant's provider account for the service.

Routing from what the session lookup read must decide exactly as routing from its own read of
``provider_settings``: the right merchant, the right service, only the active account, and
nothing remembered from one unit to the next. The lookup itself is checked on SQLite, and on
PostgreSQL when ``KESSAI_TEST_POSTGRES_URL`` names a server (``scripts/test`` starts one).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy.engine import Connection

from connectors.reference import route_by_own_read
from kessai.adapters import repository as repo
from kessai.adapters.db import Database
from kessai.adapters.migrate import upgrade
from kessai.config import Settings
from kessai.connectors import routing
from kessai.connectors.base import Connector, Flow, FlowNotSupported
from kessai.connectors.sandbox import wallets
from kessai.connectors.secrets import SecretBox, generate_key
from kessai.security import keyed_hash, token_hash
from kessai.service import admin, sessions
from scale.support import create_database

if TYPE_CHECKING:
    from conftest import Harness

BOX = SecretBox([generate_key()])
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
POSTGRES = os.environ.get("KESSAI_TEST_POSTGRES_URL")


class _Offers:
    """A stand-in sandbox: routing only asks which flows a connector offers."""

    flows = frozenset(Flow)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database of each kind (PostgreSQL only when a server is named)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kessai.db'}"
    elif POSTGRES is None:
        pytest.skip("needs KESSAI_TEST_POSTGRES_URL")
    else:
        url = create_database(POSTGRES)
    db = Database(url)
    upgrade(db)
    yield db
    db.close()


def _logged_in(db: Database, name: str) -> tuple[int, str]:
    """A merchant with one terminal holding a live session: its id and the token's digest."""
    digest = token_hash(f"token-{uuid.uuid4().hex}")

    def unit(conn: Connection) -> int:
        merchant_id = admin.create_merchant(conn, name, NOW)
        os_value = admin.create_integration(conn, "Test POS", NOW)
        issued = admin.create_terminal(conn, merchant_id, NOW)
        terminal_id = sessions.read_login_subject(conn, os_value, issued.mid).terminal_id
        assert terminal_id is not None
        outcome = sessions.finish_login(
            conn,
            terminal_id=terminal_id,
            password_ok=True,
            device_key="AA:BB:CC:DD:EE:01",
            os_value=os_value,
            token_digest=digest,
            now=NOW,
            settings=Settings(),
            request_id="login",
        )
        assert outcome.error is None
        return merchant_id

    return db.run_sync(unit), digest


def _set(db: Database, merchant_id: int, service_id: str, provider: str) -> None:
    given = (
        routing.AccountInput("sandbox")
        if provider == "sandbox"
        else routing.AccountInput(provider, "K", "S", "MERCHANT_1", "http://127.0.0.1:9")
    )
    db.run_sync(
        lambda conn: routing.set_provider(
            conn, merchant_id=merchant_id, service_id=service_id, given=given, box=BOX, now=NOW
        )
    )


def _both_ways(
    db: Database, connectors: dict[str, Connector], digest: str, service_id: str, flow: Flow
) -> tuple[str, str]:
    """The route from the session lookup's read, and the route from routing's own read."""

    def unit(conn: Connection) -> tuple[str, str]:
        ctx, _, _ = sessions.authenticate_for_payment(conn, digest, NOW, Settings(), service_id)
        folded = routing.choose(ctx.account_of(service_id), service_id, flow, connectors)
        own = route_by_own_read(conn, ctx.merchant_id, service_id, flow, connectors)
        return folded, own

    return db.run_sync(unit, write=False)


def test_the_account_read_with_the_session_routes_as_routing_itself_would(
    any_db: Database,
) -> None:
    db = any_db
    mine, my_digest = _logged_in(db, "Routed Shop")
    _, other_digest = _logged_in(db, "Other Shop")
    sandbox: Connector = _Offers()  # type: ignore[assignment]
    connectors = routing.build_connectors(db, httpx.AsyncClient(), BOX, sandbox)
    sandboxed = ("sandbox", "sandbox")
    assert _both_ways(db, connectors, my_digest, "01", Flow.CREATE_QR) == sandboxed

    _set(db, mine, "01", "paypay")
    folded, own = _both_ways(db, connectors, my_digest, "01", Flow.CREATE_QR)
    assert folded == own and folded.startswith("paypay:")
    routed = db.run_sync(
        lambda conn: sessions.authenticate_for_payment(conn, my_digest, NOW, Settings(), "01"),
        write=False,
    )[0]
    assert routed.account is not None and routed.account.secret_ciphertext
    assert "secret" not in repr(routed)  # the sealed secret stays out of logs and tracebacks
    # Another service of the same merchant, and the same service of another merchant: sandbox.
    assert _both_ways(db, connectors, my_digest, "02", Flow.CREATE_QR) == sandboxed
    assert _both_ways(db, connectors, other_digest, "01", Flow.CREATE_QR) == sandboxed
    # A flow the provider lacks is refused from the session's read too.
    with pytest.raises(FlowNotSupported):
        _both_ways(db, connectors, my_digest, "01", Flow.PAY)

    # Switched back to the sandbox, the account stays but is inactive: the next unit sees it.
    _set(db, mine, "01", "sandbox")
    assert _both_ways(db, connectors, my_digest, "01", Flow.CREATE_QR) == sandboxed

    # Operations other than creating a payment read neither the account nor the endpoint.
    ctx = db.run_sync(
        lambda conn: sessions.authenticate(conn, my_digest, NOW, Settings()), write=False
    )
    assert (ctx.account, ctx.account_for, ctx.listening) == (None, None, None)
    # Routing on it, or on a lookup made for another service, is refused rather than defaulted
    # to the sandbox: the account that applies was never read.
    with pytest.raises(LookupError, match="read for no serviceId, not for serviceId 01"):
        ctx.account_of("01")
    other = db.run_sync(
        lambda conn: sessions.authenticate_for_payment(conn, my_digest, NOW, Settings(), "02"),
        write=False,
    )[0]
    with pytest.raises(LookupError, match="read for 02, not for serviceId 01"):
        other.account_of("01")


def test_a_row_read_along_with_the_session_is_the_rows_own_or_none(any_db: Database) -> None:
    # The sandbox's customer code, read by a new payment's session lookup (``Along``): the same
    # columns as the code's own read, None in each for a code that was never issued, and the
    # session's context as without it.
    db = any_db
    _, digest = _logged_in(db, "Along Shop")
    code = db.run_sync(lambda conn: wallets.issue_codes(conn, "01", "declined", 1, NOW)[0])
    key = db.run_sync(repo.code_key, write=False)

    def lookup(code_digest: str) -> tuple[object, object, object]:
        def unit(conn: Connection) -> tuple[object, object, object]:
            plain, _, none = sessions.authenticate_for_payment(conn, digest, NOW, Settings(), "01")
            assert none is None
            ctx, _, row = sessions.authenticate_for_payment(
                conn,
                digest,
                NOW,
                Settings(),
                "01",
                along=wallets.CODE_ALONG,
                along_params={"code_digest": code_digest},
            )
            assert ctx == plain
            return row.code_hash, row.code_outcome, row.code_used_at

        return db.run_sync(unit, write=False)

    assert lookup(keyed_hash(key, code)) == (keyed_hash(key, code), "declined", None)
    assert lookup(keyed_hash(key, "never issued")) == (None, None, None)


def test_a_payment_is_routed_by_the_account_read_with_its_session(h: Harness) -> None:
    till = h.till()
    _set(h.db, till.shop.merchant_id, "01", "paypay")
    # PayPay offers no customer-code REQUEST through this gateway; the refusal proves the unit
    # routed by the account (the sandbox would have charged), and no payment is written.
    code = h.codes("01")[0]
    with pytest.raises(FlowNotSupported):
        till.request(code=code)
    assert h.table("payments") == []
    _set(h.db, till.shop.merchant_id, "01", "sandbox")
    assert till.request(code=code).status == "COMPLETED"
