"""The admin HTTP API and the dashboard: ``create_app(system)``, served by ``python -m ops serve``.

Every route under ``/api`` (and ``/openapi.json``) needs a bearer token; ``/healthz`` and the
dashboard's page and static files carry no data and need none (the page asks for a token and
sends it with each of its requests). The operations are those of ``python -m ops dlq`` and
``jobs``: the same functions of ``middleware.operations.dead_letter_store`` and ``middleware.job_status``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at run
# time, and the bulk-requeue body is a model built inside create_app.
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import dramatiq
from fastapi import Body, Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, create_model

from actors.system import System
from middleware import job_status
from middleware.operations import dead_letter_store as store
from middleware.policies.redaction import (
    positional_parameter_names,
    redact,
    redact_message,
    scrub,
    scrub_deep,
    sensitive_values,
)
from ops.admin import schemas
from ops.admin.errors import ApiError, error_responses, install_error_handlers
from ops.admin.rate_limit import RequeueLimiter
from ops.admin.security import READ_WRITE, CannotServe, Reader, TokenAuthority, Writer

logger = logging.getLogger("ops.admin.app")

HERE = Path(__file__).resolve().parent
#: How often the dashboard refreshes itself.
DASHBOARD_REFRESH_MS = 3_000
#: Bulk requeues are paced at this many messages per second within one call.
REQUEUE_PACE_PER_SECOND = 50.0

#: Every route may answer these (422: a query parameter given twice, or a bad value).
AUTH_ERRORS = (401, 422, 503)
WRITE_ERRORS = (401, 403, 422, 503)
Page = Annotated[int, Query(ge=1, le=100_000, description="page number, from 1")]
Limit = Annotated[int, Query(ge=1, le=500, description="rows per page")]
DeadLetterId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]


def create_app(system: System, *, dev_mode: bool = False) -> FastAPI:
    """The app over ``system``'s database and broker, with tokens from its settings.

    Without tokens it is only made in ``dev_mode``, and then lets every request in.
    """
    settings = system.settings
    if not (settings.admin_tokens or settings.admin_readonly_tokens) and not dev_mode:
        raise CannotServe("no admin token is configured: set ADMIN_TOKENS, or create the app in dev mode")
    app = FastAPI(
        title="Resilient jobs: admin API",
        version="1",
        description="Health, queues, jobs and dead letters. Send `Authorization: Bearer <token>` with every "
        "request; a read-only token gets 403 on anything that changes state.",
        docs_url=None,  # the interactive docs load their scripts from a CDN; the document is at /openapi.json
        redoc_url=None,
        openapi_url=None,  # served below, behind the token
        dependencies=[Depends(_single_valued_query)],
    )
    app.state.system = system
    app.state.authority = TokenAuthority(
        read_write=settings.admin_tokens, read_only=settings.admin_readonly_tokens, open_access=dev_mode
    )
    app.state.requeue_limiter = RequeueLimiter(per_minute=settings.admin_requeue_per_minute)
    install_error_handlers(app)
    _add_security_headers(app)
    _add_dashboard(app)
    _add_api(app, system, max_per_call=min(settings.admin_requeue_max_per_call, settings.admin_requeue_per_minute))
    return app


def _add_api(app: FastAPI, system: System, *, max_per_call: int) -> None:
    database, broker, sensitive = system.database, system.broker, system.settings.sensitive_fields
    limiter: RequeueLimiter = app.state.requeue_limiter
    bulk_request = _bulk_requeue_request(max_per_call)
    bulk_description = (
        f"Requeue the unresolved dead letters matching the filter, newest first: at most {max_per_call} a call, "
        f"paced at {REQUEUE_PACE_PER_SECOND:.0f} a second, within the token's allowance of {limiter.per_minute} "
        "a minute (else 429 and nothing is requeued). `dry_run` only counts them."
    )

    @app.get("/healthz", tags=["health"], response_model=schemas.Liveness, responses=error_responses(422))
    def liveness() -> dict[str, str]:
        """The server answers (no token needed, no data)."""
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document(caller: Reader) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/session", tags=["session"], response_model=schemas.Session, responses=error_responses(*AUTH_ERRORS))
    def session(caller: Reader) -> dict[str, Any]:
        """What the presented token may do."""
        return {"role": caller.role, "dev_mode": app.state.authority.open_access, "requeue_max_per_call": max_per_call}

    @app.get(
        "/api/health", tags=["health"], response_model=schemas.HealthReport, responses=error_responses(*AUTH_ERRORS)
    )
    def health(caller: Reader) -> dict[str, Any]:
        """Overall health, each worker's and each queue's, with the reason when unhealthy."""
        from ops.health import health_report

        return health_report(system)

    @app.get("/api/queues", tags=["health"], response_model=schemas.QueueList, responses=error_responses(*AUTH_ERRORS))
    def queues(caller: Reader) -> dict[str, Any]:
        """Each queue: waiting, delayed, in progress, dead, age of the oldest waiting message."""
        from ops.health import health_report

        report = health_report(system)
        return {"checked_at": report["checked_at"], "queues": report["queues"]}

    @app.get("/api/jobs", tags=["jobs"], response_model=schemas.JobPage, responses=error_responses(*AUTH_ERRORS))
    def jobs(
        caller: Reader,
        status: Annotated[schemas.Status | None, Query()] = None,
        actor: Annotated[schemas.Name | None, Query()] = None,
        queue: Annotated[schemas.Name | None, Query()] = None,
        page: Page = 1,
        limit: Limit = 50,
    ) -> dict[str, Any]:
        """Jobs, most recently updated first."""
        filters = {"status": status, "actor": actor, "queue": queue}
        rows = job_status.list_jobs(database, **filters, limit=limit, offset=(page - 1) * limit)
        return {"total": job_status.count_jobs(database, **filters), "page": page, "limit": limit, "jobs": rows}

    @app.get(
        "/api/jobs/{message_id}",
        tags=["jobs"],
        response_model=schemas.Job,
        responses=error_responses(404, *AUTH_ERRORS),
    )
    def job(caller: Reader, message_id: Annotated[schemas.MessageId, PathParam()]) -> dict[str, Any]:
        """One job's status and progress."""
        row = job_status.get_job(database, message_id)
        if row is None:
            raise ApiError(404, "not_found", f"there is no job with message id {message_id!r}")
        return row

    @app.get(
        "/api/dead-letters",
        tags=["dead letters"],
        response_model=schemas.DeadLetterPage,
        responses=error_responses(*AUTH_ERRORS),
    )
    def dead_letters(
        caller: Reader,
        queue: Annotated[schemas.Name | None, Query()] = None,
        actor: Annotated[schemas.Name | None, Query()] = None,
        kind: Annotated[schemas.Kind | None, Query()] = None,
        resolved: Annotated[bool | None, Query()] = None,
        since: Annotated[schemas.Since | None, Query()] = None,
        page: Page = 1,
        limit: Limit = 50,
    ) -> dict[str, Any]:
        """Dead letters, newest first (without payload and traceback), and per-queue counts."""
        filters = store.Filters(queue=queue, actor=actor, kind=kind, resolved=resolved, since=since)
        rows = store.list_dead_letters(database, filters, limit=limit, offset=(page - 1) * limit, with_message=True)
        total = store.count_dead_letters(database, filters)
        shown = [_shown(row, broker, sensitive, with_message=False) for row in rows]
        return {"total": total, "page": page, "limit": limit, "dead_letters": shown, "stats": store.stats(database)}

    @app.post(
        "/api/dead-letters/requeue",
        tags=["dead letters"],
        response_model=schemas.BulkRequeueResult,
        responses=error_responses(400, 429, *WRITE_ERRORS),
        description=bulk_description,
    )
    def requeue_matching(caller: Writer, request: Annotated[bulk_request, Body()]) -> dict[str, Any]:  # type: ignore[valid-type]
        filters = store.Filters(
            queue=request.queue, actor=request.actor, kind=request.kind, resolved=False, since=request.since
        )
        matched = store.count_dead_letters(database, filters)
        if request.dry_run:
            return {"matched": matched, "dry_run": True, "requeued": []}
        limiter.spend(caller.fingerprint, min(matched, request.limit))
        pairs = store.requeue_matching(
            database, broker, filters, limit=request.limit, per_second=REQUEUE_PACE_PER_SECOND
        )
        logger.info(
            "%d dead letters requeued in bulk through the admin API (token %s).", len(pairs), caller.fingerprint
        )
        return {
            "matched": matched,
            "dry_run": False,
            "requeued": [{"id": row_id, "requeued_as": message_id} for row_id, message_id in pairs],
        }

    @app.get(
        "/api/dead-letters/{dead_letter_id}",
        tags=["dead letters"],
        response_model=schemas.DeadLetter,
        responses=error_responses(404, *AUTH_ERRORS),
    )
    def dead_letter(caller: Reader, dead_letter_id: DeadLetterId) -> dict[str, Any]:
        """One dead letter with its traceback and its payload (sensitive fields redacted)."""
        return _shown(_get(database, dead_letter_id), broker, sensitive)

    @app.patch(
        "/api/dead-letters/{dead_letter_id}",
        tags=["dead letters"],
        response_model=schemas.DeadLetter,
        responses=error_responses(400, 404, *WRITE_ERRORS),
    )
    def resolve(caller: Writer, dead_letter_id: DeadLetterId, change: schemas.ResolveRequest) -> dict[str, Any]:
        """Resolve a dead letter, saying who and why (again to amend the notes)."""
        try:
            row = store.resolve(database, dead_letter_id, by=change.by, notes=change.notes)
        except store.DeadLetterNotFound as error:
            raise ApiError(404, "not_found", str(error)) from None
        logger.info(
            "Dead letter %d resolved by %s through the admin API (token %s).",
            dead_letter_id,
            change.by,
            caller.fingerprint,
        )
        return _shown(row, broker, sensitive)

    @app.post(
        "/api/dead-letters/{dead_letter_id}/requeue",
        tags=["dead letters"],
        response_model=schemas.Requeued,
        responses=error_responses(404, 409, 429, *WRITE_ERRORS),
    )
    def requeue(caller: Writer, dead_letter_id: DeadLetterId) -> dict[str, Any]:
        """Enqueue the original message again as a new message, linked back to the dead letter.
        A dead letter already requeued, or holding a body that is not a message, gets 409."""
        row = _get(database, dead_letter_id)
        if row["requeued_as"] is not None:
            message = f"dead letter {dead_letter_id} was already requeued as message {row['requeued_as']}"
            raise ApiError(409, "already_requeued", message)
        if store.MALFORMED_BODY in row["message"]:
            raise ApiError(
                409,
                "not_a_message",
                f"dead letter {dead_letter_id} holds a malformed body; there is no message to requeue",
            )
        limiter.spend(caller.fingerprint, 1)
        message_id = store.requeue(database, broker, dead_letter_id, by="admin API")
        logger.info(
            "Dead letter %d requeued as %s through the admin API (token %s).",
            dead_letter_id,
            message_id,
            caller.fingerprint,
        )
        return {"id": dead_letter_id, "requeued_as": message_id}

    @app.delete(
        "/api/dead-letters/{dead_letter_id}",
        tags=["dead letters"],
        status_code=204,
        response_class=Response,
        responses=error_responses(404, *WRITE_ERRORS),
    )
    def delete(caller: Writer, dead_letter_id: DeadLetterId) -> Response:
        """Delete a dead letter."""
        try:
            store.delete_dead_letter(database, dead_letter_id)
        except store.DeadLetterNotFound as error:
            raise ApiError(404, "not_found", str(error)) from None
        logger.info("Dead letter %d deleted through the admin API (token %s).", dead_letter_id, caller.fingerprint)
        return Response(status_code=204)


