"""Reading and writing the gateway's books inside a unit of work.

Every function takes the unit's ``Connection``; none commits. A state change and its audit event
are written by the same unit, so they commit together or not at all.
"""

from __future__ import annotations

import functools
import operator
import secrets
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol, Required, TypedDict, Unpack

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from kessai.adapters import schema as t
from kessai.adapters.hot import Hot
from kessai.connectors.secrets import HOW_TO_SET_A_KEY, SecretBox, SecretKeyInvalid
from kessai.domain.errors import Conflict, InternalError
from kessai.domain.model import (
    Payment,
    PaymentKind,
    PaymentStatus,
    PendingReason,
    Refund,
    RefundStatus,
)

_code_keys: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
CODE_KEY_NAME: Final = "code_hmac_key"
# Read through ``Hot`` like the rest of a payment's unit: a plain read, it begins no transaction.
_CODE_KEY = Hot(sa.select(t.meta.c.value).where(t.meta.c.key == CODE_KEY_NAME))


# A sealed code key: the key's own row holds SEALED, and one row per master key it is sealed
# with, named CODE_KEY_NAME + "." + that key's fingerprint, holds its Fernet token.
SEALED: Final = "sealed"
_SEALED_ROWS = sa.select(t.meta.c.key, t.meta.c.value).where(
    t.meta.c.key.like(CODE_KEY_NAME + ".%")
)


def code_key(conn: Connection) -> str:
    """The database's secret for keyed hashes of customer codes (created by the first migration).

    Cached per database: it never changes once created, so every instance may keep it (after
    ``reset_code_key``, gateway processes must be restarted). Where it is sealed with the
    master key (``seal_code_key``), the configured master keys open it.
    """
    # Keyed by the engine object: turning its URL into text on every call cost more than this.
    engine = conn.engine
    key = _code_keys.get(engine)
    if key is None:
        try:
            key = _code_keys[engine] = _unsealed(conn, SecretBox.from_env())
        except SecretKeyInvalid as exc:
            raise InternalError(str(exc)) from exc
    return key


def _unsealed(conn: Connection, box: SecretBox | None) -> str:
    """The code key in the clear; SecretKeyInvalid when it is sealed and no key opens it."""
    row = _CODE_KEY.run(conn).first()
    value = None if row is None else row.value
    if value is None:
        raise InternalError("the database is not migrated: run `kessai migrate`")
    if value != SEALED:
        return str(value)
    tokens = {
        str(r.key).removeprefix(CODE_KEY_NAME + "."): str(r.value)
        for r in conn.execute(_SEALED_ROWS)
    }
    if box is None:
        raise SecretKeyInvalid(
            "this database's key for customer codes is sealed with the master key: "
            f"{HOW_TO_SET_A_KEY}"
        )
    key = box.decrypt_any(tokens)
    if key is None:
        raise SecretKeyInvalid(
            "this database's key for customer codes is sealed with master key(s) "
            f"{', '.join(sorted(tokens))}, none of which is configured "
            f"({', '.join(box.key_ids)})"
        )
    return key


def check_code_key(conn: Connection) -> None:
    """Raise SecretKeyInvalid when the code key is sealed and no configured master key opens it.

    Every command checks this at its start, so that a gateway missing the key stops with one
    line rather than failing every payment. The key opened is kept, as ``code_key`` keeps it.
    """
    _code_keys[conn.engine] = _unsealed(conn, SecretBox.from_env())


def seal_code_key(conn: Connection) -> list[str]:
    """Seal the code key with every configured master key; answers their fingerprints.

    In the clear, a copy of the database alone would be enough to test candidate codes against
    the keyed hashes stored with payments and sandbox codes (a few wallets leave only millions
    of candidates once the masked digits are known). Sealed with each configured key, so that
    instances holding any one of them (during a rotation, some hold only the old one) all open
    it. Run by `kessai admin key seal-codes`, and when a database is created with a master key
    configured; never as a side effect of other commands, which could shut out instances
    configured otherwise.
    """
    box = SecretBox.from_env()
    if box is None:
        raise SecretKeyInvalid(f"sealing needs a master key: {HOW_TO_SET_A_KEY}")
    _store_code_key(conn, _unsealed(conn, box), box)
    return box.key_ids


