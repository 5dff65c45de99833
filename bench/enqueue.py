"""Sends N messages to one of the benchmark's actors and prints the enqueue rate as JSON.

    python -m bench.enqueue --module bench.stack_actors --actor noop --jobs 20000 [--args '[10]'] [--bulk]

Run by ``bench.run`` in a fresh process per system, with that system's settings in the environment;
``--bulk`` sends through ``middleware.operations.bulk_enqueue.send_many`` instead of one ``send()`` per message.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time

import dramatiq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", required=True, help="bench.bare_actors or bench.stack_actors")
    parser.add_argument("--actor", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--args", default="[]", help="the actor's arguments, as a JSON list")
    parser.add_argument("--bulk", action="store_true", help="pipelined bulk enqueue instead of send() per message")
    args = parser.parse_args()
    module = importlib.import_module(args.module)
    actor: dramatiq.Actor = getattr(module, args.actor)
    arguments = tuple(json.loads(args.args))
    started = time.perf_counter()
    if args.bulk:
        from middleware.operations.bulk_enqueue import send_many

        send_many(actor, [arguments] * args.jobs)
    else:
        for _ in range(args.jobs):
            actor.send(*arguments)
    seconds = time.perf_counter() - started
    print(json.dumps({"jobs": args.jobs, "seconds": seconds, "rate": args.jobs / seconds}))


if __name__ == "__main__":
    main()
