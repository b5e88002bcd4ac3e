"""webchat: missed messages go by email; a delivery remembers the digest email that covered it

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 11:00:00

A widget message the visitor has not seen within `channels.webchat.email_after` is emailed in one digest per
conversation; `emailed_at` marks the deliveries a digest covered, so none is emailed twice. The partial index
keeps the digest job's scan to unseen, unemailed widget messages.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UNSEEN = "channel = 'webchat' AND seen_at IS NULL AND emailed_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(sa.Column("emailed_at", sa.DateTime(), nullable=True))
        batch.create_index(
            "ix_delivery_unseen", ["sent_at"], sqlite_where=sa.text(UNSEEN), postgresql_where=sa.text(UNSEEN)
        )


def downgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.drop_index("ix_delivery_unseen", sqlite_where=sa.text(UNSEEN), postgresql_where=sa.text(UNSEEN))
        batch.drop_column("emailed_at")