def _store_code_key(conn: Connection, key: str, box: SecretBox | None) -> None:
    meta = t.meta
    conn.execute(meta.delete().where(meta.c.key.like(CODE_KEY_NAME + ".%")))
    if box is None:
        conn.execute(meta.update().where(meta.c.key == CODE_KEY_NAME).values(value=key))
        return
    conn.execute(meta.update().where(meta.c.key == CODE_KEY_NAME).values(value=SEALED))
    rows = [
        {"key": f"{CODE_KEY_NAME}.{ident}", "value": token}
        for ident, token in box.encrypt_each(key).items()
    ]
    conn.execute(meta.insert(), rows)


def reset_code_key(conn: Connection, now: datetime) -> None:
    """Replace the key for customer codes with a new one (sealed if a master key is configured).

    The way out when the master keys that sealed it are lost. What was hashed under the old key
    no longer matches: a retry of an earlier REQUEST or GET-QR-CODE answers IDEMPOTENCY_CONFLICT
    instead of replaying (never a second charge), and sandbox codes issued before are unknown.
    Gateway processes already running keep the old key until they are restarted.
    """
    _store_code_key(conn, secrets.token_hex(32), SecretBox.from_env())
    _code_keys.pop(conn.engine, None)
    audit(conn, at=now, actor="admin:cli", action="codes.key_reset")


class ProviderSettingsRow(Protocol):
    """A merchant's account with a provider (a ``provider_settings`` row), as routing reads it."""

    id: int
    merchant_id: int
    service_id: str
    provider: str
    version: int
    api_key: str | None
    provider_merchant_id: str | None
    base_url: str | None
    options: str | None
    secret_ciphertext: str | None
    secret_key_id: str | None


# The columns ``ProviderSettingsRow`` names: what a query must select for routing.
PROVIDER_SETTINGS_ROW_FIELDS: Final = tuple(ProviderSettingsRow.__annotations__)


@dataclass(frozen=True, slots=True)
class StoredPayment:
    """A payment with the bookkeeping the domain does not need."""

    pk: int
    payment: Payment
    provider: str
    provider_ref: str | None
    provider_checked_at: datetime | None
    request_hash: str


