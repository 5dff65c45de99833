"""The metrics endpoint the ``dramatiq`` master starts beside its workers (``METRICS_PORT``).

Imported by path (``actors.metrics_fork:run``) in a process of its own, with a GIL of its own, so
a scrape is answered while a job holds the workers' GIL. The master does not watch its forks: if
the port was taken after the workers checked it, this process stops the whole worker (SIGTERM to
the master) with a critical log line, rather than letting it run on without metrics.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from actors.observability import metrics_directory_in_use
from actors.system import current_system
from middleware.serving.metrics_server import start_metrics_server

logger = logging.getLogger("actors.metrics_fork")

EXIT_BAD_START = 2


def run() -> int:
    settings = current_system().settings  # configured by the master before it forked this process
    directory = metrics_directory_in_use()
    if directory is None:
        logger.critical("Metrics have no directory in this process; is METRICS_PORT set for the workers too?")
        return EXIT_BAD_START
    try:
        start_metrics_server(directory, bind=settings.metrics_bind, port=settings.metrics_port)
    except OSError as error:
        logger.critical("Stopping the worker: %s.", error)
        os.kill(os.getppid(), signal.SIGTERM)
        return EXIT_BAD_START
    while True:
        time.sleep(3600)  # the server runs on its own thread until the master's SIGTERM ends this process
