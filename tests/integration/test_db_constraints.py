"""Constraints the database enforces by itself, with every line of application code bypassed.

Each refusal is paired with the nearest insert that is allowed, so a test cannot pass because the
row was wrong for some other reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.adapters.db import Database

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
_serial = itertools.count(1)


def unique_digits(width: int) -> str:
    return f"{next(_serial):0{width}d}"


def insert(db: Database, table: sa.Table, **values: Any) -> int:
    result = db.run_sync(lambda conn: conn.execute(table.insert().values(**values)))
    return int(result.inserted_primary_key[0])


def refused(db: Database, fn: Callable[[Connection], object]) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        db.run_sync(fn)


def merchant(db: Database, name: str = "M") -> int:
    return insert(db, t.merchants, name=name, created_at=NOW)


def terminal(db: Database, merchant_id: int) -> int:
    return insert(
        db,
        t.terminals,
        mid=unique_digits(16),
        merchant_id=merchant_id,
        password_hash="$argon2id$x",
        passcode_hash="$argon2id$y",
        enabled=True,
        login_failures=0,
        passcode_failures=0,
        created_at=NOW,
        updated_at=NOW,
    )


def payment_values(merchant_id: int, terminal_id: int, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "trans_id": unique_digits(10),
        "merchant_id": merchant_id,
        "terminal_id": terminal_id,
        "trans_key": f"K{unique_digits(6)}",
        "kind": "CUSTOMER_CODE",
        "service_id": "01",
        "amount": 1000,
        "status": "COMPLETED",
        "refunded_amount": 0,
        "request_hash": "0" * 64,
        "provider": "sandbox",
        "version": 1,
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(changes)
    return values


def session_values(terminal_id: int, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "token_hash": unique_digits(64),
        "terminal_id": terminal_id,
        "device_key": "AA:BB",
        "os": "123456",
        "created_at": NOW,
        "last_seen_at": NOW,
        "idle_expires_at": NOW + timedelta(hours=1),
    }
    values.update(changes)
    return values


def refund_values(payment_id: int, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "refund_id": "R" + unique_digits(11),
        "payment_id": payment_id,
        "refund_key": "RK1",
        "amount": 100,
        "status": "PENDING",
        "actor": "test",
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(changes)
    return values


@pytest.fixture
def two_shops(db: Database) -> tuple[tuple[int, int], tuple[int, int]]:
    first = merchant(db, "First")
    second = merchant(db, "Second")
    return (first, terminal(db, first)), (second, terminal(db, second))


# --- payments -----------------------------------------------------------------------------------


def test_same_trans_key_twice_for_one_merchant_is_refused(db: Database, two_shops: Any) -> None:
    (m1, t1), (m2, t2) = two_shops
    insert(db, t.payments, **payment_values(m1, t1, trans_key="ORDER1"))
    refused(
        db,
        lambda c: c.execute(
            t.payments.insert().values(**payment_values(m1, t1, trans_key="ORDER1"))
        ),
    )
    # The same transKey at another merchant is another payment.
    insert(db, t.payments, **payment_values(m2, t2, trans_key="ORDER1"))


def test_same_trans_key_from_two_terminals_of_one_merchant_is_refused(db: Database) -> None:
    m = merchant(db)
    t1, t2 = terminal(db, m), terminal(db, m)
    insert(db, t.payments, **payment_values(m, t1, trans_key="ORDER1"))
    refused(
        db,
        lambda c: c.execute(
            t.payments.insert().values(**payment_values(m, t2, trans_key="ORDER1"))
        ),
    )


def test_duplicate_trans_id_is_refused_even_across_merchants(db: Database, two_shops: Any) -> None:
    (m1, t1), (m2, t2) = two_shops
    insert(db, t.payments, **payment_values(m1, t1, trans_id="1234567890"))
    refused(
        db,
        lambda c: c.execute(
            t.payments.insert().values(**payment_values(m2, t2, trans_id="1234567890"))
        ),
    )
    insert(db, t.payments, **payment_values(m2, t2, trans_id="1234567891"))


@pytest.mark.parametrize("amount", [0, -1, 10_000_000])
def test_amount_outside_bounds_is_refused(db: Database, two_shops: Any, amount: int) -> None:
    (m1, t1), _ = two_shops
    refused(
        db, lambda c: c.execute(t.payments.insert().values(**payment_values(m1, t1, amount=amount)))
    )


@pytest.mark.parametrize("amount", [1, 9_999_999])
def test_amount_at_the_bounds_is_allowed(db: Database, two_shops: Any, amount: int) -> None:
    (m1, t1), _ = two_shops
    insert(db, t.payments, **payment_values(m1, t1, amount=amount))


def test_refunded_more_than_paid_is_refused(db: Database, two_shops: Any) -> None:
    (m1, t1), _ = two_shops
    refused(
        db,
        lambda c: c.execute(
            t.payments.insert().values(**payment_values(m1, t1, amount=500, refunded_amount=501))
        ),
    )
    refused(
        db,
        lambda c: c.execute(
            t.payments.insert().values(**payment_values(m1, t1, refunded_amount=-1))
        ),
    )
    pk = insert(db, t.payments, **payment_values(m1, t1, amount=500, refunded_amount=500))
    # An UPDATE is held to the same CHECK as an INSERT.
    refused(
        db,
        lambda c: c.execute(
            t.payments.update().where(t.payments.c.id == pk).values(refunded_amount=501)
        ),
    )
    refused(
        db,
        lambda c: c.execute(t.payments.update().where(t.payments.c.id == pk).values(amount=0)),
    )


def test_payment_for_an_unknown_terminal_is_refused(db: Database, two_shops: Any) -> None:
    (m1, _), _ = two_shops
    refused(db, lambda c: c.execute(t.payments.insert().values(**payment_values(m1, 999))))


# --- refunds ------------------------------------------------------------------------------------


def test_same_refund_key_twice_for_one_payment_is_refused(db: Database, two_shops: Any) -> None:
    (m1, t1), _ = two_shops
    p1 = insert(db, t.payments, **payment_values(m1, t1))
    p2 = insert(db, t.payments, **payment_values(m1, t1))
    insert(db, t.refunds, **refund_values(p1, refund_key="RK1"))
    refused(
        db, lambda c: c.execute(t.refunds.insert().values(**refund_values(p1, refund_key="RK1")))
    )
    # The same refundKey on another payment is another refund.
    insert(db, t.refunds, **refund_values(p2, refund_key="RK1"))
    insert(db, t.refunds, **refund_values(p1, refund_key="RK2"))


def test_duplicate_refund_id_and_zero_refund_are_refused(db: Database, two_shops: Any) -> None:
    (m1, t1), _ = two_shops
    p1 = insert(db, t.payments, **payment_values(m1, t1))
    insert(db, t.refunds, **refund_values(p1, refund_id="R00000000001", refund_key="A"))
    refused(
        db,
        lambda c: c.execute(
            t.refunds.insert().values(**refund_values(p1, refund_id="R00000000001", refund_key="B"))
        ),
    )
    refused(
        db,
        lambda c: c.execute(
            t.refunds.insert().values(**refund_values(p1, amount=0, refund_key="C"))
        ),
    )


# --- sessions -----------------------------------------------------------------------------------


def test_two_live_sessions_for_one_terminal_are_refused(db: Database, two_shops: Any) -> None:
    (_, t1), (_, t2) = two_shops
    insert(db, t.sessions, **session_values(t1))
    refused(
        db,
        lambda c: c.execute(t.sessions.insert().values(**session_values(t1, device_key="OTHER"))),
    )
    # Another terminal's live session is no conflict.
    insert(db, t.sessions, **session_values(t2))


def test_ended_sessions_and_one_live_session_coexist(db: Database, two_shops: Any) -> None:
    (_, t1), _ = two_shops
    for _ in range(3):
        insert(db, t.sessions, **session_values(t1, ended_at=NOW, end_reason="logout"))
    live = insert(db, t.sessions, **session_values(t1))
    refused(db, lambda c: c.execute(t.sessions.insert().values(**session_values(t1))))
    # Ending the live one frees the slot.
    db.run_sync(
        lambda c: c.execute(t.sessions.update().where(t.sessions.c.id == live).values(ended_at=NOW))
    )
    insert(db, t.sessions, **session_values(t1))


def test_reviving_an_ended_session_beside_a_live_one_is_refused(
    db: Database, two_shops: Any
) -> None:
    (_, t1), _ = two_shops
    ended = insert(db, t.sessions, **session_values(t1, ended_at=NOW))
    insert(db, t.sessions, **session_values(t1))
    refused(
        db,
        lambda c: c.execute(
            t.sessions.update().where(t.sessions.c.id == ended).values(ended_at=None)
        ),
    )


def test_duplicate_token_hash_is_refused(db: Database, two_shops: Any) -> None:
    (_, t1), (_, t2) = two_shops
    insert(db, t.sessions, **session_values(t1, token_hash="a" * 64))
    refused(
        db,
        lambda c: c.execute(t.sessions.insert().values(**session_values(t2, token_hash="a" * 64))),
    )


# --- credentials ----------------------------------------------------------------------------------


def test_duplicate_mid_and_os_are_refused(db: Database, two_shops: Any) -> None:
    (m1, _), _ = two_shops
    row = {
        "mid": "1111222233334444",
        "merchant_id": m1,
        "password_hash": "h",
        "passcode_hash": "h",
        "enabled": True,
        "login_failures": 0,
        "passcode_failures": 0,
        "created_at": NOW,
        "updated_at": NOW,
    }
    insert(db, t.terminals, **row)
    refused(db, lambda c: c.execute(t.terminals.insert().values(**row)))
    integration = {"os": "123456", "name": "POS", "enabled": True, "created_at": NOW}
    insert(db, t.integrations, **integration)
    refused(db, lambda c: c.execute(t.integrations.insert().values(**integration)))


# --- the audit trail ------------------------------------------------------------------------------


def audit_row(db: Database) -> int:
    return insert(db, t.audit_events, at=NOW, actor="test", action="payment.created", payment_id=1)


def test_audit_events_accept_inserts(db: Database) -> None:
    first, second = audit_row(db), audit_row(db)
    assert second > first


def test_audit_events_refuse_update(db: Database) -> None:
    pk = audit_row(db)
    refused(
        db,
        lambda c: c.execute(
            t.audit_events.update().where(t.audit_events.c.id == pk).values(action="forged")
        ),
    )
    refused(db, lambda c: c.exec_driver_sql("UPDATE audit_events SET actor = 'x'"))
    action = db.run_sync(
        lambda c: c.execute(
            sa.select(t.audit_events.c.action).where(t.audit_events.c.id == pk)
        ).scalar_one()
    )
    assert action == "payment.created"


def test_audit_events_refuse_delete(db: Database) -> None:
    pk = audit_row(db)
    refused(db, lambda c: c.execute(t.audit_events.delete().where(t.audit_events.c.id == pk)))
    refused(db, lambda c: c.exec_driver_sql("DELETE FROM audit_events"))
    remaining = db.run_sync(
        lambda c: c.execute(sa.select(sa.func.count()).select_from(t.audit_events)).scalar_one()
    )
    assert remaining == 1
