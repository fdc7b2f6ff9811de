"""Workflow catalog: every version of every workflow that a process registered (:mod:`cloacina.store.catalog`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

Additive: a new table that code of the previous release never reads. Dropping it (downgrade) loses only what
processes record again when they start.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workflow_catalog",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("tasks", sa.Text(), nullable=False),
        sa.Column("origin", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_catalog")),
        sa.UniqueConstraint("name", "version", name="uq_workflow_catalog_name_version"),
    )


def downgrade() -> None:
    op.drop_table("workflow_catalog")
