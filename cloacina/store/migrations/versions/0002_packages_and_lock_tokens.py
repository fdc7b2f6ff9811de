"""Package registry table; dedup lock token on trigger executions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "packages",
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("archive", sa.LargeBinary(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("fingerprint", name=op.f("pk_packages")),
    )
    op.create_index("ix_packages_name_version", "packages", ["name", "version"], unique=False)
    with op.batch_alter_table("trigger_executions") as batch:
        batch.add_column(sa.Column("lock_token", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trigger_executions") as batch:
        batch.drop_column("lock_token")
    op.drop_index("ix_packages_name_version", table_name="packages")
    op.drop_table("packages")
