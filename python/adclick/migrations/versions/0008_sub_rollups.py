"""Sub-id rollups: `hourly_sub_rollups` (hour x link x country x sub key x sub value) and `sub_values`, the values
admitted to it as rows of their own per UTC day, link and key (adclick.core.subs).

The worker fills them from the clicks it stores from now on; clicks stored before are not added here (reports read
raw clicks for sub-ids until the rollups serve them).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 20:35:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from adclick.core.db import types as adclick_types

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    counters = [
        sa.Column(name, sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        for name in ("clicks", "unique_clicks", "bot_clicks", "blocked_clicks", "capped_clicks", "conversions")
    ] + [
        sa.Column(name, adclick_types.Money(), server_default=sa.text("0"), nullable=False)
        for name in ("revenue", "payout")
    ]
    op.create_table(
        "hourly_sub_rollups",
        sa.Column("hour", adclick_types.UtcDateTime(), nullable=False),
        sa.Column("link_id", sa.BigInteger(), nullable=False),
        sa.Column("country", sa.CHAR(length=2), server_default="", nullable=False),
        sa.Column("sub_key", sa.SmallInteger(), nullable=False),
        sa.Column("other", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("sub_value", sa.String(length=200), server_default="", nullable=False),
        sa.Column("offer_id", sa.Integer(), nullable=True),
        sa.Column("affiliate_id", sa.Integer(), nullable=True),
        *counters,
        sa.CheckConstraint("sub_key BETWEEN 1 AND 5", name=op.f("ck_hourly_sub_rollups_sub_key")),
        sa.PrimaryKeyConstraint(
            "hour", "link_id", "country", "sub_key", "other", "sub_value", name=op.f("pk_hourly_sub_rollups")
        ),
    )
    op.create_index("ix_hourly_sub_rollups_sub_key_hour", "hourly_sub_rollups", ["sub_key", "hour"])
    op.create_index("ix_hourly_sub_rollups_offer_id_hour", "hourly_sub_rollups", ["offer_id", "hour"])
    op.create_index("ix_hourly_sub_rollups_affiliate_id_hour", "hourly_sub_rollups", ["affiliate_id", "hour"])
    op.create_table(
        "sub_values",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("link_id", sa.BigInteger(), nullable=False),
        sa.Column("sub_key", sa.SmallInteger(), nullable=False),
        sa.Column("sub_value", sa.String(length=200), nullable=False),
        sa.CheckConstraint("sub_key BETWEEN 1 AND 5", name=op.f("ck_sub_values_sub_key")),
        sa.PrimaryKeyConstraint("day", "link_id", "sub_key", "sub_value", name=op.f("pk_sub_values")),
    )


def downgrade() -> None:
    op.drop_table("sub_values")
    op.drop_index("ix_hourly_sub_rollups_affiliate_id_hour", table_name="hourly_sub_rollups")
    op.drop_index("ix_hourly_sub_rollups_offer_id_hour", table_name="hourly_sub_rollups")
    op.drop_index("ix_hourly_sub_rollups_sub_key_hour", table_name="hourly_sub_rollups")
    op.drop_table("hourly_sub_rollups")
