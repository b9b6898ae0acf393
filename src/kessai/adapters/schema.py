"""The database schema, in SQLAlchemy Core. One schema serves SQLite and PostgreSQL.

Uniqueness that money depends on is enforced here, by constraints, so that racing requests cannot
both succeed whatever the code above does: one transKey per merchant, one refundKey per payment,
one live session per terminal, one transId in the whole gateway.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timestamps stored in UTC and always read back timezone-aware.

    SQLite has no timezone type; without this, values would come back naive and compare wrongly
    with aware ones.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC before storing; naive values are a programmer error."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Attach UTC to what SQLite returns naive."""
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now_col(name: str, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


meta = sa.Table(
    "kessai_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

merchants = sa.Table(
    "merchants",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False),
    _now_col("created_at"),
)

integrations = sa.Table(
    "integrations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("os", sa.String(6), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    _now_col("created_at"),
)

terminals = sa.Table(
    "terminals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("mid", sa.String(16), nullable=False, unique=True),
    sa.Column("merchant_id", sa.Integer, sa.ForeignKey("merchants.id"), nullable=False),
    sa.Column("name", sa.String(100), nullable=True),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("passcode_hash", sa.String(200), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("login_failures", sa.Integer, nullable=False, default=0),
    _now_col("login_locked_until", nullable=True),
    sa.Column("passcode_failures", sa.Integer, nullable=False, default=0),
    _now_col("passcode_locked_until", nullable=True),
    _now_col("last_seen_at", nullable=True),
    _now_col("created_at"),
    _now_col("updated_at"),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # SHA-256 of the bearer token; the token itself is never stored.
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("terminal_id", sa.Integer, sa.ForeignKey("terminals.id"), nullable=False),
    sa.Column("device_key", sa.String(50), nullable=False),
    sa.Column("os", sa.String(6), nullable=False),
    _now_col("created_at"),
    _now_col("last_seen_at"),
    _now_col("idle_expires_at"),
    _now_col("ended_at", nullable=True),
    sa.Column("end_reason", sa.String(20), nullable=True),
    # One live session per terminal: a partial unique index, so two racing LOGINs cannot both
    # insert one.
    sa.Index(
        "uq_sessions_live_terminal",
        "terminal_id",
        unique=True,
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    ),
    # The worker's prune job: live sessions past their idle deadline, and old ended ones.
    sa.Index(
        "ix_sessions_live_idle",
        "idle_expires_at",
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    ),
    sa.Index("ix_sessions_ended", "ended_at"),
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("trans_id", sa.String(10), nullable=False, unique=True),
    sa.Column("merchant_id", sa.Integer, sa.ForeignKey("merchants.id"), nullable=False),
    sa.Column("terminal_id", sa.Integer, sa.ForeignKey("terminals.id"), nullable=False),
    sa.Column("trans_key", sa.String(34), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("service_id", sa.String(2), nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("pending_reason", sa.String(24), nullable=True),
    sa.Column("failure_code", sa.String(40), nullable=True),
    sa.Column("failure_message", sa.String(200), nullable=True),
    sa.Column("refunded_amount", sa.Integer, nullable=False, default=0),
    sa.Column("voucher_no", sa.String(20), nullable=True),
    # The customer's one-time code is a secret: only a masked form and a keyed hash are kept.
    sa.Column("code_masked", sa.String(40), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("qr_data", sa.String(512), nullable=True),
    _now_col("qr_expires_at", nullable=True),
    sa.Column("provider", sa.String(20), nullable=False),
    sa.Column("provider_ref", sa.String(64), nullable=True),
    _now_col("provider_checked_at", nullable=True),
    sa.Column("version", sa.Integer, nullable=False, default=1),
    _now_col("created_at"),
    _now_col("updated_at"),
    sa.UniqueConstraint("merchant_id", "trans_key"),
    sa.CheckConstraint("amount >= 1 AND amount <= 9999999", name="amount_bounds"),
    sa.CheckConstraint(
        "refunded_amount >= 0 AND refunded_amount <= amount", name="refunded_le_amount"
    ),
    sa.Index("ix_payments_merchant_created", "merchant_id", "created_at"),
    # The worker's reconcile claim reads only the PENDING payments, in the order it takes them,
    # however many payments are stored.
    sa.Index(
        "ix_payments_pending_check",
        "provider_checked_at",
        "id",
        sqlite_where=sa.text("status = 'PENDING'"),
        postgresql_where=sa.text("status = 'PENDING'"),
    ),
)

refunds = sa.Table(
    "refunds",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("refund_id", sa.String(12), nullable=False, unique=True),
    sa.Column("payment_id", sa.Integer, sa.ForeignKey("payments.id"), nullable=False),
    sa.Column("refund_key", sa.String(34), nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("failure_reason", sa.String(200), nullable=True),
    sa.Column("actor", sa.String(40), nullable=False),
    _now_col("created_at"),
    _now_col("updated_at"),
    sa.UniqueConstraint("payment_id", "refund_key"),
    sa.CheckConstraint("amount >= 1", name="amount_positive"),
    # The worker's refund claim reads only the few PENDING refunds, however many are stored.
    sa.Index(
        "ix_refunds_pending",
        "updated_at",
        sqlite_where=sa.text("status = 'PENDING'"),
        postgresql_where=sa.text("status = 'PENDING'"),
    ),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    _now_col("at"),
    sa.Column("merchant_id", sa.Integer, nullable=True),
    sa.Column("terminal_id", sa.Integer, nullable=True),
    sa.Column("payment_id", sa.Integer, nullable=True),
    sa.Column("actor", sa.String(60), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("from_status", sa.String(20), nullable=True),
    sa.Column("to_status", sa.String(20), nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("request_id", sa.String(40), nullable=True),
    sa.Index("ix_audit_events_payment", "payment_id"),
)

# The sandbox wallets' own books: what each simulated wallet issued, charged and refunded. They
# share the database for convenience but are written only through the sandbox connector, in
# transactions of their own, exactly as a real provider's books would be separate.
sandbox_codes = sa.Table(
    "sandbox_codes",
    metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("service_id", sa.String(2), nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),
    _now_col("issued_at"),
    _now_col("used_at", nullable=True),
    sa.Index("ix_sandbox_codes_issued", "issued_at"),
)

sandbox_charges = sa.Table(
    "sandbox_charges",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ref", sa.String(64), nullable=False, unique=True),
    sa.Column("service_id", sa.String(2), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("outcome", sa.String(20), nullable=True),
    sa.Column("merchant_name", sa.String(100), nullable=False),
    sa.Column("qr_token", sa.String(64), nullable=True, unique=True),
    # A "timeout" outcome hides its true status from queries until this instant.
    _now_col("visible_at", nullable=True),
    _now_col("expires_at", nullable=True),
    sa.Column("refunded_amount", sa.Integer, nullable=False, default=0),
    _now_col("created_at"),
    _now_col("updated_at"),
)

sandbox_refunds = sa.Table(
    "sandbox_refunds",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("refund_ref", sa.String(64), nullable=False, unique=True),
    sa.Column("charge_ref", sa.String(64), nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
    _now_col("created_at"),
)

# Webhooks: one endpoint per merchant, and the outbox of events written in the same transaction
# as the state change they report. The signing secret is not stored: it is derived from the
# gateway's master key and the endpoint's nonce (kessai.keys).
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "merchant_id", sa.Integer, sa.ForeignKey("merchants.id"), nullable=False, unique=True
    ),
    sa.Column("url", sa.String(500), nullable=False),
    sa.Column("secret_nonce", sa.String(64), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    _now_col("created_at"),
    _now_col("updated_at"),
)

webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(40), nullable=False, unique=True),
    sa.Column("merchant_id", sa.Integer, nullable=False),
    sa.Column("payment_id", sa.Integer, nullable=True),
    sa.Column("type", sa.String(40), nullable=False),
    # The payment's version after the change: a per-payment sequence number for receivers.
    sa.Column("sequence", sa.Integer, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    _now_col("next_attempt_at"),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.String(200), nullable=True),
    _now_col("delivered_at", nullable=True),
    _now_col("created_at"),
    # While a delivery pass holds the event: the end of its lease (also its next_attempt_at).
    # The pass records its attempt's outcome only if the event still carries this very lease.
    _now_col("leased_until", nullable=True),
    sa.Index("ix_webhook_events_due", "status", "next_attempt_at"),
    # A payment's event is not claimed while an earlier one of the same payment is PENDING:
    # the claim looks that up here.
    sa.Index(
        "ix_webhook_events_pending_payment",
        "payment_id",
        "id",
        sqlite_where=sa.text("status = 'PENDING'"),
        postgresql_where=sa.text("status = 'PENDING'"),
    ),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_pk", sa.Integer, sa.ForeignKey("webhook_events.id"), nullable=False),
    _now_col("at"),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.String(200), nullable=True),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.Index("ix_webhook_attempts_event", "event_pk"),
)

# The merchant console's users and their server-side sessions. A console user belongs to one
# merchant and sees only that merchant's payments and terminals.
console_users = sa.Table(
    "console_users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("merchant_id", sa.Integer, sa.ForeignKey("merchants.id"), nullable=False),
    # Stored lower-cased, so that the login address is case-insensitive and unique.
    sa.Column("email", sa.String(254), nullable=False, unique=True),
    sa.Column("role", sa.String(10), nullable=False),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("login_failures", sa.Integer, nullable=False, default=0),
    _now_col("login_locked_until", nullable=True),
    sa.Column("lang", sa.String(2), nullable=True),
    _now_col("last_login_at", nullable=True),
    _now_col("created_at"),
    _now_col("updated_at"),
    sa.CheckConstraint("role IN ('owner', 'staff')", name="role_known"),
)

console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # SHA-256 of the session cookie; the cookie value itself is never stored.
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("console_users.id"), nullable=False),
    # A digest of the session's CSRF token, which is derived from the session's own token.
    sa.Column("csrf_token", sa.String(64), nullable=False),
    _now_col("created_at"),
    _now_col("last_seen_at"),
    _now_col("idle_expires_at"),
    _now_col("expires_at"),
    _now_col("ended_at", nullable=True),
    sa.Column("end_reason", sa.String(20), nullable=True),
    sa.Index("ix_console_sessions_user", "user_id"),
)

# Each merchant's wallet-provider accounts and which of them serves each serviceId. Secrets (API
# secrets, private keys, signing keys) are kept only encrypted (kessai.connectors.secrets), with
# the fingerprint of the key that encrypted them. A row is never deleted while payments may name
# it ("paypay:<id>" in payments.provider); switching a service to another provider or back to
# the sandbox only clears ``active``.
provider_settings = sa.Table(
    "provider_settings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("merchant_id", sa.Integer, sa.ForeignKey("merchants.id"), nullable=False),
    sa.Column("service_id", sa.String(2), nullable=False),
    sa.Column("provider", sa.String(16), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    # Identifiers, not secrets: PayPay API key, Alipay+ Client-Id, WeChat Pay appid.
    sa.Column("api_key", sa.String(128), nullable=True),
    # PayPay MERCHANT_ID (X-ASSUME-MERCHANT), Alipay+ referenceMerchantId, WeChat Pay mch_id.
    sa.Column("provider_merchant_id", sa.String(64), nullable=True),
    sa.Column("base_url", sa.String(256), nullable=True),
    # Non-secret provider options as JSON (public keys, sign type, certificate paths, …).
    sa.Column("options", sa.Text, nullable=True),
    sa.Column("secret_ciphertext", sa.Text, nullable=True),
    sa.Column("secret_key_id", sa.String(16), nullable=True),
    sa.Column("version", sa.Integer, nullable=False, default=1),
    _now_col("created_at"),
    _now_col("updated_at"),
    sa.UniqueConstraint("merchant_id", "service_id", "provider"),
    # At most one active account per merchant and service: routing never has to choose.
    sa.Index(
        "uq_provider_settings_active",
        "merchant_id",
        "service_id",
        unique=True,
        sqlite_where=sa.text("active"),
        postgresql_where=sa.text("active"),
    ),
)

# Failed logins per client address (service/ratelimit.py), shared by every instance. One row per
# address that failed recently: each failed login moves ``spent_until`` forward by window/max, and
# logins are refused while it lies more than a whole window ahead. A row whose ``spent_until`` has
# passed means the same as no row, and the worker deletes it.
login_throttle = sa.Table(
    "login_throttle",
    metadata,
    # The peer address as text (an IPv6 address reduced to its /64 network).
    sa.Column("address", sa.String(64), primary_key=True),
    _now_col("spent_until"),
    sa.Index("ix_login_throttle_spent_until", "spent_until"),
)
