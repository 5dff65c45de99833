"""The workers' metrics endpoint with real processes: a taken port stops the worker; the supervisor
serves all its workers on one port, and a killed worker's jobs in progress leave it while its totals stay."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import REDIS_TEST_URL, ROOT, WorkerProcess, free_port, process_env, run_python, wait_until


@pytest.fixture
def env(redis_namespace: str, sqlite_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "BROKER_URL": REDIS_TEST_URL,
        "REDIS_NAMESPACE": redis_namespace,
        "DATABASE_URL": sqlite_url,
        "STATE_DIR": str(tmp_path / "state"),
    }


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        yield other_program.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return sum(
        found
        for (sample, sample_labels), found in scraped.items()
        if sample == name and set(labels.items()) <= sample_labels
    )


def test_a_worker_whose_metrics_port_is_taken_stops_at_once_and_says_so(
    env: dict[str, str], taken_port: int, tmp_path: Path
) -> None:
    worker = WorkerProcess({**env, "METRICS_PORT": str(taken_port)}, processes=2, log_path=tmp_path / "worker.log")
    try:
        code = worker.process.wait(timeout=60)
    finally:
        worker.stop()  # on a timeout too: its worker processes must not outlive the test
    assert code == 2
    assert f"cannot serve metrics on 127.0.0.1:{taken_port}: the port is taken by another program" in worker.log()
    assert "Worker process is ready for action" not in worker.log(), "no message was taken"


def test_the_supervisor_serves_its_workers_on_one_port_and_forgets_a_killed_one_s_running_jobs(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    # A long liveness window: the killed worker's job stays unacked (not handed back) while we look.
    supervisor_env = {**env, "METRICS_PORT": str(port), "REDIS_HEARTBEAT_TIMEOUT_MS": "60000"}
    log = (tmp_path / "supervisor.log").open("wb")
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ops",
            "workers",
            "--workers",
            "2",
            "--modules",
            "tests.observed_actors",
            "--queues",
            "observed",
            "observed-doomed",
            "--grace",
            "10",
        ],
        env=process_env(supervisor_env),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        send(env, f"for n in range(6): a.succeeds.send({str(tmp_path / 'done')!r})")
        wait_until(
            lambda: value(scrape_or_empty(port), "jobs_completed_total", actor_name="succeeds") == 6,
            timeout_s=60,
            what="six jobs done, counted on one endpoint",
        )
        # Then one that runs long (sent after, so no worker holds the quick ones prefetched behind it).
        send(env, f"a.slow.send({str(tmp_path / 'slow')!r}, 120)")
        wait_until(
            lambda: value(scrape_or_empty(port), "dramatiq_messages_inprogress", actor_name="slow") == 1,
            timeout_s=30,
            what="the long job to be running",
        )
        [_, pid] = (tmp_path / "slow").read_text().split()
        os.kill(int(pid), signal.SIGKILL)  # the worker process running the slow job, as the OOM killer would
        wait_until(
            lambda: value(scrape_or_empty(port), "dramatiq_messages_inprogress", actor_name="slow") == 0,
            timeout_s=30,
            what="the killed worker's running job to leave the endpoint",
        )
        after = scrape(port)
        assert value(after, "jobs_completed_total", actor_name="succeeds") == 6, "the dead worker's totals stay"
        wait_until(
            lambda: "restarting it" in (tmp_path / "supervisor.log").read_text(),
            timeout_s=30,
            what="the supervisor to restart the killed worker",
        )
    finally:
        os.kill(supervisor.pid, signal.SIGTERM)
        supervisor.wait(timeout=60)
        log.close()


def send(env: dict[str, str], code: str) -> None:
    result = run_python(env, f"from tests import observed_actors as a\n{code}")
    assert result.returncode == 0, result.stderr


def scrape_or_empty(port: int) -> dict[tuple[str, frozenset], float]:
    try:
        return scrape(port)
    except httpx.TransportError:
        return {}  # the supervisor is still starting
