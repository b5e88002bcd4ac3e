"""reports at scale: stays as a histogram bucket; handoffs carry the lead's breakdown values

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 00:10:00

The funnel's median time in a stage comes from a histogram of these buckets (flows.history.stay)
instead of sorting every stay, and the handoff report groups handoffs by their own source, campaign and
channel instead of joining the stage history. Existing rows are filled in here.
"""

import math
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_DIMENSIONS = ("source", "campaign", "channel")
_OLD_INCLUDE = ["source", "campaign", "channel", "entered_at", "left_at"]
_NEW_INCLUDE = ["source", "campaign", "channel", "stay_bucket", "stay_seconds"]
# Copied from flows.history as it stood in this migration's day, so the buckets it fills never move with that module.
STAY_STEPS = 32  # histogram buckets per doubling of a stay


def stay(entered: datetime, left: datetime) -> dict[str, float | int]:
    """A stay from `entered` to `left` (later): its seconds, and its bucket (0 under a second, then 32 per doubling)."""
    seconds = (left - entered).total_seconds()
    bucket = 0 if seconds < 1 else 1 + math.floor(math.log2(seconds) * STAY_STEPS)
    return {"stay_seconds": seconds, "stay_bucket": bucket}


def upgrade() -> None:
    for name in _DIMENSIONS:
        op.add_column("handoff", sa.Column(name, sa.String(), nullable=False, server_default="(none)"))
    # Every stage row of a lead holds the same values (flows.history keeps them in step): any one will do.
    op.execute(
        "UPDATE handoff SET source = s.source, campaign = s.campaign, channel = s.channel "
        "FROM stageentry s WHERE s.lead_id = handoff.lead_id"
    )
    op.add_column("stageentry", sa.Column("stay_seconds", sa.Float(), nullable=True))
    op.add_column("stageentry", sa.Column("stay_bucket", sa.SmallInteger(), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        seconds = "extract(epoch FROM left_at - entered_at)"
        op.execute(
            f"UPDATE stageentry SET stay_seconds = {seconds}, stay_bucket = CASE WHEN {seconds} < 1 THEN 0 "
            f"ELSE 1 + floor(ln({seconds}) / ln(2) * {STAY_STEPS}) END WHERE left_at > entered_at"
        )
        _recreate_index(_NEW_INCLUDE)
        return
    # SQLite: the same in Python, from the stored times
    table = sa.table(
        "stageentry",
        sa.column("id"),
        sa.column("entered_at", sa.DateTime()),
        sa.column("left_at", sa.DateTime()),
        sa.column("stay_seconds"),
        sa.column("stay_bucket"),
    )
    rows = bind.execute(sa.select(table.c.id, table.c.entered_at, table.c.left_at).where(table.c.left_at.is_not(None)))
    updates = [{"row": id_, **stay(entered, left)} for id_, entered, left in rows if left > entered]
    if updates:
        bind.execute(
            table.update()
            .where(table.c.id == sa.bindparam("row"))
            .values(stay_seconds=sa.bindparam("stay_seconds"), stay_bucket=sa.bindparam("stay_bucket")),
            updates,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _recreate_index(_OLD_INCLUDE)
    with op.batch_alter_table("stageentry") as batch_op:
        batch_op.drop_column("stay_bucket")
        batch_op.drop_column("stay_seconds")
    with op.batch_alter_table("handoff") as batch_op:
        for name in _DIMENSIONS:
            batch_op.drop_column(name)


def _recreate_index(include: list[str]) -> None:
    op.drop_index("ix_stageentry_cohort", table_name="stageentry")
    op.create_index("ix_stageentry_cohort", "stageentry", ["cohort_at", "stage"], postgresql_include=include)
