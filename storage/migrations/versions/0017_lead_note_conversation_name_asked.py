"""lead.note and conversation.name_asked: an operator's note on a lead; the bot asked for a name

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 15:00:00

Operators edit a lead's name, contacts, tags and a free-text note from its console page. The greeting
asks a nameless visitor for their name; the conversation remembers it asked, so the next message may
answer it (bot/intake/names.py).
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ALTER TABLE ... ADD COLUMN, never a rebuild: on SQLite a rebuilt table loses AUTOINCREMENT (ids reused, 0011).
    with op.batch_alter_table("lead", recreate="never") as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
    with op.batch_alter_table("conversation", recreate="never") as batch:
        batch.add_column(sa.Column("name_asked", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("conversation") as batch:
        batch.drop_column("name_asked")
    with op.batch_alter_table("lead") as batch:
        batch.drop_column("note")
