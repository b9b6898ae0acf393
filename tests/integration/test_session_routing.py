"""A new payment's session lookup reads the merchant's provider account for the service.

Routing from what the session lookup read must decide exactly as routing from its own read of
``provider_settings``: the right merchant, the right service, only the active account, and
nothing remembered from one unit to the next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from sqlalchemy.engine import Connection

from kessai.connectors import routing
from kessai.connectors.base import Flow, FlowNotSupported
from kessai.connectors.secrets import SecretBox, generate_key
from kessai.security import token_hash
from kessai.service import sessions

if TYPE_CHECKING:
    from conftest import Harness, Till

BOX = SecretBox([generate_key()])


def _set(h: Harness, merchant_id: int, service_id: str, provider: str) -> None:
    given = (
        routing.AccountInput(provider, "K", "S", "MERCHANT_1", "http://127.0.0.1:9")
        if provider != "sandbox"
        else routing.AccountInput("sandbox")
    )
    h.db.run_sync(
        lambda conn: routing.set_provider(
            conn,
            merchant_id=merchant_id,
            service_id=service_id,
            given=given,
            box=BOX,
            now=h.clock(),
        )
    )


def _both_ways(h: Harness, till: Till, service_id: str, flow: Flow) -> tuple[str, str]:
    """The route from the session lookup's read, and the route from routing's own read."""
    connectors = routing.build_connectors(
        h.db, httpx.AsyncClient(), BOX, h.gateway.connectors[routing.SANDBOX]
    )
    digest = token_hash(till.token)

    def unit(conn: Connection) -> tuple[str, str]:
        now = h.clock()
        ctx = sessions.authenticate(conn, digest, now, h.settings, for_service=service_id)
        assert ctx.account_for == service_id
        folded = routing.choose(ctx.account, service_id, flow, connectors)
        own = routing.route(conn, ctx.merchant_id, service_id, flow, connectors)
        return folded, own

    return h.db.run_sync(unit, write=False)


def test_the_account_read_with_the_session_routes_as_routing_itself_would(h: Harness) -> None:
    mine = h.till(h.provision("Routed Shop"))
    other = h.till(h.provision("Other Shop"))
    assert _both_ways(h, mine, "01", Flow.CREATE_QR) == ("sandbox", "sandbox")

    _set(h, mine.shop.merchant_id, "01", "paypay")
    folded, own = _both_ways(h, mine, "01", Flow.CREATE_QR)
    assert folded == own and folded.startswith("paypay:")
    # Another service of the same merchant, and the same service of another merchant: sandbox.
    assert _both_ways(h, mine, "02", Flow.CREATE_QR) == ("sandbox", "sandbox")
    assert _both_ways(h, other, "01", Flow.CREATE_QR) == ("sandbox", "sandbox")
    # A flow the provider lacks is refused from the session's read too.
    with pytest.raises(FlowNotSupported):
        _both_ways(h, mine, "01", Flow.PAY)

    # Switched back to the sandbox, the account stays but is inactive: the next unit sees it.
    _set(h, mine.shop.merchant_id, "01", "sandbox")
    assert _both_ways(h, mine, "01", Flow.CREATE_QR) == ("sandbox", "sandbox")


def test_other_operations_do_not_read_the_account(h: Harness) -> None:
    till = h.till()
    _set(h, till.shop.merchant_id, "01", "paypay")
    digest = token_hash(till.token)
    ctx = h.db.run_sync(
        lambda conn: sessions.authenticate(conn, digest, h.clock(), h.settings), write=False
    )
    assert (ctx.account, ctx.account_for, ctx.listening) == (None, None, None)


def test_a_payment_is_routed_by_the_account_read_with_its_session(h: Harness) -> None:
    till = h.till()
    _set(h, till.shop.merchant_id, "01", "paypay")
    # PayPay offers no customer-code REQUEST through this gateway; the refusal proves the unit
    # routed by the account (the sandbox would have charged), and no payment is written.
    code = h.codes("01")[0]
    with pytest.raises(FlowNotSupported):
        till.request(code=code)
    assert h.table("payments") == []
    _set(h, till.shop.merchant_id, "01", "sandbox")
    assert till.request(code=code).status == "COMPLETED"
