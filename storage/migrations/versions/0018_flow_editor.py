"""flowrevision, flowdraft and audit: flows edited and published in the console

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 22:30:00

Marketers edit flows in the console (bot/console/flowedit.py): a draft per person and flow, the history of
running versions (published, rolled back, or seen on disk) with their text, and an audit log of who did what.
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

def upgrade() -> None:
    op.create_table(
        "flowrevision",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("flow_slug", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("base", sa.String(), nullable=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("author", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_flowrevision_slug", "flowrevision", ["flow_slug", "id"])
    op.create_table(
        "flowdraft",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("flow_slug", sa.String(), nullable=False),
        sa.Column("operator_id", sa.Integer(), sa.ForeignKey("operator.id"), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("base", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("flow_slug", "operator_id"),
    )
    op.create_index("ix_flowdraft_operator_id", "flowdraft", ["operator_id"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_at", "audit", ["at"])

def downgrade() -> None:
    op.drop_table("audit")
    op.drop_table("flowdraft")
    op.drop_table("flowrevision")
