"""python -m ops exporter: the system-wide metrics for Prometheus (queues, dead letters, workers).

Each worker deployment serves its own jobs' metrics (``METRICS_PORT``); what no worker sees is
served here, read from the broker and the database at every scrape (``middleware/monitoring/system_gauges.py``).
Run one per system. It listens on ``METRICS_BIND`` (127.0.0.1) : ``OPS_METRICS_PORT`` (9192) and
stops at once, with exit code 1 and one line, if the port is taken.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

EXIT_OK, EXIT_FAILED = 0, 1


def add_commands(commands: argparse._SubParsersAction) -> None:
    exporter = commands.add_parser("exporter", help="serve system-wide metrics (queues, dead letters, workers)")
    exporter.add_argument("--bind", help="address to listen on (default METRICS_BIND, 127.0.0.1)")
    exporter.add_argument("--port", type=int, help="port to listen on (default OPS_METRICS_PORT, 9192)")
    exporter.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from actors.system import current_system
    from middleware.monitoring.system_gauges import SystemCollector
    from middleware.serving.metrics_server import MetricsServer
    from ops.queues import quiet_pika

    quiet_pika()
    system = current_system()
    settings = system.settings
    bind = args.bind or settings.metrics_bind
    port = args.port if args.port is not None else settings.ops_metrics_port
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SystemCollector(system.broker, system.database, stale_after_ms=settings.worker_stale_after_ms))
    try:
        server = MetricsServer(registry, bind=bind, port=port)
    except OSError as error:
        message = str(error).replace("METRICS_PORT", "OPS_METRICS_PORT")  # the one this command listens on
        print(f"error: {message}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Serving system metrics on http://{bind}:{server.port}/metrics", file=sys.stderr, flush=True)
    stop = threading.Event()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass  # the server answers on its own threads
    server.shutdown()
    return EXIT_OK
