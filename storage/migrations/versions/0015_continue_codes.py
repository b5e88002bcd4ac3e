"""continue_code: the short codes of the widget's "continue on WhatsApp" links

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 12:00:00

A web visitor who clicks the widget's WhatsApp link gets a prefilled message carrying a short code; the row
says whose it is (visitor, and their lead, so erasure removes it), the page's source, until when it can be
claimed, and which WhatsApp number claimed it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "continue_code",
        sa.Column("code", sa.String(), nullable=False),
        sa.Column("visitor", sa.String(), nullable=False),
        sa.Column("lead_id", sa.Integer(), nullable=False),
        sa.Column("touch", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(), nullable=True),
        sa.Column("claimed_by", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["lead_id"], ["lead.id"]),
        sa.PrimaryKeyConstraint("code"),
    )
    op.create_index("ix_continue_code_visitor", "continue_code", ["visitor"])
    op.create_index("ix_continue_code_lead_id", "continue_code", ["lead_id"])
    op.create_index("ix_continue_code_expires_at", "continue_code", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_continue_code_expires_at", table_name="continue_code")
    op.drop_index("ix_continue_code_lead_id", table_name="continue_code")
    op.drop_index("ix_continue_code_visitor", table_name="continue_code")
    op.drop_table("continue_code")
