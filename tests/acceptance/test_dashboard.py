"""The dashboard in a real headless Chromium, against the real server, worker, Redis and SQLite.

1. A real worker fails three webhooks (the HTTP server answers 404): three fatal dead letters.
2. ``python -m ops serve`` runs in a subprocess; Debian's Chromium, driven by Playwright, logs in
   with a token, resolves one dead letter with notes, requeues another (the worker then runs it,
   and this time the server answers 200), and requeues the last through "requeue all matching"
   and its confirmation. The page and the database must both show each change.
3. The screenshots it takes are the operations guide's (docs/pages/images/screenshots/), rewritten with
   ``UPDATE_SCREENSHOTS=1 .venv/bin/python -m pytest tests/acceptance/test_dashboard.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import create_engine, select

from middleware.dead_letters import dead_letters
from middleware.job_status import job_status
from tests import harness
from tests.harness import ROOT, WorkerProcess, free_port, process_env, run_python, wait_until
from tests.http_sink import HttpSink
from tests.integration.test_admin_api import answers

TOKEN = "dashboard-test-token-0123456789"
#: Rewritten only on request (UPDATE_SCREENSHOTS=1), so that a test run leaves the checkout as it was.
GUIDE_SCREENSHOTS = ROOT / "docs" / "pages" / "images" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CUSTOMERS = ("ada@example.com", "grace@example.com", "alan@example.com")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make setup)")


@pytest.fixture
def env(sqlite_url: str, redis_namespace: str, tmp_path: Path) -> dict[str, str]:
    return {
        "BROKER_URL": harness.REDIS_TEST_URL,
        "REDIS_NAMESPACE": redis_namespace,
        "DATABASE_URL": sqlite_url,
        "STATE_DIR": str(tmp_path),
        "ADMIN_TOKENS": TOKEN,
        "WORKER_HEARTBEAT_INTERVAL_MS": "500",
    }


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink() as sink:
        yield sink


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(env, threads=1, log_path=tmp_path / "worker.log")
    worker.wait_ready()
    yield worker
    worker.stop()


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ops", "serve", "--port", str(port)],
        env=process_env(env),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{url}/healthz") or process.poll() is not None, timeout_s=30, what="the server")
        assert process.poll() is None, (tmp_path / "server.log").read_text()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def rows(env: dict[str, str], table, **where) -> list[dict]:
    engine = create_engine(env["DATABASE_URL"])
    query = select(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    with engine.connect() as connection:
        found = [dict(row._mapping) for row in connection.execute(query)]
    engine.dispose()
    return found


def fail_three_webhooks(env: dict[str, str], sink: HttpSink) -> None:
    sink.respond_with(404, 404, 404)  # afterwards the server answers 200
    code = "from actors.notifications import send_webhook\n" + "".join(
        f"send_webhook.send({sink.url(f'/customers/{index}')!r}, "
        f"{{'event': 'invoice.paid', 'email': {email!r}, 'token': 'tok_live_{index}f00d'}})\n"
        for index, email in enumerate(CUSTOMERS)
    )
    result = run_python(env, code)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(rows(env, dead_letters)) == 3, timeout_s=30, what="three dead letters")


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    directory = GUIDE_SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def screenshot(page: Page, directory: Path, name: str) -> None:
    """A full-page screenshot for the operations guide, with this machine's directories left out of the traceback
    (the screenshots are committed; the assertions above ran on the page as served)."""
    page.evaluate(
        """([prefixes, pane]) => { const node = document.querySelector(pane); if (node)
             for (const prefix of prefixes) node.textContent = node.textContent.replaceAll(prefix, ""); }""",
        [[f"{sys.prefix}/lib/python{sys.version_info.major}.{sys.version_info.minor}/", f"{ROOT}/"], "#dl-traceback"],
    )
    page.screenshot(path=directory / name, full_page=True)


def open_dead_letter(page: Page, dead_letter_id: int) -> None:
    page.click("#nav a[data-view=dead-letters]")
    page.click(f"#dead-table tr[data-dead-letter='{dead_letter_id}'] a >> text=Open")
    expect(page.locator("#dl-title")).to_contain_text(f"Dead letter {dead_letter_id}")


def test_an_operator_logs_in_resolves_and_requeues_dead_letters_and_sees_each_change(
    env: dict[str, str], sink: HttpSink, worker: WorkerProcess, server: str, browser: Browser, screenshots: Path
) -> None:
    fail_three_webhooks(env, sink)
    first, second, third = sorted(row["id"] for row in rows(env, dead_letters))
    page = browser.new_page(viewport={"width": 1280, "height": 800})

    # Logging in: a wrong token is refused on the page; the right one opens the overview.
    page.goto(server)
    page.fill("#login-token", "not-the-token-at-all-0000")
    page.fill("#login-name", "ada")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_have_text("That token is not valid.")
    page.fill("#login-token", TOKEN)
    page.click("#login-submit")
    expect(page.locator("#workers-table tbody tr[data-worker]")).to_have_count(1, timeout=15_000)
    expect(page.locator("#figure-dead")).to_have_text("3")
    expect(page.locator("#who")).to_contain_text("ada · read-write")

    # A dead letter's detail: traceback and payload, the customer's email and token redacted.
    open_dead_letter(page, third)
    expect(page.locator("#dl-traceback")).to_contain_text("FatalError")
    payload = page.locator("#dl-payload")
    expect(payload).to_contain_text('"email": "[redacted]"')
    assert not any(secret in page.content() for secret in (*CUSTOMERS, "tok_live_"))
    page.fill("#resolve-notes", "Customer 2 was deleted on purpose; nothing to send.")
    screenshot(page, screenshots, "dead-letter.png")

    # Resolve with notes: the page says so, and so does the database.
    page.click("#resolve-submit")
    expect(page.locator("#flash")).to_have_text(f"Dead letter {third} resolved by ada.")
    expect(page.locator("#dl-record dd[data-field=State]")).to_have_text("resolved by ada")
    [resolved] = rows(env, dead_letters, id=third)
    assert (resolved["resolved"], resolved["resolved_by"]) == (True, "ada")
    assert resolved["notes"] == "Customer 2 was deleted on purpose; nothing to send."

    # Requeue one: a new message; the worker runs it and the server now answers 200.
    open_dead_letter(page, second)
    page.click("#requeue-one")
    expect(page.locator("#flash")).to_contain_text(f"Dead letter {second} requeued as message")
    [requeued] = rows(env, dead_letters, id=second)
    new_message = requeued["requeued_as"]
    assert new_message and new_message in page.locator("#flash").inner_text()
    wait_until(
        lambda: rows(env, job_status, message_id=new_message, status="completed"),
        timeout_s=30,
        what="the requeued job to complete",
    )
    expect(page.locator("#dl-record dd[data-field=State]")).to_have_text(f"requeued as {new_message[:8]}")

    # The jobs view refreshes by itself: the requeued job shows as completed, its bar full.
    page.click("#nav a[data-view=jobs]")
    job_row = page.locator(f"#jobs-table tr[data-message-id='{new_message}']")
    expect(job_row.locator(".status")).to_have_text("completed", timeout=10_000)
    expect(job_row.locator("progress")).to_have_attribute("value", "100")
    screenshot(page, screenshots, "jobs.png")

    # Requeue all matching (the one left unresolved), after a confirmation.
    page.click("#nav a[data-view=dead-letters]")
    page.click("#requeue-matching")
    expect(page.locator("#confirm-text")).to_contain_text("Requeue 1 unresolved dead letter(s)")
    page.click("#confirm-ok")
    expect(page.locator("#flash")).to_have_text("1 dead letter(s) requeued.")
    [bulk] = rows(env, dead_letters, id=first)
    assert bulk["requeued_as"] is not None and bulk["resolved_by"] == "bulk requeue"
    expect(page.locator("#dead-table tbody")).to_contain_text("No dead letter matches.")
    page.select_option("#dead-filter select[name=resolved]", "")
    page.click("#dead-filter button[type=submit]")
    expect(page.locator("#dead-table tbody tr[data-dead-letter]")).to_have_count(3)
    expect(page.locator(f"#dead-table tr[data-dead-letter='{third}'] .state")).to_have_text("resolved by ada")
    screenshot(page, screenshots, "dead-letters.png")

    # The overview follows without a reload: no unresolved dead letter is left.
    page.click("#nav a[data-view=overview]")
    expect(page.locator("#figure-dead")).to_have_text("0")
    wait_until(lambda: len(rows(env, job_status, status="completed")) == 2, timeout_s=30, what="both requeues done")
    screenshot(page, screenshots, "overview.png")
    summary = httpx.get(f"{server}/api/health", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert summary["dead_letters_unresolved"] == 0, json.dumps(summary)
