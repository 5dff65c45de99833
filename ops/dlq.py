"""python -m ops dlq ...: the dead-letter table, from the command line."""

from __future__ import annotations

import argparse
import sys

from middleware.dead_letters import KINDS
from ops.durations import duration, moment
from ops.output import print_json, print_record, print_table

LIST_COLUMNS = (
    "id",
    "queue_name",
    "actor_name",
    "kind",
    "error_type",
    "error_message",
    "attempts",
    "failed_at",
    "resolved",
    "requeued_as",
)


def add_commands(commands: argparse._SubParsersAction) -> None:
    dlq = commands.add_parser("dlq", help="dead letters: list, show, resolve, requeue, delete, purge, stats")
    sub = dlq.add_subparsers(title="dlq commands")

    listing = _command(sub, "list", "list dead letters, newest first", _list)
    _filters(listing)
    listing.add_argument("--limit", type=_positive, default=50, help="rows per page (default 50)")
    listing.add_argument("--page", type=_positive, default=1, help="page number, from 1")

    show = _command(sub, "show", "one dead letter with its traceback and payload", _show)
    show.add_argument("id", type=int)

    resolve = _command(sub, "resolve", "mark a dead letter resolved", _resolve)
    resolve.add_argument("id", type=int)
    resolve.add_argument("--by", required=True, help="who resolved it")
    resolve.add_argument("--notes", help="what was done")

    requeue = _command(sub, "requeue", "enqueue dead letters again (one by ID, or all matching)", _requeue)
    requeue.add_argument("id", type=int, nargs="?", help="one dead letter; without it, every unresolved match")
    requeue.add_argument("--queue")
    requeue.add_argument("--actor")
    requeue.add_argument("--limit", type=_positive, default=100, help="at most this many (default 100)")
    requeue.add_argument("--rate", type=float, default=50.0, help="messages per second (default 50)")

    remove = _command(sub, "delete", "delete one dead letter", _delete)
    remove.add_argument("id", type=int)

    purge = _command(sub, "purge", "delete old dead letters (retention)", _purge)
    purge.add_argument("--older-than", type=duration, required=True, help="e.g. 30d")
    purge.add_argument("--resolved", action="store_true", help="only resolved ones (unresolved are kept)")

    _command(sub, "stats", "per queue: total, resolved, unresolved", _stats)
    reconcile = _command(sub, "reconcile", "record what sits in the brokers' dead-letter queues", _reconcile)
    reconcile.add_argument(
        "--queue",
        action="append",
        default=[],
        help="also this queue (repeatable); "
        "declared queues, and on Redis every queue with dead letters, are always read",
    )


def _command(sub, name: str, help_text: str, handler) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=handler)
    return parser


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue")
    parser.add_argument("--actor")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--fatal", dest="kind", action="store_const", const="fatal", help="only fatal errors")
    kind.add_argument("--kind", choices=KINDS)
    resolved = parser.add_mutually_exclusive_group()
    resolved.add_argument("--resolved", dest="resolved", action="store_true", default=None)
    resolved.add_argument("--unresolved", dest="resolved", action="store_false")
    parser.add_argument("--since", type=moment, help="failed since a date or a duration ago (24h, 7d)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _system():
    from actors.system import current_system

    return current_system()


def _list(args: argparse.Namespace) -> int:
    from middleware.operations.dead_letter_store import Filters, count_dead_letters, list_dead_letters

    filters = Filters(queue=args.queue, actor=args.actor, kind=args.kind, resolved=args.resolved, since=args.since)
    database = _system().database
    rows = list_dead_letters(database, filters, limit=args.limit, offset=(args.page - 1) * args.limit)
    total = count_dead_letters(database, filters)
    if args.json:
        print_json({"total": total, "page": args.page, "limit": args.limit, "dead_letters": rows})
    else:
        print_table(rows, LIST_COLUMNS, empty="No dead letters match.")
        print(f"{len(rows)} of {total} shown (page {args.page}).")
    return 0


def _show(args: argparse.Namespace) -> int:
    from middleware.operations.dead_letter_store import get_dead_letter

    row = get_dead_letter(_system().database, args.id)
    print_json(row) if args.json else print_record(row)
    return 0


def _resolve(args: argparse.Namespace) -> int:
    from middleware.operations.dead_letter_store import resolve

    row = resolve(_system().database, args.id, by=args.by, notes=args.notes)
    print_json(row) if args.json else print(f"Dead letter {args.id} resolved by {args.by}.")
    return 0


def _requeue(args: argparse.Namespace) -> int:
    from middleware.operations.dead_letter_store import Filters, requeue, requeue_matching

    system = _system()
    if args.id is not None:
        pairs = [(args.id, requeue(system.database, system.broker, args.id))]
    else:
        filters = Filters(queue=args.queue, actor=args.actor)
        pairs = requeue_matching(system.database, system.broker, filters, limit=args.limit, per_second=args.rate)
    if args.json:
        print_json([{"id": dead_letter_id, "requeued_as": message_id} for dead_letter_id, message_id in pairs])
    else:
        for dead_letter_id, message_id in pairs:
            print(f"Dead letter {dead_letter_id} requeued as message {message_id}.")
        print(f"{len(pairs)} requeued.")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from middleware.operations.dead_letter_store import delete_dead_letter

    delete_dead_letter(_system().database, args.id)
    print_json({"deleted": args.id}) if args.json else print(f"Dead letter {args.id} deleted.")
    return 0


def _purge(args: argparse.Namespace) -> int:
    from middleware.operations.dead_letter_store import purge

    if not args.resolved:
        print("error: purge deletes only resolved dead letters; pass --resolved to say so.", file=sys.stderr)
        return 2
    deleted = purge(_system().database, older_than=args.older_than, resolved_only=True)
    print_json({"deleted": deleted}) if args.json else print(f"{deleted} resolved dead letters deleted.")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from middleware.operations.dead_letter_store import stats

    rows = stats(_system().database)
    print_json(rows) if args.json else print_table(rows, ("queue", "total", "resolved", "unresolved"))
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from middleware.operations.dead_letter_store import reconcile

    system = _system()
    recorded = reconcile(system.database, system.broker, queues=args.queue)
    print_json({"recorded": recorded}) if args.json else print(f"{recorded} dead letters recorded from the broker.")
    return 0
