"""webhook events: the lease a delivery pass holds, and an index for each payment's order

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_PENDING = sa.text("status = 'PENDING'")


def upgrade() -> None:
    op.add_column(
        "webhook_events", sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True)
    )
    # The delivery claim asks, for each due event, whether an earlier event of its payment is
    # still PENDING: only PENDING events are in this index, however many have been delivered.
    op.create_index(
        "ix_webhook_events_pending_payment",
        "webhook_events",
        ["payment_id", "id"],
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_events_pending_payment", table_name="webhook_events")
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("leased_until")
