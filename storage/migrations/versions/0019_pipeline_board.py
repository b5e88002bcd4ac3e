"""lead indexes for the pipeline board: a stage's leads by last activity, and by time in stage

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 22:45:00

The console's pipeline board (bot/console/pipeline.py) pages each stage's leads newest activity first, keyset
on (updated_at, id): `ix_lead_board` serves any page from where the last ended. Its column counts and the
median time in stage read `ix_lead_stage_at`. Both leave out leads merged into another, as the board does.

On PostgreSQL 14 and later, statistics on the first touch's source and campaign (the board's filters): without
them the planner takes a filter on both for a few rows and sorts the whole stage (170 ms at 1,000,000 leads)
instead of walking `ix_lead_board` until a page is found (10 ms). They cost nothing on writes (ANALYZE fills
them), and are not on the model: SQLAlchemy's metadata has no statistics objects.
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_NOT_MERGED = sa.text("merged_into_id IS NULL")
_STATISTICS = "st_lead_first_touch"


def upgrade() -> None:
    where = {"sqlite_where": _NOT_MERGED, "postgresql_where": _NOT_MERGED}
    op.create_index("ix_lead_board", "lead", ["stage", "updated_at", "id"], **where)
    op.create_index("ix_lead_stage_at", "lead", ["stage", "stage_at"], **where)
    if _statistics_possible():
        op.execute(
            f"CREATE STATISTICS {_STATISTICS} ON (first_touch ->> 'source'), (first_touch ->> 'campaign') FROM lead"
        )


def downgrade() -> None:
    if _statistics_possible():
        op.execute(f"DROP STATISTICS IF EXISTS {_STATISTICS}")
    op.drop_index("ix_lead_stage_at", table_name="lead")
    op.drop_index("ix_lead_board", table_name="lead")


def _statistics_possible() -> bool:
    """PostgreSQL 14 or later: statistics on expressions."""
    bind = op.get_bind()
    return bind.dialect.name == "postgresql" and (bind.dialect.server_version_info or (0,)) >= (14,)
