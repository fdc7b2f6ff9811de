"""Run-ended notifications from PostgreSQL, and two redundant indexes fewer on the hot tables.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

A row trigger on ``workflow_runs`` calls ``pg_notify`` when a run's status becomes terminal, on the channel
``cloacina_ended_<first 16 hex digits of md5(schema)>`` with the run id as payload. The notification is part of
the transaction that ends the run: sent when it commits, never for a rolled-back end, whoever the writer is (a
worker's finish, the sweeper, another runner). Waiting clients LISTEN instead of polling
(:mod:`cloacina.store.run_end_listener`). SQLite has no notifications: nothing to do there.

``ix_task_runs_run_id`` and ``ix_task_attempts_task_run_id`` go: the unique indexes on ``(run_id, task_id)`` and
``(task_run_id, attempt)`` serve every lookup (and the cascades) they served, and each task and attempt written cost
one index insert more for nothing.

Compatible with the previous release: it does not listen (the trigger costs it only the notify call) and its
queries are served by the remaining indexes.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION cloacina_notify_run_ended() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('cloacina_ended_' || substr(md5(TG_TABLE_SCHEMA), 1, 16), NEW.id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

TRIGGER = """
CREATE TRIGGER cloacina_run_ended AFTER UPDATE OF status ON workflow_runs
FOR EACH ROW WHEN (NEW.status IN ('Completed', 'Failed') AND OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION cloacina_notify_run_ended()
"""


def upgrade() -> None:
    op.drop_index("ix_task_runs_run_id", table_name="task_runs")
    op.drop_index("ix_task_attempts_task_run_id", table_name="task_attempts")
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    op.create_index("ix_task_attempts_task_run_id", "task_attempts", ["task_run_id"], unique=False)
    op.create_index("ix_task_runs_run_id", "task_runs", ["run_id"], unique=False)
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS cloacina_run_ended ON workflow_runs")
    op.execute("DROP FUNCTION IF EXISTS cloacina_notify_run_ended()")
