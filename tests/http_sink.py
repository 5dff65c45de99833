"""A real HTTP server on loopback for tests: records every request, answers scripted statuses.

1. ``HttpSink()`` listens on 127.0.0.1, on a free port, in a background thread (use it as a
   context manager, or call ``close()``).
2. ``respond_with(404, 503)`` queues statuses answered in order; once the queue is empty every
   request gets 200.
3. ``requests`` lists what arrived (method, path, headers with lower-cased names, body and its
   JSON); ``wait_for_requests(n, timeout_s=...)`` waits for them without sleeping blindly.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased: HTTP header names are case-insensitive
    body: bytes
    json: Any  # the body decoded as JSON, or None when it is not JSON


class HttpSink:
    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._statuses: deque[int] = deque()
        self._requests: list[RecordedRequest] = []
        self._server = ThreadingHTTPServer((HOST, 0), _handler_for(self))
        self._server.daemon_threads = True  # a hung client must not block close()
        # serve_forever checks for shutdown once per poll interval: 0.5 s by default, per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="http-sink", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/hook") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def respond_with(self, *statuses: int) -> None:
        with self._condition:
            self._statuses.extend(statuses)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._condition:
            return list(self._requests)

    def wait_for_requests(self, n: int, *, timeout_s: float = 5.0) -> list[RecordedRequest]:
        """The first ``n`` requests (or more), once they have arrived; AssertionError after ``timeout_s``."""
        with self._condition:
            if not self._condition.wait_for(lambda: len(self._requests) >= n, timeout=timeout_s):
                raise AssertionError(f"expected {n} requests within {timeout_s} s, got {len(self._requests)}")
            return list(self._requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> HttpSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _record(self, request: RecordedRequest) -> int:
        # Recording and taking the next status under one lock keeps both in arrival order.
        with self._condition:
            self._requests.append(request)
            status = self._statuses.popleft() if self._statuses else 200
            self._condition.notify_all()
        return status


def refused_url(path: str = "/hook") -> str:
    """A loopback URL where nothing listens: the port was free a moment ago and is closed now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    return f"http://{HOST}:{port}{path}"


def _handler_for(sink: HttpSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            status = sink._record(RecordedRequest(self.command, self.path, headers, body, _json_or_none(body)))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: test output is not the place for an access log

    return Handler


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
