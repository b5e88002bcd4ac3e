"""ids never reused: SQLite tables whose ids users and APIs see become AUTOINCREMENT

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24 12:00:00

Without AUTOINCREMENT SQLite numbers a new row one above the largest id left, so after an erasure
removed the newest lead, a retried `DELETE /api/leads/5` erased the next person who got id 5. The same
holds for every id that leaves a transaction: leads, conversations, events and messages (API), handoffs
(console, API, Telegram Take buttons), deliveries and enrollments (held by a send or a step in flight while
an erasure may remove them), outgoing webhook deliveries (API). Identities, points entries and stage
history rows are only ever read by what they belong to, so they stay as they are. SQLite cannot alter a
table's key, so each table is rebuilt (batch mode); storage/migrate.py turns foreign key checks off around
it, as SQLite's documented procedure does. PostgreSQL's sequences never reuse an id: nothing to do.
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TABLES = ("lead", "conversation", "event", "message", "handoff", "delivery", "enrollment", "webhookdelivery")


def upgrade() -> None:
    _rebuild({"sqlite_autoincrement": True})


def downgrade() -> None:
    _rebuild({})


def _rebuild(table_kwargs: dict[str, bool]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs=table_kwargs):
            pass
