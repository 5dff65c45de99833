"""python -m ops: the operator's command line.

python -m ops db upgrade      create or migrate the schema (SQLite or PostgreSQL)
python -m ops db current      print the schema revision and whether it is up to date
python -m ops dlq ...         dead letters: list, show, resolve, requeue, delete, purge, stats, reconcile
python -m ops jobs ...        job status: show MESSAGE_ID, list --status failed
python -m ops workers         run worker processes, restarting any that dies (a crash loop is stopped)
python -m ops workers status  each worker slot of this host's supervisors: pid, uptime, restarts, state, RSS
python -m ops health          exit 0 when every worker and queue is healthy, else 1 with the reason
python -m ops queues          per queue: waiting, delayed, in progress, dead, oldest waiting age
python -m ops exporter        system-wide metrics for Prometheus: queues, dead letters, worker heartbeats
python -m ops serve           the admin API and dashboard (tokens from ADMIN_TOKENS)
python -m ops schedule        schedule entries: next run, last result, and which scheduler leads

Every command that reads takes --json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from ops import dlq, exporter, health, jobs, queues, schedule, serve, supervisor

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except SQLAlchemyError as error:
        print(f"error: database: {type(error).__name__}: {getattr(error, 'orig', None) or error}", file=sys.stderr)
        return EXIT_FAILED
    except (LookupError, ValueError) as error:  # a missing row, a bad value: say which, no traceback
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ops", description="Operate the job system.")
    commands = parser.add_subparsers(title="commands")

    db = commands.add_parser("db", help="database schema").add_subparsers(title="db commands")
    upgrade = db.add_parser("upgrade", help="create or migrate the schema to the newest revision")
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    upgrade.set_defaults(handler=_db_upgrade)
    db.add_parser("current", help="show the schema revision").set_defaults(handler=_db_current)
    dlq.add_commands(commands)
    jobs.add_commands(commands)
    health.add_commands(commands)
    queues.add_commands(commands)
    supervisor.add_commands(commands)
    exporter.add_commands(commands)
    serve.add_commands(commands)
    schedule.add_commands(commands)
    return parser


def _db_upgrade(args: argparse.Namespace) -> int:
    from alembic.util import CommandError

    from actors.schema import current_revisions, newer_than_code, upgrade
    from actors.system import current_system

    database = current_system().database
    if newer := newer_than_code(current_revisions(database)):
        print(f"error: {newer}", file=sys.stderr)
        return EXIT_FAILED
    try:
        upgrade(database, args.revision)
    except CommandError as error:  # e.g. --revision names no revision: Alembic's sentence, no traceback
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Schema is at {', '.join(sorted(current_revisions(database)))} ({_safe_url(database.url)}).")
    return EXIT_OK


def _db_current(args: argparse.Namespace) -> int:
    from actors.schema import current_revisions, schema_state
    from actors.system import current_system

    current = current_revisions(current_system().database)
    state = schema_state(current)
    print(f"Schema is at {', '.join(sorted(current)) or 'no schema'}: {state}.")
    return EXIT_OK if state == "up to date" else EXIT_FAILED


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
