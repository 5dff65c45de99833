"""The truth table of fatal versus retryable, with the real exceptions of the common clients."""

from __future__ import annotations

import socket
import urllib.error
from email.message import Message

import httpx
import pytest
import requests
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from middleware.errors import FatalError
from middleware.policies.error_classification import ErrorKind, classify_error, http_status_of

FATAL, RETRYABLE = ErrorKind.FATAL, ErrorKind.RETRYABLE


def httpx_status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/hook")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


def requests_http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"HTTP {status}", response=response)


def urllib_http_error(status: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://127.0.0.1/hook", status, "status", Message(), None)


class ApiError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"API answered {status_code}")
        self.status_code = status_code


class GrpcLikeError(Exception):
    status = 503


class ValidationError(ValueError):
    """Named as pydantic, marshmallow and jsonschema name theirs."""


STATUS_TABLE = [
    (400, FATAL),
    (401, FATAL),
    (403, FATAL),
    (404, FATAL),
    (409, FATAL),
    (410, FATAL),
    (422, FATAL),
    (408, RETRYABLE),
    (425, RETRYABLE),
    (429, RETRYABLE),
    (500, RETRYABLE),
    (502, RETRYABLE),
    (503, RETRYABLE),
    (504, RETRYABLE),
    (418, RETRYABLE),
]


@pytest.mark.parametrize("make", [httpx_status_error, requests_http_error, urllib_http_error, ApiError])
@pytest.mark.parametrize(("status", "kind"), STATUS_TABLE)
def test_http_statuses_from_every_common_client(make, status: int, kind: ErrorKind) -> None:
    exception = make(status)
    assert http_status_of(exception) == status
    assert classify_error(exception).kind is kind


@pytest.mark.parametrize(
    ("exception", "kind"),
    [
        (FatalError("meeting 42 was deleted"), FATAL),
        (ValidationError("payload does not match"), FATAL),
        (GrpcLikeError(), RETRYABLE),
        (ConnectionRefusedError(111, "Connection refused"), RETRYABLE),
        (ConnectionResetError(104, "Connection reset by peer"), RETRYABLE),
        (TimeoutError("timed out"), RETRYABLE),
        (socket.gaierror(-2, "Name or service not known"), RETRYABLE),
        (urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")), RETRYABLE),
        (urllib.error.URLError(socket.gaierror(-2, "Name or service not known")), RETRYABLE),
        (httpx.ConnectError("connection refused"), RETRYABLE),
        (httpx.ReadTimeout("read timed out"), RETRYABLE),
        (requests.ConnectionError("connection refused"), RETRYABLE),
        (requests.Timeout("timed out"), RETRYABLE),
        (OperationalError("SELECT 1", {}, Exception("server closed the connection")), RETRYABLE),
        (InterfaceError("SELECT 1", {}, Exception("connection already closed")), RETRYABLE),
        (IntegrityError("INSERT", {}, Exception("duplicate key")), RETRYABLE),
        (RuntimeError("something unexpected"), RETRYABLE),
        (KeyError("missing"), RETRYABLE),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_exceptions_without_a_status(exception: BaseException, kind: ErrorKind) -> None:
    assert classify_error(exception).kind is kind


def test_an_actor_can_make_its_own_exceptions_fatal_or_retryable() -> None:
    class MeetingDeleted(LookupError):
        pass

    assert classify_error(MeetingDeleted(), fatal=(MeetingDeleted,)).kind is FATAL
    assert classify_error(httpx_status_error(409), retryable=(httpx.HTTPStatusError,)).kind is RETRYABLE


def test_the_classification_says_why() -> None:
    assert classify_error(httpx_status_error(404)).reason == "HTTP 404"
    assert classify_error(RuntimeError()).reason == "unknown error RuntimeError (retryable by default)"
    assert classify_error(httpx_status_error(404)).fatal is True


def test_booleans_and_out_of_range_numbers_are_not_statuses() -> None:
    class Weird(Exception):
        status = True
        status_code = 7

    assert http_status_of(Weird()) is None
