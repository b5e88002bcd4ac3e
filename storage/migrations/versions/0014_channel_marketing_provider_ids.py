"""messengers: marketing consent and opt-out per channel on the lead; deliveries found by the provider's id

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 12:00:00

WhatsApp (and Meta's other messengers) send marketing only to people who opted in on that channel, and a
person WhatsApp cannot reach, or who asked that channel to stop marketing, is opted out of marketing there
while chat goes on: `channel_marketing` holds, per channel, when and how consent was given and when and why
marketing stopped. Meta reports how far each message got (delivered, read, failed) by its own message id:
the index finds the delivery behind a status. A nurture delivery carries the WhatsApp template (name,
language, rendered parameters) it goes as when the 24-hour window has closed.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lead") as batch:
        batch.add_column(sa.Column("channel_marketing", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("delivery") as batch:
        batch.add_column(sa.Column("template", sa.JSON(), nullable=True))
        batch.create_index("ix_delivery_provider_message_id", ["provider_message_id"])


def downgrade() -> None:
    with op.batch_alter_table("delivery") as batch:
        batch.drop_index("ix_delivery_provider_message_id")
        batch.drop_column("template")
    with op.batch_alter_table("lead") as batch:
        batch.drop_column("channel_marketing")
