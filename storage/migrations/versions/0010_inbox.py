"""inbox: inbounds stored before their answer, taken in right after (PostgreSQL; SQLite: a file of its own)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 03:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # On SQLite the inbox is a file of its own beside the database, made by bot/intake/inbox.py (storage.db.inbox_url).
    if op.get_bind().dialect.name == "sqlite":
        return
    op.create_table(
        "inbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dedup_key", sa.String(), nullable=False),
        sa.Column("inbound", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("lease_until", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedup_key"),
    )
    op.create_index("ix_inbox_lease_until", "inbox", ["lease_until"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.drop_index("ix_inbox_lease_until", table_name="inbox")
    op.drop_table("inbox")
