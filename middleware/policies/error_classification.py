"""Fatal or retryable: the decision for any exception, as a pure function.

A fatal error is never retried, whatever the retry budget: retrying a 404 for a deleted record
only blocks the worker. Everything not known to be fatal is retryable.

Defaults:

- fatal: :class:`FatalError`; HTTP 400, 401, 403, 404, 409, 410, 422; validation errors (any
  exception class named ``ValidationError``, as pydantic, marshmallow and jsonschema name theirs).
- retryable: HTTP 408, 425, 429 and 5xx; connection refused or reset, timeouts, DNS failures;
  database connection errors (SQLAlchemy ``OperationalError`` and ``InterfaceError``); anything
  unknown.

The HTTP status is read from httpx and requests errors (``exception.response.status_code``),
urllib's ``HTTPError`` (``code``), and any exception with an integer ``status_code`` or
``status`` attribute; none of those libraries is imported.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from middleware.errors import FatalError

FATAL_HTTP_STATUSES = frozenset({400, 401, 403, 404, 409, 410, 422})
RETRYABLE_HTTP_STATUSES = frozenset({408, 425, 429})
_RETRYABLE_CLASS_NAMES = frozenset(
    {
        "OperationalError",
        "InterfaceError",  # SQLAlchemy and DB-API: the database is unreachable
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
        "TimeoutException",  # httpx
        "RemoteProtocolError",
        "ConnectionError",
        "Timeout",  # requests (its ConnectionError is not the builtin one)
    }
)


class ErrorKind(StrEnum):
    FATAL = "fatal"
    RETRYABLE = "retryable"


@dataclass(frozen=True)
class Classification:
    kind: ErrorKind
    reason: str

    @property
    def fatal(self) -> bool:
        return self.kind is ErrorKind.FATAL


Classifier = Callable[[BaseException], Classification]


def classify_error(
    exception: BaseException,
    *,
    fatal: tuple[type[BaseException], ...] = (),
    retryable: tuple[type[BaseException], ...] = (),
) -> Classification:
    """Decide fatal or retryable; ``fatal`` and ``retryable`` are an actor's own exception types."""
    if retryable and isinstance(exception, retryable):
        return Classification(ErrorKind.RETRYABLE, f"{type(exception).__name__} is retryable for this actor")
    if isinstance(exception, FatalError) or (fatal and isinstance(exception, fatal)):
        return Classification(ErrorKind.FATAL, f"{type(exception).__name__} is fatal")
    status = http_status_of(exception)
    if status is not None:
        return _classify_status(status)
    if _class_names(exception) & {"ValidationError"}:
        return Classification(ErrorKind.FATAL, "validation error")
    if isinstance(exception, ConnectionError | TimeoutError | socket.gaierror | socket.timeout):
        return Classification(ErrorKind.RETRYABLE, f"network error ({type(exception).__name__})")
    reason = getattr(exception, "reason", None)  # urllib.error.URLError wraps the socket error
    if isinstance(reason, BaseException) and reason is not exception:
        return classify_error(reason, fatal=fatal, retryable=retryable)
    if _class_names(exception) & _RETRYABLE_CLASS_NAMES:
        return Classification(ErrorKind.RETRYABLE, f"connection error ({type(exception).__name__})")
    return Classification(ErrorKind.RETRYABLE, f"unknown error {type(exception).__name__} (retryable by default)")


def http_status_of(exception: BaseException) -> int | None:
    response = getattr(exception, "response", None)
    for candidate in (
        getattr(response, "status_code", None),  # httpx.HTTPStatusError, requests.HTTPError
        getattr(exception, "status_code", None),
        getattr(exception, "status", None),
        getattr(exception, "code", None) if _class_names(exception) & {"HTTPError"} else None,  # urllib
    ):
        if isinstance(candidate, int) and not isinstance(candidate, bool) and 100 <= candidate <= 599:
            return candidate
    return None


def _classify_status(status: int) -> Classification:
    if status in FATAL_HTTP_STATUSES:
        return Classification(ErrorKind.FATAL, f"HTTP {status}")
    if status in RETRYABLE_HTTP_STATUSES or status >= 500:
        return Classification(ErrorKind.RETRYABLE, f"HTTP {status}")
    return Classification(ErrorKind.RETRYABLE, f"HTTP {status} (retryable by default)")


def _class_names(exception: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exception).__mro__}
