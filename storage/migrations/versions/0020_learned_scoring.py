"""scoringmodel and lead.likelihood: learned scoring

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 23:00:00

`kindling score fit` learns from the database's own history which leads reach the goal stage (flows/learned.py).
Each fit is a scoringmodel row with its figures (held-out ROC AUC, Brier score, calibration, and the rule score's
beside them); an accepted one also holds its weights, and the newest accepted one gives every lead its
`likelihood` (0-100) with `likelihood_model` saying which version gave it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scoringmodel",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=False),
        sa.Column("goal", sa.String(), nullable=False),
        sa.Column("horizon_seconds", sa.Integer(), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("intercept", sa.Float(), nullable=False),
        sa.Column("weights", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.add_column("lead", sa.Column("likelihood", sa.SmallInteger(), nullable=True))
    op.add_column("lead", sa.Column("likelihood_model", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lead") as batch:
        batch.drop_column("likelihood_model")
        batch.drop_column("likelihood")
    op.drop_table("scoringmodel")
