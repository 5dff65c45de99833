"""The admin API in process, over real Redis and a migrated SQLite database with real dead letters.

Dead letters come from real failing jobs: an in-process Dramatiq worker on Redis runs actors that
raise, and the project's DeadLetters and JobStatus middleware record them. The API is fuzzed with
schemathesis against its own OpenAPI document.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dramatiq
import httpx
import pytest
import schemathesis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from actors.settings import Settings
from actors.system import System
from middleware.dead_letters import DeadLetters
from middleware.errors import FatalError
from middleware.job_status import JobStatus, get_job
from middleware.operations.dead_letter_store import Filters, count_dead_letters, get_dead_letter, list_dead_letters
from middleware.policies.redaction import REDACTED
from middleware.retries import Retries
from middleware.storage.database import Database
from ops.admin.app import create_app
from tests import harness
from tests.harness import ROOT, free_port, process_env, run_ops, wait_until

READ_WRITE_TOKEN = "rw-token-for-tests-0123456789"
READ_ONLY_TOKEN = "ro-token-for-tests-0123456789"
WRITE = {"Authorization": f"Bearer {READ_WRITE_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_ONLY_TOKEN}"}
EMAILS = ("ada@example.com", "grace@example.com", "alan@example.com")
#: Per operation and per mode (valid, invalid requests): 12 operations x 2 modes x at most this many requests.
FUZZ_EXAMPLES = 15


def make_system(database_url: str, namespace: str, state_dir: Path, **overrides: str) -> System:
    """Settings read the real way; a broker with the middleware that records status and dead letters."""
    settings = Settings.from_env(
        {
            "BROKER_URL": harness.REDIS_TEST_URL,
            "REDIS_NAMESPACE": namespace,
            "DATABASE_URL": database_url,
            "STATE_DIR": str(state_dir),
            "ADMIN_TOKENS": READ_WRITE_TOKEN,
            "ADMIN_READONLY_TOKENS": READ_ONLY_TOKEN,
            **overrides,
        }
    )
    database = Database(settings.database_url)
    broker = RedisBroker(
        url=harness.REDIS_TEST_URL,
        namespace=namespace,
        middleware=[
            CurrentMessage(),
            DeadLetters(database=database),
            JobStatus(database=database),
            Retries(max_retries=0),
        ],
    )
    return System(settings=settings, database=database, broker=broker)


def fail_some_jobs(broker: dramatiq.Broker, database: Database) -> None:
    """Three welcome mails and one charge fail for good; the middleware records them."""

    @dramatiq.actor(broker=broker, queue_name="mail", max_retries=0)
    def send_welcome(email_address: str, profile: dict) -> None:
        raise FatalError(f"the mail service refused {email_address!r}")

    @dramatiq.actor(broker=broker, queue_name="billing", max_retries=0)
    def charge(account_id: int, card_token: str) -> None:
        raise FatalError(f"account {account_id} was closed")

    for email in EMAILS:
        send_welcome.send(email, {"name": email.split("@")[0], "api_token": "t-123", "plan": "pro"})
    charge.send(42, "card-token-secret")
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        wait_until(lambda: count_dead_letters(database) == 4, timeout_s=20, what="four dead letters")
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test: cheaper than migrating each time."""
    path = tmp_path_factory.mktemp("admin-api") / "template.sqlite3"
    result = run_ops({"DATABASE_URL": f"sqlite:///{path}", "BROKER_URL": harness.REDIS_TEST_URL}, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    return path


@contextmanager
def running_system(
    template: Path, directory: Path, *, database_url: str | None = None, **overrides: str
) -> Iterator[System]:
    """A system of its own (a copy of the SQLite template, or ``database_url``; a Redis namespace)
    holding four real dead letters."""
    if database_url is None:
        shutil.copyfile(template, directory / "jobs.sqlite3")
        database_url = f"sqlite:///{directory / 'jobs.sqlite3'}"
    namespace = f"rjtest-{uuid.uuid4().hex[:12]}"
    system = make_system(database_url, namespace, directory, **overrides)
    try:
        fail_some_jobs(system.broker, system.database)
        yield system
    finally:
        system.broker.close()
        system.database.dispose()
        harness.delete_redis_namespace(namespace)


@pytest.fixture
def system(migrated_template: Path, tmp_path: Path) -> Iterator[System]:
    """For tests that change rows."""
    with running_system(migrated_template, tmp_path) as system:
        yield system


@pytest.fixture
def client(system: System) -> Iterator[TestClient]:
    with TestClient(create_app(system), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def shared_system(migrated_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """For tests that change nothing (every change they try is refused)."""
    with running_system(migrated_template, tmp_path_factory.mktemp("shared")) as system:
        yield system


@pytest.fixture(scope="module")
def shared_client(shared_system: System) -> Iterator[TestClient]:
    with TestClient(create_app(shared_system), raise_server_exceptions=False) as client:
        yield client


def dead_letter_id(system: System, actor: str) -> int:
    return list_dead_letters(system.database, Filters(actor=actor), limit=1)[0]["id"]


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == code and body["message"] and "Traceback" not in response.text


def api_requests(dead_letter: int) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", "/api/session", None),
        ("GET", "/api/health", None),
        ("GET", "/api/queues", None),
        ("GET", "/api/jobs", None),
        ("GET", "/api/jobs/some-id", None),
        ("GET", "/api/dead-letters", None),
        ("GET", f"/api/dead-letters/{dead_letter}", None),
        ("GET", "/openapi.json", None),
        *WRITE_REQUESTS(dead_letter),
    ]


def WRITE_REQUESTS(dead_letter: int) -> list[tuple[str, str, dict | None]]:
    return [
        ("PATCH", f"/api/dead-letters/{dead_letter}", {"by": "mallory", "notes": "hidden"}),
        ("POST", f"/api/dead-letters/{dead_letter}/requeue", None),
        ("POST", "/api/dead-letters/requeue", {"queue": "mail"}),
        ("DELETE", f"/api/dead-letters/{dead_letter}", None),
    ]


def test_every_endpoint_but_healthz_refuses_a_missing_or_wrong_token(
    shared_system: System, shared_client: TestClient
) -> None:
    dead_letter = dead_letter_id(shared_system, "send_welcome")
    for method, path, body in api_requests(dead_letter):
        for headers in ({}, {"Authorization": "Bearer not-a-token-of-ours-at-all"}, {"Authorization": "Basic abc"}):
            response = shared_client.request(method, path, json=body, headers=headers)
            assert_error(response, 401, "invalid_token" if "not-a-token" in str(headers) else "unauthenticated")
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert shared_client.get("/healthz").json() == {"status": "ok"}
    # The page and its script carry no data: the browser needs them to ask for a token.
    assert "Log in" in shared_client.get("/").text and shared_client.get("/static/dashboard.js").status_code == 200
    assert get_dead_letter(shared_system.database, dead_letter)["resolved"] is False


def test_a_read_only_token_reads_everything_and_changes_nothing(
    shared_system: System, shared_client: TestClient
) -> None:
    dead_letter = dead_letter_id(shared_system, "send_welcome")
    for method, path, body in api_requests(dead_letter):
        response = shared_client.request(method, path, json=body, headers=READ)
        if method == "GET":
            assert response.status_code in (200, 404), (path, response.text)  # 404: /api/jobs/some-id
        else:
            assert_error(response, 403, "read_only_token")
    assert shared_client.get("/api/session", headers=READ).json()["role"] == "read-only"
    assert count_dead_letters(shared_system.database, Filters(resolved=False)) == 4


def test_dead_letters_are_listed_with_filters_pages_and_per_queue_counts(shared_client: TestClient) -> None:
    page = shared_client.get("/api/dead-letters", params={"queue": "mail", "limit": 2}, headers=READ).json()
    assert (page["total"], page["page"], len(page["dead_letters"])) == (3, 1, 2)
    second = shared_client.get(
        "/api/dead-letters", params={"queue": "mail", "limit": 2, "page": 2}, headers=READ
    ).json()
    ids = [row["id"] for row in page["dead_letters"] + second["dead_letters"]]
    assert len(set(ids)) == 3 and ids == sorted(ids, reverse=True)  # newest first, no row twice
    assert {row["queue"]: row["unresolved"] for row in page["stats"]} == {"billing": 1, "mail": 3}
    fatal = shared_client.get(
        "/api/dead-letters", params={"kind": "fatal", "since": "1h", "resolved": "false"}, headers=READ
    )
    assert fatal.json()["total"] == 4
    assert shared_client.get("/api/dead-letters", params={"since": "2999-01-01"}, headers=READ).json()["total"] == 0
    assert "message" not in page["dead_letters"][0] and "traceback" not in page["dead_letters"][0]


def test_a_dead_letter_shows_its_traceback_and_its_payload_with_sensitive_fields_redacted(
    shared_system: System, shared_client: TestClient
) -> None:
    mail = shared_client.get(f"/api/dead-letters/{dead_letter_id(shared_system, 'send_welcome')}", headers=READ).json()
    assert "raise FatalError" in mail["traceback"] and mail["error_type"] == "FatalError"
    # email_address is a positional parameter: redacted by its name; api_token by its key.
    assert mail["message"]["args"] == [REDACTED, {"name": "alan", "api_token": REDACTED, "plan": "pro"}]
    charge = shared_client.get(f"/api/dead-letters/{dead_letter_id(shared_system, 'charge')}", headers=READ).json()
    assert charge["message"]["args"] == [42, REDACTED]
    everything = shared_client.get("/api/dead-letters", headers=READ).text + str(mail) + str(charge)
    assert [secret for secret in (*EMAILS, "t-123", "card-token-secret") if secret in everything] == [], everything
    # The database keeps the original, to requeue from.
    assert get_dead_letter(shared_system.database, charge["id"])["message"]["args"] == [42, "card-token-secret"]


def test_resolving_records_who_and_the_notes(system: System, client: TestClient) -> None:
    dead_letter = dead_letter_id(system, "charge")
    response = client.patch(
        f"/api/dead-letters/{dead_letter}", json={"by": "ada", "notes": "card replaced"}, headers=WRITE
    )
    assert response.status_code == 200, response.text
    assert (response.json()["resolved"], response.json()["resolved_by"]) == (True, "ada")
    row = get_dead_letter(system.database, dead_letter)
    assert (row["resolved"], row["resolved_by"], row["notes"]) == (True, "ada", "card replaced")
    assert row["resolved_at"] is not None
    unresolved = client.get("/api/dead-letters", params={"resolved": "false"}, headers=READ).json()
    assert dead_letter not in [item["id"] for item in unresolved["dead_letters"]]


def test_requeue_makes_a_new_message_linked_back_once(system: System, client: TestClient) -> None:
    dead_letter = dead_letter_id(system, "charge")
    response = client.post(f"/api/dead-letters/{dead_letter}/requeue", headers=WRITE)
    assert response.status_code == 200, response.text
    new_id = response.json()["requeued_as"]
    assert get_dead_letter(system.database, dead_letter)["requeued_as"] == new_id
    assert client.get(f"/api/jobs/{new_id}", headers=READ).json()["status"] == "queued"
    assert harness.redis_client().llen(f"{system.settings.redis_namespace}:billing") == 1
    assert_error(client.post(f"/api/dead-letters/{dead_letter}/requeue", headers=WRITE), 409, "already_requeued")


def test_bulk_requeue_previews_caps_each_call_and_is_rate_limited_per_token(
    migrated_template: Path, tmp_path: Path
) -> None:
    overrides = {"ADMIN_REQUEUE_MAX_PER_CALL": "2", "ADMIN_REQUEUE_PER_MINUTE": "2"}
    with running_system(migrated_template, tmp_path, **overrides) as system, TestClient(create_app(system)) as client:
        preview = client.post("/api/dead-letters/requeue", json={"queue": "mail", "dry_run": True}, headers=WRITE)
        assert preview.json() == {"matched": 3, "dry_run": True, "requeued": []}
        assert_error(client.post("/api/dead-letters/requeue", json={"limit": 3}, headers=WRITE), 422, "invalid_request")
        first = client.post("/api/dead-letters/requeue", json={"queue": "mail"}, headers=WRITE).json()
        assert (first["matched"], len(first["requeued"])) == (3, 2)  # the cap per call
        refused = client.post("/api/dead-letters/requeue", json={"queue": "mail"}, headers=WRITE)
        assert_error(refused, 429, "rate_limited")
        assert int(refused.headers["retry-after"]) >= 1
        # The refused call requeued nothing.
        assert count_dead_letters(system.database, Filters(queue="mail", resolved=False)) == 1


def test_a_requeue_while_the_broker_is_down_is_a_503_and_changes_nothing(system: System) -> None:
    unreachable = RedisBroker(url=f"redis://127.0.0.1:{free_port()}/0", namespace="rjtest-nowhere", middleware=[])
    cut_off = System(settings=system.settings, database=system.database, broker=unreachable)
    dead_letter = dead_letter_id(system, "charge")
    with TestClient(create_app(cut_off), raise_server_exceptions=False) as client:
        assert_error(client.post(f"/api/dead-letters/{dead_letter}/requeue", headers=WRITE), 503, "broker_unavailable")
    row = get_dead_letter(system.database, dead_letter)
    assert (row["requeued_as"], row["resolved"]) == (None, False)


def test_delete_removes_the_row(system: System, client: TestClient) -> None:
    dead_letter = dead_letter_id(system, "charge")
    assert client.delete(f"/api/dead-letters/{dead_letter}", headers=WRITE).status_code == 204
    assert_error(client.get(f"/api/dead-letters/{dead_letter}", headers=READ), 404, "not_found")
    assert_error(client.delete(f"/api/dead-letters/{dead_letter}", headers=WRITE), 404, "not_found")


def test_jobs_are_listed_and_shown_by_message_id(shared_system: System, shared_client: TestClient) -> None:
    failed = shared_client.get("/api/jobs", params={"status": "failed", "queue": "mail"}, headers=READ).json()
    assert failed["total"] == 3 and {job["actor_name"] for job in failed["jobs"]} == {"send_welcome"}
    one = failed["jobs"][0]
    assert shared_client.get(f"/api/jobs/{one['message_id']}", headers=READ).json() == one
    assert get_job(shared_system.database, one["message_id"])["status"] == "failed"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/dead-letters/abc", None),
        ("GET", "/api/dead-letters/0", None),
        ("GET", f"/api/dead-letters/{2**70}", None),
        ("GET", "/api/dead-letters?limit=0", None),
        ("GET", "/api/dead-letters?kind=bogus", None),
        ("GET", "/api/dead-letters?since=yesterday", None),
        ("GET", "/api/dead-letters?since=12x", None),
        ("GET", "/api/dead-letters?queue=a%00b", None),
        ("GET", "/api/jobs?status=lost", None),
        ("PATCH", "/api/dead-letters/1", {"notes": "who?"}),
        ("PATCH", "/api/dead-letters/1", {"by": "ada", "colour": "red"}),
        ("PATCH", "/api/dead-letters/1", "not json"),
        ("POST", "/api/dead-letters/requeue", {"limit": -1}),
        # A JSON body is taken as typed: no true for 1, "5" for 5, or 1 for true (schemathesis found the first).
        ("POST", "/api/dead-letters/requeue", {"limit": True}),
        ("POST", "/api/dead-letters/requeue", {"limit": "5"}),
        ("POST", "/api/dead-letters/requeue", {"dry_run": 1}),
        ("PATCH", "/api/dead-letters/1", {"by": "ada", "resolved": 1}),
    ],
)
def test_bad_input_gets_a_json_4xx_error(shared_client: TestClient, method: str, path: str, body: object) -> None:
    if isinstance(body, str):
        response = shared_client.request(
            method, path, content=body, headers={**WRITE, "Content-Type": "application/json"}
        )
    else:
        response = shared_client.request(method, path, json=body, headers=WRITE)
    assert_error(response, 422, "invalid_request")


