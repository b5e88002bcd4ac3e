"""email: consent, opt-out and bounces on the lead; subject and reach (delivered, seen, bounced) on deliveries

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 10:00:00

A lead's email address may be written to only with consent (when `email.require_consent` is on), not after
the person unsubscribed from email (RFC 8058 one-click), and not after it hard-bounced. A delivery says how far
it got: `sent_at` (handed to the channel), `delivered_at` (the channel has it: the relay accepted the email,
the widget received the frame, the Bot API accepted the message), `seen_at` (shown on the visitor's screen)
or `bounced_at`.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

COLUMNS = {  # all nullable: existing rows have none of it
    "lead": {
        "email_consent_at": sa.DateTime,
        "email_consent_source": sa.String,
        "email_opted_out_at": sa.DateTime,
        "email_bounced_at": sa.DateTime,
        "email_bounce_reason": sa.String,
    },
    "delivery": {"subject": sa.String, "delivered_at": sa.DateTime, "seen_at": sa.DateTime, "bounced_at": sa.DateTime},
}


def upgrade() -> None:
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for name, kind in columns.items():
                batch.add_column(sa.Column(name, kind(), nullable=True))


def downgrade() -> None:
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for name in columns:
                batch.drop_column(name)
