"""Initial schema: runs, task runs and attempts, trigger schedules and executions, cron schedules.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cron_schedules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("workflow_name", sa.String(length=200), nullable=False),
        sa.Column("cron_expression", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("catchup_policy", sa.String(length=16), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cron_schedules")),
    )
    op.create_index(op.f("ix_cron_schedules_workflow_name"), "cron_schedules", ["workflow_name"], unique=False)
    op.create_table(
        "trigger_schedules",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("trigger_name", sa.String(length=200), nullable=False),
        sa.Column("workflow_name", sa.String(length=200), nullable=False),
        sa.Column("poll_interval_ms", sa.Integer(), nullable=False),
        sa.Column("allow_concurrent", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("last_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_poll_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_fire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("poll_count", sa.BigInteger(), nullable=False),
        sa.Column("fire_count", sa.BigInteger(), nullable=False),
        sa.Column("skip_count", sa.BigInteger(), nullable=False),
        sa.Column("dedup_skip_count", sa.BigInteger(), nullable=False),
        sa.Column("error_count", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trigger_schedules")),
        sa.UniqueConstraint("trigger_name", name=op.f("uq_trigger_schedules_trigger_name")),
    )
    op.create_table(
        "workflow_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("workflow_name", sa.String(length=200), nullable=False),
        sa.Column("workflow_version", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("input_context", sa.Text(), nullable=False),
        sa.Column("final_context", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("trigger_name", sa.String(length=200), nullable=True),
        sa.Column("cron_schedule_id", sa.Integer(), nullable=True),
        sa.Column("package_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_runs")),
    )
    op.create_index(op.f("ix_workflow_runs_status"), "workflow_runs", ["status"], unique=False)
    op.create_index(op.f("ix_workflow_runs_workflow_name"), "workflow_runs", ["workflow_name"], unique=False)
    op.create_table(
        "cron_executions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("schedule_id", sa.Integer(), nullable=False),
        sa.Column("scheduled_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["workflow_runs.id"],
            name=op.f("fk_cron_executions_run_id_workflow_runs"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["cron_schedules.id"],
            name=op.f("fk_cron_executions_schedule_id_cron_schedules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cron_executions")),
        sa.UniqueConstraint("schedule_id", "scheduled_time", name="uq_cron_exec_time"),
    )
    op.create_index(op.f("ix_cron_executions_schedule_id"), "cron_executions", ["schedule_id"], unique=False)
    op.create_table(
        "task_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("input_context", sa.Text(), nullable=True),
        sa.Column("output_context", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_kind", sa.String(length=16), nullable=True),
        sa.Column("skip_reason", sa.String(length=32), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["workflow_runs.id"],
            name=op.f("fk_task_runs_run_id_workflow_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_runs")),
        sa.UniqueConstraint("run_id", "task_id", name="uq_task_runs_run_task"),
    )
    op.create_index(op.f("ix_task_runs_run_id"), "task_runs", ["run_id"], unique=False)
    op.create_table(
        "trigger_executions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("trigger_name", sa.String(length=200), nullable=False),
        sa.Column("context_hash", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("dedup_active", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["workflow_runs.id"],
            name=op.f("fk_trigger_executions_run_id_workflow_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trigger_executions")),
    )
    op.create_index("ix_trigger_exec_name_started", "trigger_executions", ["trigger_name", "started_at"], unique=False)
    op.create_index(op.f("ix_trigger_executions_run_id"), "trigger_executions", ["run_id"], unique=False)
    op.create_index(
        "uq_trigger_exec_active",
        "trigger_executions",
        ["trigger_name", "context_hash"],
        unique=True,
        sqlite_where=sa.text("dedup_active = 1"),
        postgresql_where=sa.text("dedup_active"),
    )
    op.create_table(
        "task_attempts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("task_run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_kind", sa.String(length=16), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_run_id"],
            ["task_runs.id"],
            name=op.f("fk_task_attempts_task_run_id_task_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_attempts")),
        sa.UniqueConstraint("task_run_id", "attempt", name="uq_task_attempts_task_attempt"),
    )
    op.create_index(op.f("ix_task_attempts_task_run_id"), "task_attempts", ["task_run_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_task_attempts_task_run_id"), table_name="task_attempts")
    op.drop_table("task_attempts")
    op.drop_index(
        "uq_trigger_exec_active",
        table_name="trigger_executions",
        sqlite_where=sa.text("dedup_active = 1"),
        postgresql_where=sa.text("dedup_active"),
    )
    op.drop_index(op.f("ix_trigger_executions_run_id"), table_name="trigger_executions")
    op.drop_index("ix_trigger_exec_name_started", table_name="trigger_executions")
    op.drop_table("trigger_executions")
    op.drop_index(op.f("ix_task_runs_run_id"), table_name="task_runs")
    op.drop_table("task_runs")
    op.drop_index(op.f("ix_cron_executions_schedule_id"), table_name="cron_executions")
    op.drop_table("cron_executions")
    op.drop_index(op.f("ix_workflow_runs_workflow_name"), table_name="workflow_runs")
    op.drop_index(op.f("ix_workflow_runs_status"), table_name="workflow_runs")
    op.drop_table("workflow_runs")
    op.drop_table("trigger_schedules")
    op.drop_index(op.f("ix_cron_schedules_workflow_name"), table_name="cron_schedules")
    op.drop_table("cron_schedules")
