"""lead indexes for the pipeline board: a stage's leads by last activity, and by time in stage

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 22:45:00

The console's pipeline board (bot/console/pipeline.py) pages each stage's leads newest activity first, keyset
on (updated_at, id): `ix_lead_board` serves any page from where the last ended. Its column counts and the
median time in stage read `ix_lead_stage_at`. Both leave out leads merged into another, as the board does.
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_NOT_MERGED = sa.text("merged_into_id IS NULL")


def upgrade() -> None:
    where = {"sqlite_where": _NOT_MERGED, "postgresql_where": _NOT_MERGED}
    op.create_index("ix_lead_board", "lead", ["stage", "updated_at", "id"], **where)
    op.create_index("ix_lead_stage_at", "lead", ["stage", "stage_at"], **where)


def downgrade() -> None:
    op.drop_index("ix_lead_stage_at", table_name="lead")
    op.drop_index("ix_lead_board", table_name="lead")
