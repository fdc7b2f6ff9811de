"""Public UUID ids for schedules and executions; named cron instances; cron recovery bookkeeping.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10

Additive: every new column is nullable or has a server default, so the previous release keeps inserting rows on
this schema (the database fills in ``public_id``). Existing rows get a fresh UUID each: PostgreSQL evaluates the
volatile default per row when the column is added; on SQLite the table is rebuilt and the default runs for every
copied row.

- ``public_id`` (``cron_schedules``, ``cron_executions``, ``trigger_schedules``, ``trigger_executions``): the UUID
  string the cloaca API returns; the integer keys stay for joins and the run-creation hot path.
- ``cron_schedules.instance_name``, ``params``: named, parameterised schedules (``register_workflow_instance``),
  unique per (workflow_name, instance_name).
- ``cron_executions.handoff_pending``, ``recovery_attempts``, ``recovery_claimed_at``, ``updated_at``: a due
  time claimed without a run, and cron recovery's bookkeeping for it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("cron_schedules", "cron_executions", "trigger_schedules", "trigger_executions")


# The same expressions as cloacina.store.models.NewUuidText (copied: a migration never changes with the code).
PG_NEW_UUID = "(gen_random_uuid())::text"
SQLITE_NEW_UUID = (
    "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || substr(lower(hex(randomblob(2))), 2)"
    " || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) || '-'"
    " || lower(hex(randomblob(6))))"
)


def _public_id(sqlite: bool) -> sa.Column:  # type: ignore[type-arg]
    default = sa.text(SQLITE_NEW_UUID if sqlite else PG_NEW_UUID)
    return sa.Column("public_id", sa.String(length=36), server_default=default, nullable=False)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # SQLite cannot ADD COLUMN with an expression default: rebuild those tables (batch "recreate").
    recreate = "always" if sqlite else "auto"
    for table in TABLES:
        with op.batch_alter_table(table, recreate=recreate) as batch:
            batch.add_column(_public_id(sqlite))
            batch.create_unique_constraint(op.f(f"uq_{table}_public_id"), ["public_id"])
    with op.batch_alter_table("cron_schedules") as batch:
        batch.add_column(sa.Column("instance_name", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("params", sa.Text(), nullable=True))
        batch.create_unique_constraint("uq_cron_schedules_instance", ["workflow_name", "instance_name"])
    with op.batch_alter_table("cron_executions") as batch:
        batch.add_column(sa.Column("handoff_pending", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("recovery_attempts", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("recovery_claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cron_executions") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("recovery_claimed_at")
        batch.drop_column("recovery_attempts")
        batch.drop_column("handoff_pending")
    with op.batch_alter_table("cron_schedules") as batch:
        batch.drop_constraint("uq_cron_schedules_instance", type_="unique")
        batch.drop_column("params")
        batch.drop_column("instance_name")
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f"uq_{table}_public_id"), type_="unique")
            batch.drop_column("public_id")
