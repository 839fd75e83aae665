"""Give offers a destination template, and let a link without its own template follow its offer's.

`offers.destination_template` is new and nullable. `links.template` becomes nullable: NULL means the link follows
its offer's template, which the manager resolves into the `url` of the Redis link config (the contract is unchanged).
The downgrade writes each such link's offer template into its row before making the column NOT NULL again.

Revision ID: 0003
Revises: 0002_rollup_projections
Create Date: 2026-11-28 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002_rollup_projections"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("offers", sa.Column("destination_template", sa.Text(), nullable=True))
    # SQLite cannot drop NOT NULL in place: batch mode rebuilds the table there (named constraints come along),
    # PostgreSQL gets a plain ALTER COLUMN.
    with op.batch_alter_table("links") as batch:
        batch.alter_column("template", existing_type=sa.Text(), nullable=True)


def downgrade() -> None:
    op.execute(
        "UPDATE links SET template = (SELECT offers.destination_template FROM offers WHERE offers.id = links.offer_id) "
        "WHERE template IS NULL"
    )
    with op.batch_alter_table("links") as batch:
        batch.alter_column("template", existing_type=sa.Text(), nullable=False)
    # Not batch mode: rebuilding offers on SQLite would drop a table that links and overrides refer to
    # (SQLite has had DROP COLUMN since 3.35).
    op.drop_column("offers", "destination_template")
