"""Money safety: per-offer pixel rules, postback source allowlists, bot and blocked clicks apart, IP blocklist.

- `offers`: `pixel_enabled` (off), `pixel_status` (pending), `pixel_max_amount`, `pixel_domains`, and
  `bot_conversions` ('reject': a conversion on a bot click is stored rejected with reason 'bot').
- `advertisers.postback_ips`: CIDRs a server-to-server postback may come from (NULL: anywhere).
- `conversions.reason`: why the system stored a conversion rejected ('bot', 'blocked'), NULL otherwise.
- `clicks.blocked`, and `blocked_clicks` in every rollup table.
- Rollups' `clicks` no longer count bot clicks (they are in `bot_clicks` only): existing rows lose their bots.
- `ip_blocklist`: addresses and networks whose clicks trackers refuse; the manager publishes it to Redis.
- SQLite: `links` gets AUTOINCREMENT, so the id of a deleted link is never handed out again (a ClickID seals the
  link id: a reused one would credit the new link with the old one's conversions). PostgreSQL's identity never
  reuses ids already.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from adclick.core.db import types as adclick_types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLLUPS = ("hourly_rollups", "hourly_link_rollups", "hourly_country_device_rollups")


def upgrade() -> None:
    # Plain ADD COLUMN, not batch mode: rebuilding offers or advertisers on SQLite would drop tables others refer to.
    op.add_column("offers", sa.Column("pixel_enabled", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("offers", sa.Column("pixel_status", sa.String(16), nullable=False, server_default="pending"))
    op.add_column("offers", sa.Column("pixel_max_amount", adclick_types.Money(), nullable=True))
    op.add_column("offers", sa.Column("pixel_domains", sa.Text(), nullable=True))
    op.add_column("offers", sa.Column("bot_conversions", sa.String(16), nullable=False, server_default="reject"))
    op.add_column("advertisers", sa.Column("postback_ips", sa.Text(), nullable=True))
    op.add_column("conversions", sa.Column("reason", sa.String(32), nullable=True))
    op.add_column("clicks", sa.Column("blocked", sa.Boolean(), nullable=False, server_default=sa.false()))
    for table in ROLLUPS:
        op.add_column(table, sa.Column("blocked_clicks", sa.BigInteger(), nullable=False, server_default="0"))
        op.execute(f"UPDATE {table} SET clicks = clicks - bot_clicks WHERE bot_clicks > 0")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("links", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass
    op.create_table(
        "ip_blocklist",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cidr", sa.String(64), nullable=False),
        sa.Column("note", sa.String(200), nullable=True),
        sa.Column("created_at", adclick_types.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ip_blocklist"),
        sa.UniqueConstraint("cidr", name="uq_ip_blocklist_cidr"),
    )


def downgrade() -> None:
    op.drop_table("ip_blocklist")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("links", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
            pass
    for table in ROLLUPS:
        op.execute(f"UPDATE {table} SET clicks = clicks + bot_clicks WHERE bot_clicks > 0")
        op.drop_column(table, "blocked_clicks")
    op.drop_column("clicks", "blocked")
    op.drop_column("conversions", "reason")
    op.drop_column("advertisers", "postback_ips")
    for column in ("bot_conversions", "pixel_domains", "pixel_max_amount", "pixel_status", "pixel_enabled"):
        op.drop_column("offers", column)