# The hot path's statements are built once: SQLAlchemy then reuses their compiled form without
# rebuilding the expression or its cache key on every call, which used to cost more than the SQL.
_P = sa.bindparam
_REFUNDS_OF = Hot(
    sa.select(t.refunds).where(t.refunds.c.payment_id == _P("payment_pk")).order_by(t.refunds.c.id)
)
_BY_MERCHANT = sa.select(t.payments).where(t.payments.c.merchant_id == _P("merchant_id"))
_BY_TRANS_ID = _BY_MERCHANT.where(t.payments.c.trans_id == _P("value"))
_BY_TRANS_KEY = _BY_MERCHANT.where(t.payments.c.trans_key == _P("value"))
_FINDERS: Final = {
    (False, False): Hot(_BY_TRANS_ID),
    (False, True): Hot(_BY_TRANS_ID.with_for_update()),
    (True, False): Hot(_BY_TRANS_KEY),
    (True, True): Hot(_BY_TRANS_KEY.with_for_update()),
}
_BY_PK = sa.select(t.payments).where(t.payments.c.id == _P("pk"))
_LOAD = {False: Hot(_BY_PK), True: Hot(_BY_PK.with_for_update())}
_MERCHANT_NAME = Hot(sa.select(t.merchants.c.name).where(t.merchants.c.id == _P("merchant_id")))
_INSERT_PAYMENT = Hot(t.payments.insert())
_SAVE_PAYMENT = Hot(
    t.payments.update().where(
        t.payments.c.id == _P("b_pk"), t.payments.c.version == _P("b_version")
    )
)
_TOUCH_CHECK = Hot(t.payments.update().where(t.payments.c.id == _P("b_pk")))
_INSERT_REFUND = Hot(t.refunds.insert())
_UPDATE_REFUND = Hot(t.refunds.update().where(t.refunds.c.refund_id == _P("b_refund_id")))
_AUDIT_COLUMNS: Final = tuple(c.name for c in t.audit_events.c if c.name != "id")
# Entries appended together go in one multi-row INSERT: a payment created and settled in the same
# unit writes both of its entries with one statement. A statement holds at most this many rows,
# so SQLite's limit on bound parameters and the number of compiled forms (one per row count) both
# stay small.
AUDIT_ROWS_PER_STATEMENT: Final = 16
# The parameter names of each row of such an INSERT: ``at_0``, ``merchant_id_0``, …, ``at_1``, …
_AUDIT_PARAMS: Final = tuple(
    tuple(f"{name}_{i}" for name in _AUDIT_COLUMNS) for i in range(AUDIT_ROWS_PER_STATEMENT)
)
# All the parameter names of an INSERT of ``n`` rows, in order, by ``n``; and an entry's values in
# the order of its row's names.
_AUDIT_KEYS: Final = tuple(
    tuple(name for row in _AUDIT_PARAMS[:n] for name in row)
    for n in range(AUDIT_ROWS_PER_STATEMENT + 1)
)
_audit_row: Final = operator.itemgetter(*_AUDIT_COLUMNS)


@functools.cache
def _insert_audit_rows(count: int) -> Hot:
    """The INSERT of ``count`` audit entries at once, built on first use for each count."""
    return Hot(
        t.audit_events.insert().values(
            [
                {
                    name: _P(param, type_=t.audit_events.c[name].type)
                    for name, param in zip(_AUDIT_COLUMNS, _AUDIT_PARAMS[i], strict=True)
                }
                for i in range(count)
            ]
        )
    )


_MAY_HAVE_REFUNDS: Final = frozenset(
    {
        PaymentStatus.COMPLETED.value,
        PaymentStatus.PARTIALLY_REFUNDED.value,
        PaymentStatus.REFUNDED.value,
    }
)


def _refunds(conn: Connection, payment_pk: int) -> tuple[Refund, ...]:
    rows = _REFUNDS_OF.run(conn, {"payment_pk": payment_pk}).all()
    return tuple(
        Refund(
            refund_id=r.refund_id,
            refund_key=r.refund_key,
            amount=r.amount,
            status=RefundStatus(r.status),
            created_at=r.created_at,
            updated_at=r.updated_at,
            failure_reason=r.failure_reason,
        )
        for r in rows
    )


def _to_stored(conn: Connection, row: sa.Row[Any]) -> StoredPayment:
    payment = Payment(
        trans_id=row.trans_id,
        trans_key=row.trans_key,
        merchant_id=row.merchant_id,
        terminal_id=row.terminal_id,
        kind=PaymentKind(row.kind),
        service_id=row.service_id,
        amount=row.amount,
        status=PaymentStatus(row.status),
        pending_reason=PendingReason(row.pending_reason) if row.pending_reason else None,
        failure_code=row.failure_code,
        failure_message=row.failure_message,
        refunded_amount=row.refunded_amount,
        voucher_no=row.voucher_no,
        code_masked=row.code_masked,
        qr_data=row.qr_data,
        qr_expires_at=row.qr_expires_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        version=row.version,
        # Only a payment that was completed can have refunds: skip the query for the others.
        refunds=_refunds(conn, row.id) if row.status in _MAY_HAVE_REFUNDS else (),
    )
    return StoredPayment(
        pk=row.id,
        payment=payment,
        provider=row.provider,
        provider_ref=row.provider_ref,
        provider_checked_at=row.provider_checked_at,
        request_hash=row.request_hash,
    )


