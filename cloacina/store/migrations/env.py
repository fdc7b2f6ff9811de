"""Alembic environment: runs migrations on the connection cloacina hands over (never reads alembic.ini)."""

from __future__ import annotations

from alembic import context

from cloacina.store.models import Base

config = context.config
connection = config.attributes.get("connection")
schema = config.attributes.get("schema")

if connection is None:
    raise RuntimeError("cloacina migrations run through `cloacina db upgrade` or Database.upgrade()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table_schema=schema,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
