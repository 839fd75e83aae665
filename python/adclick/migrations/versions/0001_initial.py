"""Create the initial schema: advertisers, offers, links, clicks, conversions, rollups, caps, users.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-27 23:44:39.571240
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from adclick.core.db import types as adclick_types

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "advertisers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("token_version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("created_at", adclick_types.UtcDateTime(), nullable=False),
        sa.CheckConstraint("status IN ('active', 'paused', 'archived')", name=op.f("ck_advertisers_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_advertisers")),
    )
    op.create_table(
        "affiliates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("created_at", adclick_types.UtcDateTime(), nullable=False),
        sa.CheckConstraint("status IN ('active', 'paused', 'archived')", name=op.f("ck_affiliates_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_affiliates")),
    )
    op.create_table(
        "clicks",
        sa.Column("click_id", sa.String(length=40), nullable=False),
        sa.Column("ts", adclick_types.UtcDateTime(), nullable=False),
        sa.Column("link_id", sa.BigInteger(), nullable=False),
        sa.Column("offer_id", sa.Integer(), nullable=True),
        sa.Column("affiliate_id", sa.Integer(), nullable=True),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("ua", sa.Text(), nullable=True),
        sa.Column("referer", sa.Text(), nullable=True),
        sa.Column("country", sa.CHAR(length=2), nullable=True),
        sa.Column("device", sa.String(length=32), nullable=True),
        sa.Column("os", sa.String(length=32), nullable=True),
        sa.Column("bot", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("unique", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("sub1", sa.Text(), nullable=True),
        sa.Column("sub2", sa.Text(), nullable=True),
        sa.Column("sub3", sa.Text(), nullable=True),
        sa.Column("sub4", sa.Text(), nullable=True),
        sa.Column("sub5", sa.Text(), nullable=True),
        sa.Column(
            "params", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("dest", sa.SmallInteger(), nullable=True),
        sa.Column("fallback", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("click_id", name=op.f("pk_clicks")),
    )
    op.create_index("ix_clicks_link_id_ts", "clicks", ["link_id", "ts"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        # Clicks arrive in time order: a BRIN index on ts is a few pages and serves time ranges.
        op.create_index("ix_clicks_ts_brin", "clicks", ["ts"], unique=False, postgresql_using="brin")
    op.create_table(
        "conversion_rejections",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("offer_id", sa.Integer(), nullable=True),
        sa.Column("txid", sa.String(length=255), nullable=True),
        sa.Column("click_id", sa.String(length=255), nullable=True),
        sa.Column("conversion_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "payload", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("created_at", adclick_types.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversion_rejections")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_conversion_rejections_fingerprint")),
    )
    op.create_index(op.f("ix_conversion_rejections_reason"), "conversion_rejections", ["reason"], unique=False)
    op.create_table(
        "conversions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("offer_id", sa.Integer(), nullable=False),
        sa.Column("txid", sa.String(length=255), nullable=False),
        sa.Column("click_id", sa.String(length=40), nullable=False),
        sa.Column("link_id", sa.BigInteger(), nullable=False),
        sa.Column("affiliate_id", sa.Integer(), nullable=True),
        sa.Column("advertiser_id", sa.Integer(), nullable=True),
        sa.Column("event", sa.String(length=64), server_default="conversion", nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount", adclick_types.Money(), nullable=True),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("revenue", adclick_types.Money(), server_default=sa.text("0"), nullable=False),
        sa.Column("payout", adclick_types.Money(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "params", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("created_at", adclick_types.UtcDateTime(), nullable=False),
        sa.Column("updated_at", adclick_types.UtcDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected', 'capped')", name=op.f("ck_conversions_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversions")),
        sa.UniqueConstraint("offer_id", "txid", name=op.f("uq_conversions_offer_id_txid")),
    )
    op.create_index(op.f("ix_conversions_affiliate_id"), "conversions", ["affiliate_id"], unique=False)
    op.create_index(op.f("ix_conversions_click_id"), "conversions", ["click_id"], unique=False)
    op.create_index("ix_conversions_created_at", "conversions", ["created_at"], unique=False)
    op.create_index(op.f("ix_conversions_link_id"), "conversions", ["link_id"], unique=False)
    op.create_table(
        "daily_caps",
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("offer_id", sa.Integer(), nullable=False),
        sa.Column("affiliate_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("used", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint("scope IN ('offer', 'affiliate_offer')", name=op.f("ck_daily_caps_scope")),
        sa.PrimaryKeyConstraint("scope", "offer_id", "affiliate_id", "day", name=op.f("pk_daily_caps")),
    )
    op.create_table(
        "failed_jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("queue", sa.String(length=80), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("receive_count", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("created_at", adclick_types.UtcDateTime(), nullable=False),
        sa.Column("retried_at", adclick_types.UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failed_jobs")),
        sa.UniqueConstraint("queue", "message_id", name=op.f("uq_failed_jobs_queue_message_id")),
    )
    op.create_table(
        "hourly_rollups",
        sa.Column("hour", adclick_types.UtcDateTime(), nullable=False),
        sa.Column("link_id", sa.BigInteger(), nullable=False),
        sa.Column("country", sa.CHAR(length=2), server_default="", nullable=False),
        sa.Column("device", sa.String(length=32), server_default="", nullable=False),
        sa.Column("offer_id", sa.Integer(), nullable=True),
        sa.Column("affiliate_id", sa.Integer(), nullable=True),
        sa.Column("clicks", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("unique_clicks", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("bot_clicks", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("conversions", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("revenue", adclick_types.Money(), server_default=sa.text("0"), nullable=False),
        sa.Column("payout", adclick_types.Money(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("hour", "link_id", "country", "device", name=op.f("pk_hourly_rollups")),
    )
    op.create_index("ix_hourly_rollups_affiliate_id_hour", "hourly_rollups", ["affiliate_id", "hour"], unique=False)
    op.create_index("ix_hourly_rollups_offer_id_hour", "hourly_rollups", ["offer_id", "hour"], unique=False)
    op.create_table(
        "offers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("advertiser_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("currency", sa.CHAR(length=3), server_default="USD", nullable=False),
        sa.Column("revenue_model", sa.String(length=16), server_default="cpa", nullable=False),
        sa.Column("revenue_amount", adclick_types.Money(), server_default=sa.text("0"), nullable=False),
        sa.Column("payout_model", sa.String(length=16), server_default="cpa", nullable=False),
        sa.Column("payout_amount", adclick_types.Money(), server_default=sa.text("0"), nullable=False),
        sa.Column("attribution_window_hours", sa.Integer(), server_default=sa.text("720"), nullable=False),
        sa.Column("default_status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("daily_cap", sa.Integer(), nullable=True),
        sa.Column("created_at", adclick_types.UtcDateTime(), nullable=False),
        sa.CheckConstraint(
            "default_status IN ('pending', 'approved', 'rejected')", name=op.f("ck_offers_default_status")
        ),
        sa.CheckConstraint("payout_model IN ('cpa', 'revshare')", name=op.f("ck_offers_payout_model")),
        sa.CheckConstraint("revenue_model IN ('cpa', 'revshare')", name=op.f("ck_offers_revenue_model")),
        sa.CheckConstraint("status IN ('active', 'paused', 'archived')", name=op.f("ck_offers_status")),
        sa.CheckConstraint("attribution_window_hours > 0", name=op.f("ck_offers_attribution_window_hours")),
        sa.CheckConstraint("daily_cap IS NULL OR daily_cap >= 0", name=op.f("ck_offers_daily_cap")),
        sa.ForeignKeyConstraint(
            ["advertiser_id"], ["advertisers.id"], name=op.f("fk_offers_advertiser_id_advertisers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_offers")),
    )
    op.create_index(op.f("ix_offers_advertiser_id"), "offers", ["advertiser_id"], unique=False)
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("affiliate_id", sa.Integer(), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at", adclick_types.UtcDateTime(), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'manager', 'affiliate')", name=op.f("ck_users_role")),
        sa.ForeignKeyConstraint(["affiliate_id"], ["affiliates.id"], name=op.f("fk_users_affiliate_id_affiliates")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", adclick_types.UtcDateTime(), nullable=False),
        sa.Column("last_used_at", adclick_types.UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"], unique=False)
    op.create_table(
        "conversion_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("conversion_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("at", adclick_types.UtcDateTime(), nullable=False),
        sa.Column(
            "before", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column(
            "after", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.ForeignKeyConstraint(
            ["conversion_id"],
            ["conversions.id"],
            name=op.f("fk_conversion_audit_conversion_id_conversions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_conversion_audit_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversion_audit")),
    )
    op.create_index(op.f("ix_conversion_audit_conversion_id"), "conversion_audit", ["conversion_id"], unique=False)
    op.create_table(
        "links",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("slug", sa.String(length=64), nullable=False),
        sa.Column("offer_id", sa.Integer(), nullable=False),
        sa.Column("affiliate_id", sa.Integer(), nullable=False),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column(
            "config", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("expires_at", adclick_types.UtcDateTime(), nullable=True),
        sa.Column("created_at", adclick_types.UtcDateTime(), nullable=False),
        sa.Column("updated_at", adclick_types.UtcDateTime(), nullable=False),
        sa.CheckConstraint("status IN ('active', 'paused')", name=op.f("ck_links_status")),
        sa.CheckConstraint("id > 0 AND id < 1099511627776", name=op.f("ck_links_id_40_bits")),
        sa.ForeignKeyConstraint(["affiliate_id"], ["affiliates.id"], name=op.f("fk_links_affiliate_id_affiliates")),
        sa.ForeignKeyConstraint(["offer_id"], ["offers.id"], name=op.f("fk_links_offer_id_offers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_links")),
        sa.UniqueConstraint("slug", name=op.f("uq_links_slug")),
    )
    op.create_index(op.f("ix_links_affiliate_id"), "links", ["affiliate_id"], unique=False)
    op.create_index(op.f("ix_links_offer_id"), "links", ["offer_id"], unique=False)
    op.create_table(
        "offer_affiliate_overrides",
        sa.Column("offer_id", sa.Integer(), nullable=False),
        sa.Column("affiliate_id", sa.Integer(), nullable=False),
        sa.Column("payout_model", sa.String(length=16), nullable=True),
        sa.Column("payout_amount", adclick_types.Money(), nullable=True),
        sa.Column("daily_cap", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "payout_model IN ('cpa', 'revshare')", name=op.f("ck_offer_affiliate_overrides_payout_model")
        ),
        sa.CheckConstraint("daily_cap IS NULL OR daily_cap >= 0", name=op.f("ck_offer_affiliate_overrides_daily_cap")),
        sa.ForeignKeyConstraint(
            ["affiliate_id"],
            ["affiliates.id"],
            name=op.f("fk_offer_affiliate_overrides_affiliate_id_affiliates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["offer_id"], ["offers.id"], name=op.f("fk_offer_affiliate_overrides_offer_id_offers"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("offer_id", "affiliate_id", name=op.f("pk_offer_affiliate_overrides")),
    )


def downgrade() -> None:
    # Dropping a table drops its indexes.
    op.drop_table("offer_affiliate_overrides")
    op.drop_table("links")
    op.drop_table("conversion_audit")
    op.drop_table("api_tokens")
    op.drop_table("users")
    op.drop_table("offers")
    op.drop_table("hourly_rollups")
    op.drop_table("failed_jobs")
    op.drop_table("daily_caps")
    op.drop_table("conversions")
    op.drop_table("conversion_rejections")
    op.drop_table("clicks")
    op.drop_table("affiliates")
    op.drop_table("advertisers")
