"""indexes for the worker's claims and prune job, so their cost stays flat as the books grow

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PENDING = sa.text("status = 'PENDING'")
_LIVE = sa.text("ended_at IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_payments_pending_check",
        "payments",
        ["provider_checked_at", "id"],
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )
    op.create_index(
        "ix_refunds_pending",
        "refunds",
        ["updated_at"],
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )
    op.create_index(
        "ix_sessions_live_idle",
        "sessions",
        ["idle_expires_at"],
        sqlite_where=_LIVE,
        postgresql_where=_LIVE,
    )
    op.create_index("ix_sessions_ended", "sessions", ["ended_at"])
    op.create_index("ix_sandbox_codes_issued", "sandbox_codes", ["issued_at"])


def downgrade() -> None:
    op.drop_index("ix_sandbox_codes_issued", table_name="sandbox_codes")
    op.drop_index("ix_sessions_ended", table_name="sessions")
    op.drop_index("ix_sessions_live_idle", table_name="sessions")
    op.drop_index("ix_refunds_pending", table_name="refunds")
    op.drop_index("ix_payments_pending_check", table_name="payments")
