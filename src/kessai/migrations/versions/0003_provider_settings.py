"""provider settings: each merchant's wallet-provider accounts

Revision ID: 0003
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_settings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.String(length=2), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("api_key", sa.String(length=128), nullable=True),
        sa.Column("provider_merchant_id", sa.String(length=64), nullable=True),
        sa.Column("base_url", sa.String(length=256), nullable=True),
        sa.Column("options", sa.Text(), nullable=True),
        sa.Column("secret_ciphertext", sa.Text(), nullable=True),
        sa.Column("secret_key_id", sa.String(length=16), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["merchants.id"],
            name=op.f("fk_provider_settings_merchant_id_merchants"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_settings")),
        sa.UniqueConstraint(
            "merchant_id",
            "service_id",
            "provider",
            name=op.f("uq_provider_settings_merchant_id_service_id_provider"),
        ),
    )
    op.create_index(
        "uq_provider_settings_active",
        "provider_settings",
        ["merchant_id", "service_id"],
        unique=True,
        sqlite_where=sa.text("active"),
        postgresql_where=sa.text("active"),
    )


def downgrade() -> None:
    op.drop_index("uq_provider_settings_active", table_name="provider_settings")
    op.drop_table("provider_settings")
