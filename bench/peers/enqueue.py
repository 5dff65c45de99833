"""Sends N jobs to Celery or RQ and prints the enqueue rate as JSON (runs in bench/.venv-peers).

python -m bench.peers.enqueue celery|rq --url redis://127.0.0.1:6379/14 --task noop --jobs 5000 [--args '[10]']
"""

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=("celery", "rq"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--task", required=True, choices=("noop", "sleep_ms"))
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--args", default="[]", help="the task's arguments, as a JSON list")
    args = parser.parse_args()
    arguments = tuple(json.loads(args.args))
    if args.framework == "celery":
        from bench.peers.celery_app import app

        app.conf.broker_url = args.url
        task = app.tasks[args.task]
        send = lambda: task.delay(*arguments)  # noqa: E731
    else:
        from redis import Redis
        from rq import Queue

        from bench.peers import rq_jobs

        queue = Queue("bench", connection=Redis.from_url(args.url))
        function = getattr(rq_jobs, args.task)
        send = lambda: queue.enqueue(function, *arguments)  # noqa: E731
    send()  # the first send opens the connection; it is not timed
    started = time.perf_counter()
    for _ in range(args.jobs - 1):
        send()
    seconds = time.perf_counter() - started
    print(json.dumps({"jobs": args.jobs, "seconds": seconds, "rate": (args.jobs - 1) / seconds}))


if __name__ == "__main__":
    main()
