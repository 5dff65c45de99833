"""A liveness probe over HTTP for one worker process: ``GET /healthz`` answers 200 or 503.

The mechanics behind :class:`middleware.worker_health.WorkerHealth`: a stdlib
``ThreadingHTTPServer`` on a daemon thread. The socket is bound when the server is built, so a
port already taken raises at once (the caller stops the worker) instead of a thread dying quietly.
Answering needs the GIL: a process whose GIL is held for longer than the probe's timeout fails the
probe too, which is what a liveness probe is for.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger("middleware.serving.liveness_probe.LivenessServer")

PATH = "/healthz"

#: () -> (alive, reason): the reason is one sentence, shown in the response body.
LivenessCheck = Callable[[], tuple[bool, str]]


class ProbePortTaken(OSError):
    """The probe's address is in use by another process (or another worker of this master)."""


def process_index() -> int:
    """This worker process's index under its ``dramatiq`` master: 0 for the first of ``--processes N``.

    The dramatiq CLI starts its N worker processes before anything else, as multiprocessing
    children named ``Process-1`` .. ``Process-N``; a process not started that way counts as 0.
    """
    match = re.fullmatch(r"Process-(\d+)", multiprocessing.current_process().name)
    return int(match.group(1)) - 1 if match else 0


class LivenessServer:
    """Serves ``GET /healthz`` from ``check`` on ``bind:port``; every other path is a 404."""

    def __init__(self, check: LivenessCheck, *, bind: str, port: int) -> None:
        try:
            self._server = ThreadingHTTPServer((bind, port), _handler_for(check))
        except OSError as error:
            raise ProbePortTaken(f"cannot listen on {bind}:{port} for the liveness probe: {error.strerror}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="liveness-probe", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()
        logger.info("Answering liveness probes on http://%s:%d%s.", *self._server.server_address[:2], PATH)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def _handler_for(check: LivenessCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != PATH:
                self._answer(404, {"alive": False, "reason": f"not found; the probe is {PATH}"})
                return
            try:
                alive, reason = check()
            except Exception as error:  # the probe must answer even when the check breaks: say so
                logger.exception("The liveness check failed; answering 503.")
                alive, reason = False, f"the liveness check failed: {type(error).__name__}: {error}"
            self._answer(200 if alive else 503, {"alive": alive, "reason": reason})

        def _answer(self, status: int, body: dict[str, object]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("%s " + format, self.address_string(), *args)  # a probe every few seconds: not INFO

    return Handler
