"""Run control: a run may end ``Cancelled``, and a run may re-execute another from its failure.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

- ``workflow_runs.retry_of``: the id of the run a re-execution (``DefaultRunner.retry_run``) started from
  (nullable, no foreign key: the original may be purged while its retry stays).
- PostgreSQL: the run-ended notification trigger of migration 0005 fires for ``'Cancelled'`` too, so a client
  waiting for a run (``execute``, ``RunHandle.wait``) hears of its cancellation at once. Its function is unchanged.

Additive: code of the previous release never reads the column, never writes ``'Cancelled'``, and is woken by the
trigger exactly as before. The downgrade restores 0005's trigger and drops the column.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TRIGGER = """
CREATE TRIGGER cloacina_run_ended AFTER UPDATE OF status ON workflow_runs
FOR EACH ROW WHEN (NEW.status IN ({statuses}) AND OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION cloacina_notify_run_ended()
"""
_DROP = "DROP TRIGGER IF EXISTS cloacina_run_ended ON workflow_runs"


def upgrade() -> None:
    with op.batch_alter_table("workflow_runs") as batch:
        batch.add_column(sa.Column("retry_of", sa.String(length=36), nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_DROP)
    op.execute(_TRIGGER.format(statuses="'Completed', 'Failed', 'Cancelled'"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_DROP)
        op.execute(_TRIGGER.format(statuses="'Completed', 'Failed'"))
    with op.batch_alter_table("workflow_runs") as batch:
        batch.drop_column("retry_of")
