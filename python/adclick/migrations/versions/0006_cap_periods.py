"""Caps by period: an offer's monthly and lifetime caps, and the time zone whose midnight resets them.

- `offers.monthly_cap`, `offers.lifetime_cap` (conversions; NULL: none), `offers.cap_timezone` (IANA, 'UTC').
- `daily_caps.scope` may also be 'offer_month' (its `day` is the first of the month) and 'offer_total' (1970-01-01).
  Existing rows are UTC days, which is what every offer's default time zone keeps.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 17:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_SCOPES = "scope IN ('offer', 'affiliate_offer')"
NEW_SCOPES = "scope IN ('offer', 'affiliate_offer', 'offer_month', 'offer_total')"


def upgrade() -> None:
    op.add_column("offers", sa.Column("monthly_cap", sa.Integer(), nullable=True))
    op.add_column("offers", sa.Column("lifetime_cap", sa.Integer(), nullable=True))
    op.add_column("offers", sa.Column("cap_timezone", sa.String(64), nullable=False, server_default="UTC"))
    if op.get_bind().dialect.name == "postgresql":
        # SQLite takes the checks with the columns below; ALTER TABLE there cannot add a constraint.
        op.create_check_constraint(op.f("ck_offers_monthly_cap"), "offers", "monthly_cap IS NULL OR monthly_cap >= 0")
        op.create_check_constraint(
            op.f("ck_offers_lifetime_cap"), "offers", "lifetime_cap IS NULL OR lifetime_cap >= 0"
        )
    with op.batch_alter_table("daily_caps", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_daily_caps_scope"), type_="check")
        batch.create_check_constraint(op.f("ck_daily_caps_scope"), NEW_SCOPES)


def downgrade() -> None:
    op.execute("DELETE FROM daily_caps WHERE scope IN ('offer_month', 'offer_total')")
    with op.batch_alter_table("daily_caps", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_daily_caps_scope"), type_="check")
        batch.create_check_constraint(op.f("ck_daily_caps_scope"), OLD_SCOPES)
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(op.f("ck_offers_lifetime_cap"), "offers", type_="check")
        op.drop_constraint(op.f("ck_offers_monthly_cap"), "offers", type_="check")
    op.drop_column("offers", "cap_timezone")
    op.drop_column("offers", "lifetime_cap")
    op.drop_column("offers", "monthly_cap")