def test_unknown_routes_and_methods_get_the_same_json_error_shape(shared_client: TestClient) -> None:
    assert_error(shared_client.get("/api/nothing-here", headers=READ), 404, "not_found")
    assert_error(shared_client.put("/api/dead-letters/1", headers=WRITE), 405, "method_not_allowed")


@pytest.fixture(params=["sqlite", "postgresql"])
def fuzzed_client(request: pytest.FixtureRequest, migrated_template: Path, tmp_path: Path) -> Iterator[TestClient]:
    """On PostgreSQL too, whose limits (64-bit ids, no NUL in text) differ from SQLite's. Its database is
    this test's own: fuzzing deletes and requeues whatever it finds."""
    database_url = None
    if request.param == "postgresql":
        name = f"rj_admin_{uuid.uuid4().hex[:12]}"
        database_url = harness.create_postgres_database(name)
        request.addfinalizer(lambda: harness.drop_postgres_database(name))
        result = run_ops({"DATABASE_URL": database_url, "BROKER_URL": harness.REDIS_TEST_URL}, "db", "upgrade")
        assert result.returncode == 0, result.stderr
    with (
        running_system(migrated_template, tmp_path, database_url=database_url) as system,
        TestClient(create_app(system), raise_server_exceptions=False) as client,
    ):
        yield client


