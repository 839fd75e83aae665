"""Caps enforced at the click: a capped offer's links send their clicks to its cap fallback until the caps reset.

- `offers.cap_fallback_url` (a URL template; NULL: the link's own fallback, else the offer as before).
- `offers.capped_until`, `offer_affiliate_overrides.capped_until`: until when the offer-wide caps, and an
  affiliate's daily cap on the offer, are full (NULL: not full). Written by adclick.core.capping.
- `clicks.capped`, and `capped_clicks` in every rollup table: the clicks sent to the cap fallback.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 19:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from adclick.core.db import types as adclick_types

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLLUPS = ("hourly_rollups", "hourly_link_rollups", "hourly_country_device_rollups")


def upgrade() -> None:
    # Plain ADD COLUMN, not batch mode: rebuilding offers on SQLite would drop tables others refer to.
    op.add_column("offers", sa.Column("cap_fallback_url", sa.Text(), nullable=True))
    op.add_column("offers", sa.Column("capped_until", adclick_types.UtcDateTime(), nullable=True))
    op.add_column("offer_affiliate_overrides", sa.Column("capped_until", adclick_types.UtcDateTime(), nullable=True))
    op.add_column("clicks", sa.Column("capped", sa.Boolean(), nullable=False, server_default=sa.false()))
    for table in ROLLUPS:
        op.add_column(table, sa.Column("capped_clicks", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    for table in ROLLUPS:
        op.drop_column(table, "capped_clicks")
    op.drop_column("clicks", "capped")
    op.drop_column("offer_affiliate_overrides", "capped_until")
    op.drop_column("offers", "capped_until")
    op.drop_column("offers", "cap_fallback_url")
