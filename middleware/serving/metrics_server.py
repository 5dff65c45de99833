"""The one metrics endpoint of a worker deployment: the sum of its processes' files, dead ones' live gauges dropped.

1. :class:`LiveProcessesCollector` reads a multiprocess directory like ``prometheus_client``'s own
   collector, but first drops the live gauges (jobs in progress, delayed messages held) of every
   process in it that is no longer running, SIGKILLed ones included: nothing runs on their behalf.
   Counters and histograms of dead processes stay, so totals never go backwards while the
   instance lives.
2. :func:`start_metrics_server` listens on ``bind:port`` (127.0.0.1 unless told otherwise). The
   socket is bound before it returns: a port already taken raises :class:`MetricsPortTaken` at
   once, never a server thread dying quietly.
3. :func:`check_port_free` lets each worker process refuse to start when the port is held by
   another program, before it takes a message (the server itself starts later, in a fork).

Import only after ``PROMETHEUS_MULTIPROC_DIR`` is set (see ``middleware.serving.metrics_directory``).
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from middleware.serving.processes import process_alive

logger = logging.getLogger("middleware.serving.metrics_server")

_PID_OF_FILE = re.compile(r"_(\d+)\.db$")


class MetricsPortTaken(OSError):
    """The metrics address is in use by another program."""


class LiveProcessesCollector:
    """Collects a multiprocess directory, dropping the live gauges of processes that have died."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        for pid in self.dead_pids():
            mark_process_dead(pid, str(self.directory))
        files = sorted(str(path) for path in self.directory.glob("*.db"))
        return iter(MultiProcessCollector.merge(files, accumulate=True))

    def dead_pids(self) -> set[int]:
        pids = {
            int(match.group(1))
            for path in self.directory.glob("gauge_live*.db")
            if (match := _PID_OF_FILE.search(path.name))
        }
        return {pid for pid in pids if not process_alive(pid)}


class MetricsServer:
    """An HTTP server for one registry on a daemon thread. A collector that raises makes the scrape
    answer 503 with one line (and one warning in the log), so Prometheus's ``up`` shows it."""

    def __init__(self, registry: CollectorRegistry, *, bind: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        server_class = type("_Server", (_ThreadingWSGIServer,), {"address_family": family})
        try:
            self._server: _ThreadingWSGIServer = make_server(
                bind, port, _guarded(make_wsgi_app(registry)), server_class, _QuietHandler
            )
        except OSError as error:
            raise _port_error(bind, port, error) from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-server", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def start_metrics_server(directory: Path, *, bind: str, port: int) -> MetricsServer:
    """Serve ``directory``'s metrics on ``http://bind:port/metrics``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiveProcessesCollector(directory))
    server = MetricsServer(registry, bind=bind, port=port)
    logger.info("Serving metrics on http://%s:%d/metrics from %s.", bind, server.port, directory)
    return server


def check_port_free(bind: str, port: int) -> None:
    """Raise :class:`MetricsPortTaken` if another program listens on ``bind:port``.

    Binds with ``SO_REUSEADDR`` and without listening, so the worker processes of one master can
    check at once without colliding, while a listening socket of any other program is refused.
    """
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except OSError as error:
            raise _port_error(bind, port, error) from None


def _port_error(bind: str, port: int, error: OSError) -> OSError:
    if error.errno == errno.EADDRINUSE:
        return MetricsPortTaken(
            f"cannot serve metrics on {bind}:{port}: the port is taken by another program; "
            "set METRICS_PORT to a free port (one per worker deployment on a host), or METRICS_PORT=0 for none"
        )
    return OSError(error.errno, f"cannot serve metrics on {bind}:{port}: {error.strerror}; check METRICS_BIND")


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up shutdown


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: Prometheus scrapes every few seconds


def _guarded(app: Any) -> Any:
    def guarded_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        try:
            return app(environ, start_response)  # the exposition is rendered inside this call
        except Exception as error:
            logger.warning("A metrics scrape failed: %s: %s", type(error).__name__, error)
            start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"metrics unavailable: {type(error).__name__}: {error}\n".encode()]

    return guarded_app