def find_payment(
    conn: Connection,
    merchant_id: int,
    *,
    trans_id: str | None = None,
    trans_key: str | None = None,
    lock: bool = False,
) -> StoredPayment | None:
    """Find a merchant's payment by transId or transKey; another merchant's is simply absent.

    ``lock`` takes the row lock (PostgreSQL ``FOR UPDATE``) for a unit that will change the
    payment, so that concurrent writers queue instead of failing their version check. SQLite
    needs no row lock: its writing units already run one at a time.
    """
    if trans_id is not None:
        query, value = _FINDERS[False, lock], trans_id
    elif trans_key is not None:
        query, value = _FINDERS[True, lock], trans_key
    else:
        raise InternalError("find_payment needs trans_id or trans_key")
    row = query.run(conn, {"merchant_id": merchant_id, "value": value}).first()
    return None if row is None else _to_stored(conn, row)


def merchant_name(conn: Connection, merchant_id: int) -> str:
    """A merchant's display name (shown to the customer by wallets)."""
    return str(_MERCHANT_NAME.run(conn, {"merchant_id": merchant_id}).scalar_one())


def load_payment(conn: Connection, pk: int, *, lock: bool = False) -> StoredPayment:
    """A payment by its primary key (``lock`` as in ``find_payment``)."""
    row = _LOAD[lock].run(conn, {"pk": pk}).one()
    return _to_stored(conn, row)


def insert_payment(
    conn: Connection,
    payment: Payment,
    *,
    provider: str,
    request_hash: str,
    pk: int | None = None,
    **extra: Any,
) -> int:
    """Insert a new payment; answers its primary key.

    ``extra`` sets the provider bookkeeping of a payment written after its provider answered
    (``provider_checked_at``, ``provider_ref``). With ``pk``, a key drawn beforehand
    (``sessions.authenticate_for_payment`` on PostgreSQL), the INSERT is deferred (``Hot.defer``):
    it travels with the unit's other writes.
    """
    row = dict(
        trans_id=payment.trans_id,
        merchant_id=payment.merchant_id,
        terminal_id=payment.terminal_id,
        trans_key=payment.trans_key,
        kind=payment.kind.value,
        service_id=payment.service_id,
        amount=payment.amount,
        status=payment.status.value,
        pending_reason=payment.pending_reason.value if payment.pending_reason else None,
        failure_code=payment.failure_code,
        failure_message=payment.failure_message,
        refunded_amount=0,
        voucher_no=payment.voucher_no,
        code_masked=payment.code_masked,
        request_hash=request_hash,
        qr_data=payment.qr_data,
        qr_expires_at=payment.qr_expires_at,
        provider=provider,
        version=payment.version,
        created_at=payment.created_at,
        updated_at=payment.updated_at,
        **extra,
    )
    if pk is None:
        return _INSERT_PAYMENT.run(conn, row).inserted_pk
    row["id"] = pk
    _INSERT_PAYMENT.defer(conn, row)
    return pk


def save_payment(
    conn: Connection,
    pk: int,
    before: Payment,
    after: Payment,
    **extra: Any,
) -> None:
    """Write ``after`` over ``before``, only if nobody changed the row meanwhile.

    The version check makes concurrent writers (a REQUEST finishing while a PAYCHECK refreshes the
    same payment) safe: the loser gets a Conflict and re-reads instead of overwriting.
    """
    result = _SAVE_PAYMENT.run(
        conn,
        dict(
            b_pk=pk,
            b_version=before.version,
            status=after.status.value,
            pending_reason=after.pending_reason.value if after.pending_reason else None,
            failure_code=after.failure_code,
            failure_message=after.failure_message,
            refunded_amount=after.refunded_amount,
            voucher_no=after.voucher_no,
            qr_data=after.qr_data,
            version=after.version,
            updated_at=after.updated_at,
            **extra,
        ),
    )
    if result.rowcount != 1:
        raise StaleWrite(f"payment {before.trans_id} changed concurrently")


