"""Alembic environment: runs on the connection the caller hands over.

supportdesk never reads alembic.ini; :mod:`core.migrate` builds the config
and passes an open connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from core.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through core.migrate
    raise RuntimeError("run migrations with `supportdesk db upgrade`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
