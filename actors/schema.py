"""The schema's version: Alembic migrations in ``actors/migrations`` cover every table."""

from __future__ import annotations

import logging
import time
from pathlib import Path

# Alembic announces its plugins and dialect at INFO on every check: noise in a worker's log.
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from middleware.boot_checks import TransientBootProblem  # noqa: E402
from middleware.storage.database import Database  # noqa: E402

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(database: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not an option: option values go through configparser, which
    # would choke on the '%' of a URL-encoded password.
    config.attributes["database"] = database
    return config


def upgrade(database: Database, revision: str = "head") -> None:
    command.upgrade(alembic_config(database), revision)


def required_revisions() -> set[str]:
    return set(ScriptDirectory(str(MIGRATIONS_DIR)).get_heads())


def unknown_revisions(current: set[str]) -> set[str]:
    """The database's revisions that this code has no migration for: a newer release upgraded it."""
    known = {script.revision for script in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}
    return current - known


def schema_state(current: set[str]) -> str:
    """``up to date``, ``newer than this code (which needs X)`` or ``behind (needs X)``."""
    required = required_revisions()
    needed = ", ".join(sorted(required))
    if current == required:
        return "up to date"
    return f"newer than this code (which needs {needed})" if unknown_revisions(current) else f"behind (needs {needed})"


def newer_than_code(current: set[str]) -> str | None:
    """What to say when a newer release upgraded the database: this code can neither use nor migrate it."""
    unknown = unknown_revisions(current)
    if not unknown:
        return None
    return (
        f"the database is at schema {', '.join(sorted(unknown))}, {schema_state(current)}: a newer release "
        "upgraded it; run that release here."
    )


def current_revisions(database: Database) -> set[str]:
    with database.engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def schema_problem(database: Database, *, wait_s: float = 20.0) -> str | None:
    """None when the database schema is the one this code needs, else what to do about it.

    A database that stays unreachable for ``wait_s`` raises TransientBootProblem (a deploy or a
    failover can take it away for a few seconds; that is no reason to give up for good).
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            current = current_revisions(database)
            break
        except SQLAlchemyError as error:
            if time.monotonic() > deadline:
                raise TransientBootProblem(
                    f"cannot reach the database ({type(error).__name__}: {getattr(error, 'orig', None) or error})"
                ) from None
            time.sleep(1)  # retrying a database that is not answering yet
    required = required_revisions()
    if current == required:
        return None
    if newer := newer_than_code(current):
        return newer
    needed = ", ".join(sorted(required))
    found = f"is at {', '.join(sorted(current))}" if current else "has no schema"
    return f"the database {found} but this code needs schema {needed}; run `python -m ops db upgrade`."
