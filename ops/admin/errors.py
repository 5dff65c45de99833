"""One JSON error shape for every 4xx and 5xx of the admin API, never a traceback.

``{"error": "not_found", "message": "there is no dead letter with id 7"}``, plus ``details``
(the fields at fault) for a request that does not validate. Unexpected exceptions are logged
with their traceback and answered with a 500 that says only that.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import dramatiq
import pika.exceptions
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("ops.admin.errors")

#: What Dramatiq's brokers raise when the broker cannot be reached (a requeue, reading queues).
BROKER_ERRORS = (
    dramatiq.errors.BrokerConnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
)


class ErrorBody(BaseModel):
    error: str
    message: str
    details: list[dict[str, Any]] | None = None


class ApiError(Exception):
    """An answer other than success: its status, a short code and a one-line message."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(error=code, message=message, details=details)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each status documented with the error shape."""
    return {status: {"model": ErrorBody, "description": HTTPStatus(status).phrase} for status in statuses}


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    for broker_error in BROKER_ERRORS:
        app.add_exception_handler(broker_error, _broker_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return error_response(error.status, error.code, error.message, headers=error.headers)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    details = [
        {"location": [str(part) for part in item.get("loc", ())], "message": item.get("msg", "invalid")}
        for item in error.errors()
    ]
    summary = "; ".join(f"{'.'.join(detail['location'])}: {detail['message']}" for detail in details[:3])
    return error_response(422, "invalid_request", summary or "the request is not valid", details=details)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_")
    message = error.detail if isinstance(error.detail, str) else HTTPStatus(error.status_code).phrase
    if error.status_code == 400 and "parsing the body" in message:  # FastAPI's words for a body that is not JSON
        message = "the body is not valid JSON"
    return error_response(error.status_code, code, message, headers=getattr(error, "headers", None))


async def _database_error(request: Request, error: SQLAlchemyError) -> JSONResponse:
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        logger.warning("The database connection was lost while answering %s %s.", request.method, request.url.path)
    else:
        logger.error("Database error while answering %s %s.", request.method, request.url.path, exc_info=error)
    return error_response(503, "database_unavailable", f"the database could not answer: {type(error).__name__}")


async def _broker_error(request: Request, error: Exception) -> JSONResponse:
    logger.warning("The broker could not be reached while answering %s %s: %s", request.method, request.url.path, error)
    return error_response(503, "broker_unavailable", f"the broker could not be reached: {type(error).__name__}")


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    logger.error("Unexpected error while answering %s %s.", request.method, request.url.path, exc_info=error)
    return error_response(500, "internal_error", "the server failed to answer; the error is in its log")
