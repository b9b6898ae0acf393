"""A payment settled in its own unit reaches the webhook outbox exactly when its merchant listens.

The unit that creates the payment learns from its session lookup whether the merchant has an
enabled endpoint, instead of asking the outbox's own lookup; both must decide alike, and nothing
about endpoints may be remembered from one unit to the next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.domain.model import PaymentStatus

if TYPE_CHECKING:
    from conftest import Harness, Shop


def _listen(h: Harness, shop: Shop, *, enabled: bool) -> None:
    """Give the merchant an endpoint (enabled or not), or switch the one it has."""
    e = t.webhook_endpoints
    now = h.clock()

    def unit(conn: Connection) -> None:
        changed = conn.execute(
            e.update().where(e.c.merchant_id == shop.merchant_id).values(enabled=enabled)
        ).rowcount
        if not changed:
            conn.execute(
                e.insert().values(
                    merchant_id=shop.merchant_id,
                    url="https://shop.example/hooks",
                    secret_nonce="00" * 16,
                    enabled=enabled,
                    created_at=now,
                    updated_at=now,
                )
            )

    h.db.run_sync(unit)


def _events(h: Harness, trans_id: str) -> list[str]:
    pk = h.payment_row(trans_id)["id"]
    ev = t.webhook_events
    query = sa.select(ev.c.type).where(ev.c.payment_id == pk).order_by(ev.c.id)
    return list(h.db.run_sync(lambda conn: conn.execute(query).scalars().all(), write=False))


def test_only_a_listening_merchants_payments_reach_the_outbox(h: Harness) -> None:
    quiet = h.till(h.provision("Quiet Shop"))
    loud = h.till(h.provision("Loud Shop"))
    muted = h.till(h.provision("Muted Shop"))
    _listen(h, loud.shop, enabled=True)
    _listen(h, muted.shop, enabled=False)

    for till, expected in ((quiet, []), (loud, ["payment.completed"]), (muted, [])):
        paid = till.request(1000)
        assert paid.status is PaymentStatus.COMPLETED
        assert _events(h, paid.trans_id) == expected, till.shop.name

    refused = loud.request(500, outcome="declined")
    assert refused.status is PaymentStatus.FAILED
    assert _events(h, refused.trans_id) == ["payment.failed"]


def test_a_change_of_endpoint_counts_from_the_next_payment_on(h: Harness) -> None:
    till = h.till()
    _listen(h, till.shop, enabled=True)
    assert _events(h, till.request(100).trans_id) == ["payment.completed"]
    _listen(h, till.shop, enabled=False)
    assert _events(h, till.request(100).trans_id) == []
    _listen(h, till.shop, enabled=True)
    assert _events(h, till.request(100).trans_id) == ["payment.completed"]
