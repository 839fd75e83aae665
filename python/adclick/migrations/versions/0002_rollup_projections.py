"""Add the rollups by hour x link and by hour x country x device, filled from hourly_rollups.

They are projections of `hourly_rollups` that reports read when a request fits (adclick.core.counting): each row is
the sum of the `hourly_rollups` rows it stands for, which is what the backfill computes. On PostgreSQL the backfill
holds `hourly_rollups` against writes until it commits, so no increment falls between the copy and the new tables.
Workers from before this revision write `hourly_rollups` only: stop them before migrating (SQS keeps the events)
and start the new ones after, or what they write in between is missing from the new tables.

Revision ID: 0002_rollup_projections
Revises: 0001_initial
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from adclick.core.db import types as adclick_types

revision: str = "0002_rollup_projections"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = ("clicks", "unique_clicks", "bot_clicks", "conversions", "revenue", "payout")


def _counters() -> list[sa.Column[Any]]:
    return [
        sa.Column("clicks", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("unique_clicks", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("bot_clicks", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("conversions", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("revenue", adclick_types.Money(), server_default=sa.text("0"), nullable=False),
        sa.Column("payout", adclick_types.Money(), server_default=sa.text("0"), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "hourly_link_rollups",
        sa.Column("hour", adclick_types.UtcDateTime(), nullable=False),
        sa.Column("link_id", sa.BigInteger(), nullable=False),
        sa.Column("offer_id", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("affiliate_id", sa.Integer(), server_default=sa.text("0"), nullable=False),
        *_counters(),
        sa.PrimaryKeyConstraint("hour", "link_id", "offer_id", "affiliate_id", name=op.f("pk_hourly_link_rollups")),
    )
    op.create_table(
        "hourly_country_device_rollups",
        sa.Column("hour", adclick_types.UtcDateTime(), nullable=False),
        sa.Column("country", sa.CHAR(length=2), server_default="", nullable=False),
        sa.Column("device", sa.String(length=32), server_default="", nullable=False),
        *_counters(),
        sa.PrimaryKeyConstraint("hour", "country", "device", name=op.f("pk_hourly_country_device_rollups")),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Readers go on; writers wait for the commit (SQLite's migration transaction already holds the write lock).
        op.execute("LOCK TABLE hourly_rollups IN EXCLUSIVE MODE")
    sums = ", ".join(f"SUM({name})" for name in COUNTERS)
    names = ", ".join(COUNTERS)
    op.execute(
        f"INSERT INTO hourly_link_rollups (hour, link_id, offer_id, affiliate_id, {names}) "
        f"SELECT hour, link_id, COALESCE(offer_id, 0), COALESCE(affiliate_id, 0), {sums} "
        "FROM hourly_rollups GROUP BY hour, link_id, COALESCE(offer_id, 0), COALESCE(affiliate_id, 0)"
    )
    op.execute(
        f"INSERT INTO hourly_country_device_rollups (hour, country, device, {names}) "
        f"SELECT hour, country, device, {sums} FROM hourly_rollups GROUP BY hour, country, device"
    )
    # Built after the backfill: one sort each instead of an index update per inserted row.
    op.create_index(
        "ix_hourly_link_rollups_affiliate_id_hour", "hourly_link_rollups", ["affiliate_id", "hour"], unique=False
    )
    op.create_index("ix_hourly_link_rollups_offer_id_hour", "hourly_link_rollups", ["offer_id", "hour"], unique=False)


def downgrade() -> None:
    op.drop_table("hourly_country_device_rollups")
    op.drop_table("hourly_link_rollups")
