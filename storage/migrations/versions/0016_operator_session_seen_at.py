"""operatorsession.seen_at: when the login was last at the console

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 13:10:00

Console requests and open console sockets mark their login as seen; while an operator was seen in the last
minutes the visitor is not told the team is out, whatever the business hours (on every instance).
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operatorsession") as batch:
        batch.add_column(sa.Column("seen_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("operatorsession") as batch:
        batch.drop_column("seen_at")
