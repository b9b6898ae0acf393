"""Routing decided from a read of its own: what the session lookup's folded read must agree with."""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.connectors import routing
from kessai.connectors.base import Connector, Flow


def route_by_own_read(
    conn: Connection,
    merchant_id: int,
    service_id: str,
    flow: Flow,
    connectors: Mapping[str, Connector],
) -> str:
    """The route from a plain read of the merchant's active account, decided by ``choose``."""
    settings = t.provider_settings
    row = conn.execute(
        sa.select(settings).where(
            settings.c.merchant_id == merchant_id,
            settings.c.service_id == service_id,
            settings.c.active.is_(True),
        )
    ).first()
    return routing.choose(row, service_id, flow, connectors)  # type: ignore[arg-type]