def test_the_api_keeps_to_its_openapi_document_under_fuzzing(fuzzed_client: TestClient) -> None:
    """No 5xx, and every response (status, content type, body, headers) as the document says, for valid
    and invalid requests to every operation. (Hypothesis is driven directly: schemathesis' lazy pytest
    loader does not work with pytest 9.2.)"""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_client.app, headers=WRITE)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 12
    for operation in operations:
        takes_input = len(operation.path_parameters) + len(operation.query) + len(operation.body) > 0
        # An operation without parameters or body has no invalid request to make (the token is fixed).
        modes = ["positive", "negative"] if takes_input else ["positive"]
        for mode in map(schemathesis.GenerationMode, modes):

            @given(case=operation.as_strategy(generation_mode=mode, headers=WRITE))  # a valid token: never fuzzed
            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def keeps_to_the_document(case) -> None:
                case.call_and_validate(headers=WRITE)

            try:
                keeps_to_the_document()
            except Unsatisfiable:
                # A string path parameter leaves few invalid requests that survive URL encoding;
                # hypothesis sometimes finds none. That is no finding about the API.
                if mode != schemathesis.GenerationMode.NEGATIVE:
                    raise
                print(f"no invalid request generated for {operation.label}")
            except BaseException as error:
                error.add_note(f"while fuzzing {operation.label} with {mode} data")
                raise


