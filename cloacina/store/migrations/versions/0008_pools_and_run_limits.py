"""Worker pools and flow control: task pools with slots, and runs that wait for their workflow's limit.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

- ``task_pools``: a named pool of slots (``cloacina pools set NAME --slots N``); a task declared with
  ``pool="NAME"`` takes ``pool_slots`` of them while it runs, cluster-wide.
- ``task_runs.pool`` / ``task_runs.pool_slots``: the pool a task's definition names and the slots it takes, copied
  when the run is created, so the slots in use are ``SUM(pool_slots)`` of the pool's Running tasks (a lost
  attempt given back frees its slots with it). Index ``ix_task_runs_pool_running`` serves that sum.
- ``workflow_runs.waiting_reason``: why a Pending run has not started (its workflow's ``max_active_runs`` is
  reached); ``NULL`` for every other run. Index ``ix_workflow_runs_waiting`` finds the oldest waiting run of a
  workflow.

Additive: code of the previous release never reads these columns and leaves them ``NULL``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_pools",
        sa.Column("name", sa.String(length=200), primary_key=True),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("slots >= 0", name="ck_task_pools_slots"),
    )
    with op.batch_alter_table("task_runs") as batch:
        batch.add_column(sa.Column("pool", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("pool_slots", sa.Integer(), nullable=True))
    op.create_index(
        "ix_task_runs_pool_running",
        "task_runs",
        ["pool"],
        postgresql_where=sa.text("pool IS NOT NULL AND status = 'Running'"),
        sqlite_where=sa.text("pool IS NOT NULL AND status = 'Running'"),
    )
    with op.batch_alter_table("workflow_runs") as batch:
        batch.add_column(sa.Column("waiting_reason", sa.Text(), nullable=True))
    op.create_index(
        "ix_workflow_runs_waiting",
        "workflow_runs",
        ["workflow_name", "created_at"],
        postgresql_where=sa.text("waiting_reason IS NOT NULL"),
        sqlite_where=sa.text("waiting_reason IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_runs_waiting", table_name="workflow_runs")
    with op.batch_alter_table("workflow_runs") as batch:
        batch.drop_column("waiting_reason")
    op.drop_index("ix_task_runs_pool_running", table_name="task_runs")
    with op.batch_alter_table("task_runs") as batch:
        batch.drop_column("pool_slots")
        batch.drop_column("pool")
    op.drop_table("task_pools")
