"""Run-ended notifications: PostgreSQL tells listeners when a run reaches Completed or Failed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A row trigger on ``workflow_runs`` calls ``pg_notify`` when a run's status becomes terminal, on the channel
``cloacina_ended_<first 16 hex digits of md5(schema)>`` with the run id as payload. The notification is part of
the transaction that ends the run: sent when it commits, never for a rolled-back end, whoever the writer is (a
worker's finish, the sweeper, another runner). Waiting clients LISTEN instead of polling
(:mod:`cloacina.store.run_end_listener`). SQLite has no notifications: nothing to do there.

Additive: code of the previous release does not listen; the trigger costs it nothing but the notify call.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
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
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS cloacina_run_ended ON workflow_runs")
    op.execute("DROP FUNCTION IF EXISTS cloacina_notify_run_ended()")
