"""python -m ops jobs ...: job status and progress, by message id."""

from __future__ import annotations

import argparse
import sys

from ops.output import print_json, print_record, print_table

LIST_COLUMNS = ("message_id", "actor_name", "queue_name", "status", "attempts", "progress", "updated_at", "error")


def add_commands(commands: argparse._SubParsersAction) -> None:
    jobs = commands.add_parser("jobs", help="job status: show, list")
    sub = jobs.add_subparsers(title="jobs commands")
    show = sub.add_parser("show", help="one job's status and progress")
    show.add_argument("message_id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_show)
    listing = sub.add_parser("list", help="jobs, most recently updated first")
    listing.add_argument("--status", choices=("queued", "processing", "completed", "failed"))
    listing.add_argument("--actor")
    listing.add_argument("--queue")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list)


def _database():
    from actors.system import current_system

    return current_system().database


def _show(args: argparse.Namespace) -> int:
    from middleware.job_status import get_job

    job = get_job(_database(), args.message_id)
    if job is None:
        print(f"error: no job with message id {args.message_id!r}", file=sys.stderr)
        return 1
    print_json(job) if args.json else print_record(job)
    return 0


def _list(args: argparse.Namespace) -> int:
    from middleware.job_status import list_jobs

    rows = list_jobs(_database(), status=args.status, actor=args.actor, queue=args.queue, limit=args.limit)
    print_json(rows) if args.json else print_table(rows, LIST_COLUMNS, empty="No jobs match.")
    return 0
