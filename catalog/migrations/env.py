"""Alembic environment: migrations run on the connection that ``Database.migrate`` passes."""

from __future__ import annotations

from alembic import context

from catalog.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through catalog.Database.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