class StaleWrite(Conflict):
    """Another unit changed the row between our read and our write."""

    default_code = "IDEMPOTENCY_CONFLICT"


def touch_provider_check(conn: Connection, pk: int, now: datetime) -> None:
    """Record that the provider was asked about this payment at ``now``."""
    _TOUCH_CHECK.run(conn, {"b_pk": pk, "provider_checked_at": now})


def insert_refund(conn: Connection, payment_pk: int, refund: Refund, actor: str) -> None:
    """Insert a refund row; the (payment, refundKey) constraint rejects a racing duplicate."""
    _INSERT_REFUND.run(
        conn,
        dict(
            refund_id=refund.refund_id,
            payment_id=payment_pk,
            refund_key=refund.refund_key,
            amount=refund.amount,
            status=refund.status.value,
            failure_reason=refund.failure_reason,
            actor=actor,
            created_at=refund.created_at,
            updated_at=refund.updated_at,
        ),
    )


def update_refund(conn: Connection, refund: Refund) -> None:
    """Record a refund's new status."""
    _UPDATE_REFUND.run(
        conn,
        {
            "b_refund_id": refund.refund_id,
            "status": refund.status.value,
            "failure_reason": refund.failure_reason,
            "updated_at": refund.updated_at,
        },
    )


# Audit details as compact JSON with sorted keys (the same text for the same facts).
_detail_json: Final = msgspec.json.Encoder(order="sorted").encode


class AuditFields(TypedDict, total=False):
    """What one audit-trail entry says."""

    at: Required[datetime]
    actor: Required[str]
    action: Required[str]
    merchant_id: int | None
    terminal_id: int | None
    payment_pk: int | None
    from_status: str | None
    to_status: str | None
    detail: dict[str, Any] | None
    request_id: str | None


def audit_entry(**fields: Unpack[AuditFields]) -> dict[str, Any]:
    """One audit-trail row, in the table's column order, to be written by ``append_audit``."""
    detail = fields.get("detail")
    return dict(
        at=fields["at"],
        merchant_id=fields.get("merchant_id"),
        terminal_id=fields.get("terminal_id"),
        payment_id=fields.get("payment_pk"),
        actor=fields["actor"],
        action=fields["action"],
        from_status=fields.get("from_status"),
        to_status=fields.get("to_status"),
        detail=_detail_json(detail).decode() if detail else None,
        request_id=fields.get("request_id"),
    )


def append_audit(conn: Connection, *entries: Mapping[str, Any]) -> None:
    """Append entries to the audit trail in their order (the table refuses updates and deletes).

    The entries come from ``audit_entry``. Several are written by one statement per
    ``AUDIT_ROWS_PER_STATEMENT``, whose rows take their ids in the order given. On PostgreSQL the
    statements are deferred (``Hot.defer``): they travel with the unit's other writes.
    """
    for start in range(0, len(entries), AUDIT_ROWS_PER_STATEMENT):
        chunk = entries[start : start + AUDIT_ROWS_PER_STATEMENT]
        values: list[Any] = []
        for entry in chunk:
            values.extend(_audit_row(entry))
        _insert_audit_rows(len(chunk)).defer_ordered(conn, _AUDIT_KEYS[len(chunk)], values)


def audit(conn: Connection, **fields: Unpack[AuditFields]) -> None:
    """Append one entry to the audit trail (the table refuses updates and deletes)."""
    append_audit(conn, audit_entry(**fields))


def audit_trail(conn: Connection, payment_pk: int) -> list[dict[str, Any]]:
    """A payment's audit entries, oldest first."""
    rows = conn.execute(
        sa.select(t.audit_events)
        .where(t.audit_events.c.payment_id == payment_pk)
        .order_by(t.audit_events.c.id)
    ).all()
    return [dict(row._mapping) for row in rows]
