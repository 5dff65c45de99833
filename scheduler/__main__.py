"""python -m scheduler: run one scheduler replica (run two or more; one leads, the others stand by).

Exit codes, as for workers: 0 stopped by SIGTERM/SIGINT; 2 bad settings, a bad schedule entry or a
database schema that is behind (not worth restarting); 3 the database did not answer at start.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

EXIT_OK, EXIT_BAD_START, EXIT_UNAVAILABLE = 0, 2, 3


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it announces every job added at INFO

    from prometheus_client import CollectorRegistry

    import actors  # noqa: F401  (settings, broker and the actors; exits 2 on a bad setting)
    from actors.schema import schema_problem
    from actors.system import current_system
    from middleware.boot_checks import TransientBootProblem
    from middleware.serving.metrics_server import MetricsServer
    from scheduler.entries import ScheduleError, load_schedule, validate
    from scheduler.leader import leader_lock, this_process
    from scheduler.replica import run_replica
    from scheduler.runner import TickRunner
    from scheduler.tasks import SchedulerMetrics

    system = current_system()
    settings = system.settings
    try:
        entries = load_schedule(settings.schedule_module)
        validate(entries, system.broker)
    except ScheduleError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_BAD_START
    try:
        problem = schema_problem(system.database)
    except TransientBootProblem as error:
        print(f"error: scheduler cannot start: {error}", file=sys.stderr, flush=True)
        return EXIT_UNAVAILABLE
    if problem is not None:
        print(f"error: scheduler cannot start: {problem}", file=sys.stderr, flush=True)
        return EXIT_BAD_START

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Set from another thread: the handler runs in the main thread, which may be inside
        # stop.wait() holding the Event's non-reentrant lock.
        signal.signal(signum, lambda *_: threading.Thread(target=stop.set).start())
    identity = this_process()
    metrics = SchedulerMetrics()
    server = None
    if settings.scheduler_metrics_port:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(metrics)
        try:
            server = MetricsServer(registry, bind=settings.metrics_bind, port=settings.scheduler_metrics_port)
        except OSError as error:
            print(
                f"error: scheduler metrics: {str(error).replace('METRICS_PORT', 'SCHEDULER_METRICS_PORT')}",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_BAD_START
    runner = TickRunner(entries, system=system, identity=identity, metrics=metrics)
    lock = leader_lock(system.database, state_dir=settings.state_dir, identity=identity)
    try:
        run_replica(lock, runner, retry_ms=settings.scheduler_leader_retry_ms, stop=stop)
    finally:
        if server is not None:
            server.shutdown()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
