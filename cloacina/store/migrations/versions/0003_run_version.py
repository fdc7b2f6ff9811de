"""Run version: a counter every planning-relevant change of a run's tasks increments (optimistic planning).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Additive: code of the previous release ignores the column (its server default keeps inserts working).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workflow_runs") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("workflow_runs") as batch:
        batch.drop_column("version")
