"""failed logins per client address, shared by every instance

Revision ID: 0005
Revises: 0002, 0003, 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
# Joins the three branches that each grew from the initial schema.
down_revision = ("0002", "0003", "0004")
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("spent_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_login_throttle")),
    )
    op.create_index("ix_login_throttle_spent_until", "login_throttle", ["spent_until"])


def downgrade() -> None:
    op.drop_index("ix_login_throttle_spent_until", table_name="login_throttle")
    op.drop_table("login_throttle")