# ---- python -m ops serve ------------------------------------------------------------------------


def test_serve_refuses_to_start_without_tokens_unless_dev_on_loopback(
    migrated_template: Path, tmp_path: Path, redis_namespace: str
) -> None:
    shutil.copyfile(migrated_template, tmp_path / "jobs.sqlite3")
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
        "BROKER_URL": harness.REDIS_TEST_URL,
        "REDIS_NAMESPACE": redis_namespace,
    }
    refused = run_ops(env, "serve")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines() == [refused.stderr.strip()] and "ADMIN_TOKENS" in refused.stderr
    exposed = run_ops(env, "serve", "--dev", "--bind", "0.0.0.0")
    assert exposed.returncode == 2 and "127.0.0.1" in exposed.stderr and "Traceback" not in exposed.stderr
    weak = run_ops({**env, "ADMIN_TOKENS": "short"}, "serve")
    assert weak.returncode == 2 and "ADMIN_TOKENS" in weak.stderr and "Traceback" not in weak.stderr

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ops", "serve", "--dev", "--port", str(port)],
        env=process_env(env),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), timeout_s=30, what="the dev server")
        session = httpx.get(f"http://127.0.0.1:{port}/api/session").json()  # no token needed in dev mode
        assert session == {"role": "read-write", "dev_mode": True, "requeue_max_per_call": 100}
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    # uvicorn shuts down cleanly, then re-raises the signal so the exit status says what stopped it.
    assert server.returncode == -signal.SIGTERM and "Application shutdown complete" in stderr
    assert "WITHOUT authentication" in stderr


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
