"""Alembic environment: runs migrations on the Database given by ``actors.schema``."""

from alembic import context

import actors.tables  # noqa: F401  (registers the actors' tables on the shared metadata)
import middleware.checkpoints
import middleware.dead_letters
import middleware.idempotency
import middleware.job_status
import middleware.schedule_state
import middleware.worker_health  # noqa: F401
from middleware.database import metadata

database = context.config.attributes["database"]

with database.engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
