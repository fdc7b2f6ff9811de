"""The workflow catalog records a workflow's ``max_active_runs``, so a client without its code respects the limit.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08

- ``workflow_catalog.max_active_runs``: the limit ``builder.max_active_runs(n)`` set (``NULL``: none). A client
  that starts a run by name from the catalog makes it wait at that limit (:mod:`cloacina.store.run_limits`).

Additive: code of the previous release never reads the column and leaves it ``NULL``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workflow_catalog") as batch:
        batch.add_column(sa.Column("max_active_runs", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workflow_catalog") as batch:
        batch.drop_column("max_active_runs")
