"""Alembic environment: runs migrations on the Database given by ``actors.schema``."""

from alembic import context

import actors.tables  # noqa: F401  (registers the actors' tables on the shared metadata)
import middleware.storage.tables  # noqa: F401  (every table of the middleware)
from middleware.storage.database import metadata

database = context.config.attributes["database"]

with database.engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
