"""Postbacks out to affiliates: each affiliate's template, triggers and signing secret, a per-offer override, and
the outbox of deliveries.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from adclick.core.db import types as adclick_types

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("affiliates", sa.Column("postback_url", sa.String(2048), nullable=True))
    op.add_column("affiliates", sa.Column("postback_triggers", sa.String(64), nullable=True))
    op.add_column("affiliates", sa.Column("postback_secret", sa.String(128), nullable=True))
    op.add_column("offer_affiliate_overrides", sa.Column("postback_url", sa.String(2048), nullable=True))
    op.create_table(
        "postback_deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("key", sa.String(120), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, server_default="conversion"),
        sa.Column("conversion_id", sa.BigInteger(), nullable=True),
        sa.Column("affiliate_id", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("template", sa.String(2048), nullable=False),
        sa.Column("click_id", sa.String(40), nullable=True),
        sa.Column(
            "values", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("state", sa.String(12), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", adclick_types.UtcDateTime(), nullable=False),
        sa.Column("last_attempt_at", adclick_types.UtcDateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("delivered_at", adclick_types.UtcDateTime(), nullable=True),
        sa.Column("created_at", adclick_types.UtcDateTime(), nullable=False),
        sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name=op.f("ck_postback_deliveries_state")),
        sa.CheckConstraint("kind IN ('conversion', 'redelivery', 'test')", name=op.f("ck_postback_deliveries_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_postback_deliveries")),
        sa.UniqueConstraint("key", name=op.f("uq_postback_deliveries_key")),
    )
    op.create_index("ix_postback_deliveries_due", "postback_deliveries", ["state", "next_attempt_at"])
    op.create_index("ix_postback_deliveries_conversion_id", "postback_deliveries", ["conversion_id"])
    op.create_index("ix_postback_deliveries_affiliate_id", "postback_deliveries", ["affiliate_id"])


def downgrade() -> None:
    op.drop_table("postback_deliveries")
    op.drop_column("offer_affiliate_overrides", "postback_url")
    op.drop_column("affiliates", "postback_secret")
    op.drop_column("affiliates", "postback_triggers")
    op.drop_column("affiliates", "postback_url")