def _single_valued_query(request: Request) -> None:
    # FastAPI would silently take the last of ?queue=a&queue=b; every parameter here takes one value.
    keys = [key for key, _ in request.query_params.multi_items()]
    if repeated := sorted({key for key in keys if keys.count(key) > 1}):
        raise ApiError(422, "invalid_request", f"query: {', '.join(repeated)} given more than once; give each once")


def _bulk_requeue_request(max_per_call: int) -> type[BaseModel]:
    return create_model(
        "BulkRequeueRequest",
        __config__=ConfigDict(extra="forbid"),
        queue=(schemas.Name | None, None),
        actor=(schemas.Name | None, None),
        kind=(schemas.Kind | None, None),
        since=(schemas.Since | None, None),
        limit=(Annotated[int, Field(ge=1, le=max_per_call), schemas.JSON_INTEGER], max_per_call),
        dry_run=(Annotated[bool, schemas.JSON_BOOLEAN], False),
    )


def _get(database, dead_letter_id: int) -> dict[str, Any]:
    try:
        return store.get_dead_letter(database, dead_letter_id)
    except store.DeadLetterNotFound as error:
        raise ApiError(404, "not_found", str(error)) from None


def _shown(
    row: dict[str, Any], broker: dramatiq.Broker, sensitive: tuple[str, ...], *, with_message: bool = True
) -> dict[str, Any]:
    """The row as the API shows it: the payload's sensitive fields redacted, and their values
    scrubbed from the error message and traceback, which often repeat an argument."""
    message = row["message"]
    if store.MALFORMED_BODY in message:
        shown_message = {store.MALFORMED_BODY: _redacted_text(message[store.MALFORMED_BODY], sensitive)}
        values: set[str] = set()
    else:
        parameter_names = positional_parameter_names(broker, row["actor_name"])
        values = sensitive_values(message, sensitive, parameter_names=parameter_names)
        shown_message = scrub_deep(redact_message(message, sensitive, parameter_names=parameter_names), values)
        if isinstance(shown_message.get("options"), dict):  # the final traceback is the row's own, shown once
            shown_message["options"] = {k: v for k, v in shown_message["options"].items() if k != "traceback"}
    shown = {**row, "error_message": scrub(row["error_message"], values)}
    if "traceback" in row:
        shown["traceback"] = scrub(row["traceback"], values)
    if with_message:
        shown["message"] = shown_message
    else:
        shown.pop("message")
    return shown


def _redacted_text(text: str, sensitive: tuple[str, ...]) -> str:
    # A body that is not a message may still be JSON with secrets in it.
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return json.dumps(redact(parsed, sensitive))


def _add_dashboard(app: FastAPI) -> None:
    templates = Jinja2Templates(directory=HERE / "templates")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def dashboard(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(
            request, "index.html", {"refresh_ms": DASHBOARD_REFRESH_MS, "read_write": READ_WRITE}
        )


def _add_security_headers(app: FastAPI) -> None:
    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        # The dashboard runs only its own script and style; nothing may frame it or read its referrer.
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response
