"""The metrics, dashboards and alert rules, proven against a real Prometheus server.

1. Real processes on Redis and SQLite: a worker deployment (two worker processes) serving its
   metrics on one port, a second worker that is SIGKILLed mid-job (its job is handed back to a
   queue nobody else serves), ``python -m ops exporter``, and an app that sends one of every kind
   of job (transcriptions regular and large, a retry, a retries-exhausted and a fatal failure, a
   checkpointed job past its time limit, a delayed message, a message for a queue nobody serves)
   and serves its own metrics; a ``worker_slots`` row of a slot stopped in a crash loop.
2. Debian's ``prometheus`` scrapes the three every second and evaluates ``ops/prometheus/alerts.yml``.
3. Every query of every panel of every dashboard in ``ops/grafana`` and every alert expression goes
   through Prometheus's HTTP API: each panel must return samples carrying its legend's labels, each
   metric an alert reads must exist, and each alert expression must select exactly what this system
   state calls for.

``promtool check rules`` and ``promtool test rules`` (the alerts' unit tests) run here too.
With ``RENDER_PANEL_PNG=path``, the test also plots one panel's series from Prometheus to that PNG.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from middleware.job_status import job_status
from middleware.storage.database import Database
from middleware.storage.worker_slots import CRASH_LOOP, RUNNING, record_slots
from tests.harness import REDIS_TEST_URL, ROOT, WorkerProcess, free_port, process_env, redis_client, wait_until

GRAFANA = ROOT / "ops" / "grafana"
RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "ops" / "prometheus" / "alerts.test.yml"
#: Grafana's variables, as Grafana would fill them in over this short test.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s", "$queue": ".*"}
#: What each alert expression selects in the state this test builds (its "for" aside).
EXPECTED_ALERT_SELECTIONS = {
    # On "observed": 1 fatal of 4 finished jobs (flaky and stepped completed, one exhausted, one fatal).
    "JobsFatalErrorRateHigh": [{"queue_name": "observed"}],
    # The backlog queue has no worker; the doomed queue's only worker was SIGKILLed.
    "JobsWaitingWithNoLiveWorker": [
        {"queue_name": "observed-backlog", "state": "waiting"},
        {"queue_name": "observed-doomed", "state": "waiting"},
    ],
    "JobsOldestWaitingMessageTooOld": [],  # the oldest has waited seconds, not 5 minutes
    "JobsDeadLettersGrowing": [{"queue_name": "observed"}],  # 0, then 2 unresolved
    "JobsWorkerIdleWhileWorkWaits": [],  # the live workers serve no queue with work waiting
    "JobsWorkerHeartbeatStale": [],  # the killed worker has been silent for seconds, not 30 s
    # The row of a slot a supervisor stopped in a crash loop (written as ops/supervisor.py does).
    "JobsWorkerCrashLoop": [{"host": "crashed-host", "state": "crash_loop"}],
    "JobsHardTimeLimitKills": [],  # no job of this test outlives its time limit
}
OUR_METRIC = re.compile(r"\b((?:jobs|dramatiq)_[a-z_]+)(\{[^}]*\})?")


def promtool(*args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("promtool")
    assert executable, "promtool is missing: install Debian's prometheus package (make setup does)"
    return subprocess.run([executable, *args], cwd=RULES.parent, capture_output=True, text=True, check=False)


def test_the_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_the_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


class Prometheus:
    """A real Prometheus server on loopback, scraping ``targets`` (job name -> port) every second."""

    def __init__(self, work_dir: Path, targets: dict[str, int]) -> None:
        executable = shutil.which("prometheus")
        assert executable, "prometheus is missing: install Debian's prometheus package (make setup does)"
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for job, port in targets.items()
            ],
        }
        (work_dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self._log = (work_dir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                executable,
                f"--config.file={work_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={work_dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        self.started_at = time.time()
        wait_until(self._ready, timeout_s=30, what="Prometheus to start")

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"prometheus exited: {Path(self._log.name).read_text()}"
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        answer = self.http.get(f"/api/v1/{path}", params=params).json()
        assert answer["status"] == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def samples(self, expr: str) -> list[dict[str, Any]]:
        return self.query(expr)["result"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.http.close()
        self._log.close()


class App:
    """``tests.observed_app``: sends the jobs, then serves its metrics until stopped."""

    def __init__(self, env: dict[str, str], work_dir: Path, metrics_port: int) -> None:
        self.work_dir = work_dir
        self._log = (work_dir / "app.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.observed_app", str(work_dir), str(metrics_port)],
            env=process_env(env),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def sent(self) -> dict[str, str]:
        path = self.work_dir / "sent.json"

        def written() -> bool:
            assert self.process.poll() is None, (self.work_dir / "app.log").read_text()
            return path.exists()

        wait_until(written, timeout_s=60, what="the app to send its jobs")
        return json.loads(path.read_text())

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self._log.close()


def grafana_targets() -> list[tuple[str, str, dict[str, Any]]]:
    """(dashboard file, panel title, target) of every query of every panel."""
    found = []
    for path in sorted(GRAFANA.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            found += [(path.name, panel["title"], target) for target in panel["targets"]]
    return found


def alert_rules() -> list[dict[str, Any]]:
    import yaml

    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def with_grafana_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr}"
    return expr


def status_of(database_url: str, message_ids: list[str]) -> dict[str, str]:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(job_status.c.message_id, job_status.c.status).where(job_status.c.message_id.in_(message_ids))
        )
        statuses = {message_id: status for message_id, status in rows}
    engine.dispose()
    return statuses


@pytest.fixture
def env(redis_namespace: str, sqlite_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "BROKER_URL": REDIS_TEST_URL,
        "REDIS_NAMESPACE": redis_namespace,
        "DATABASE_URL": sqlite_url,
        "STATE_DIR": str(tmp_path / "state"),
        "TRANSCRIPTION_ENGINE": "echo",
        "TRANSCRIPTION_SEGMENT_MS": "1000",
        "LARGE_THRESHOLD_MS": "6000",
        "REDIS_HEARTBEAT_TIMEOUT_MS": "2000",
        "WORKER_HEARTBEAT_INTERVAL_MS": "500",
        "WORKER_STALE_AFTER_MS": "3000",
    }


@pytest.fixture
def stack(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Prometheus, the worker deployment, the worker to be killed, the ops exporter; stopped afterwards."""
    ports = {"workers": free_port(), "ops": free_port(), "app": free_port()}
    prometheus = Prometheus(tmp_path, ports)
    workers = WorkerProcess(
        {**env, "METRICS_PORT": str(ports["workers"])},
        processes=2,
        threads=2,
        log_path=tmp_path / "workers.log",
        queues=["transcription", "transcription-large", "observed"],
        modules=("tests.observed_actors",),
    )
    doomed = WorkerProcess(
        env, queues=["observed-doomed"], log_path=tmp_path / "doomed.log", modules=("tests.observed_actors",)
    )
    exporter = subprocess.Popen(
        [sys.executable, "-m", "ops", "exporter"],
        env=process_env({**env, "OPS_METRICS_PORT": str(ports["ops"])}),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "exporter.log").open("wb"),
    )
    try:
        yield {"prometheus": prometheus, "workers": workers, "doomed": doomed, "ports": ports}
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)
        for worker in (workers, doomed):
            worker.stop()
        prometheus.stop()


def test_every_dashboard_query_and_alert_works_on_real_data(
    env: dict[str, str], stack: dict[str, Any], tmp_path: Path
) -> None:
    prometheus: Prometheus = stack["prometheus"]
    workers: WorkerProcess = stack["workers"]
    doomed: WorkerProcess = stack["doomed"]
    workers.wait_ready()
    doomed.wait_ready()
    _record_a_crash_loop(env["DATABASE_URL"])
    # Counters start at 0 before any job, and the exporter sees the workers' queue: every increase
    # that follows is visible to rate() and delta().
    wait_until(
        lambda: (
            prometheus.samples('jobs_completed_total{job="workers", queue_name="observed"}')
            and prometheus.samples('jobs_dead_letters_unresolved{queue_name="observed"}')
        ),
        timeout_s=30,
        what="Prometheus to scrape the workers and the exporter",
    )

    app = App(env, tmp_path, stack["ports"]["app"])
    try:
        sent = app.sent()
        marker = tmp_path / "doomed"
        wait_until(
            lambda: marker.exists() and "start" in marker.read_text(),
            timeout_s=30,
            what="the doomed worker to start its job",
        )
        doomed.kill_worker_child()
        doomed_queue = f"{env['REDIS_NAMESPACE']}:observed-doomed"
        wait_until(
            lambda: redis_client().llen(doomed_queue) == 1,
            timeout_s=30,
            what="the killed worker's job to be handed back",
        )
        finished = {"regular", "large", "recovered", "exhausted", "fatal", "stepped"}
        expected = {name: "failed" if name in ("exhausted", "fatal") else "completed" for name in finished}
        wait_until(
            lambda: (
                {name: status_of(env["DATABASE_URL"], [sent[name]]).get(sent[name]) for name in finished} == expected
            ),
            timeout_s=60,
            what="every job to finish",
        )
        assert "start 0" in (tmp_path / "stepped").read_text().splitlines()[0]
        assert len((tmp_path / "stepped").read_text().splitlines()) >= 2, "the time limit handed the job back"

        panels = grafana_targets()
        assert len({(name, title) for name, title, _ in panels}) == 39
        # Poll until every panel has data (the last scrapes may still be on their way), then check each.
        _wait_for_every_panel(prometheus, panels)
        wait_until(
            lambda: all(
                _alert_selection(prometheus, rule) == EXPECTED_ALERT_SELECTIONS[rule["alert"]] for rule in alert_rules()
            ),
            timeout_s=30,
            what="the alert expressions to select what this state calls for",
        )
        for dashboard, title, target in panels:
            _check_panel_query(prometheus, f"{dashboard}: {title}", target)
        for rule in alert_rules():
            _check_alert_rule(prometheus, rule)
        _check_rules_evaluated(prometheus)
        if os.environ.get("RENDER_PANEL_PNG"):
            _render_panel(prometheus, Path(os.environ["RENDER_PANEL_PNG"]))
    finally:
        app.stop()
    assert workers.process.poll() is None, "the worker deployment ran throughout"


def _record_a_crash_loop(database_url: str) -> None:
    """A supervisor's two slots, one running and one stopped in a crash loop, as ops/supervisor.py records them."""
    now = datetime.now(UTC)
    database = Database(database_url)
    rows = [
        {
            "host": "crashed-host",
            "supervisor_pid": 4242,
            "slot": slot,
            "queues": ["observed"],
            "pid": 5000 + slot,
            "started_at": now,
            "restarts": restarts,
            "last_exit_code": code,
            "last_exit_reason": reason,
            "state": state,
            "updated_at": now,
        }
        for slot, state, restarts, code, reason in [
            (0, RUNNING, 0, None, None),
            (1, CRASH_LOOP, 4, 1, "exited with code 1 after 0.4 s"),
        ]
    ]
    record_slots(database, rows)
    database.dispose()


def _wait_for_every_panel(prometheus: Prometheus, panels: list[tuple[str, str, dict[str, Any]]]) -> None:
    def empty() -> list[str]:
        return [
            f"{name}: {title}: {target['expr']}"
            for name, title, target in panels
            if not prometheus.samples(with_grafana_variables(target["expr"]))
        ]

    try:
        wait_until(lambda: not empty(), timeout_s=30, what="every panel to have data")
    except AssertionError:
        raise AssertionError("panels without data:\n" + "\n".join(empty())) from None


def _check_panel_query(prometheus: Prometheus, where: str, target: dict[str, Any]) -> None:
    data = prometheus.query(with_grafana_variables(target["expr"]))
    assert data["resultType"] == "vector", f"{where}: {data['resultType']}"
    samples = data["result"]
    assert samples, f"{where}: no data for {target['expr']}"
    legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
    for sample in samples:
        assert legend_labels <= set(sample["metric"]), f"{where}: {sample['metric']} lacks {legend_labels}"
    values = [float(sample["value"][1]) for sample in samples]
    assert any(math.isfinite(value) for value in values), f"{where}: only {values}"


def _alert_selection(prometheus: Prometheus, rule: dict[str, Any]) -> list[dict[str, str]]:
    data = prometheus.query(rule["expr"])
    assert data["resultType"] == "vector", f"{rule['alert']}: {data['resultType']}"
    selected = [
        {key: value for key, value in sample["metric"].items() if key not in ("__name__", "job", "instance")}
        for sample in data["result"]
    ]
    return sorted(selected, key=lambda labels: sorted(labels.items()))


def _check_alert_rule(prometheus: Prometheus, rule: dict[str, Any]) -> None:
    assert _alert_selection(prometheus, rule) == EXPECTED_ALERT_SELECTIONS[rule["alert"]], rule["alert"]
    for name, matchers in OUR_METRIC.findall(rule["expr"]):
        assert prometheus.samples(f"count({name}{matchers})"), f"{rule['alert']} reads {name}{matchers}: no such series"


def _check_rules_evaluated(prometheus: Prometheus) -> None:
    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert sorted(rule["name"] for rule in rules) == sorted(EXPECTED_ALERT_SELECTIONS)
    assert all(rule["health"] == "ok" for rule in rules), [(rule["name"], rule.get("lastError")) for rule in rules]
    alerts = prometheus.api("alerts")["alerts"]
    firing = {
        (alert["labels"]["alertname"], alert["labels"].get("queue_name"))
        for alert in alerts
        if alert["state"] == "firing"
    }
    assert ("JobsDeadLettersGrowing", "observed") in firing


def _render_panel(prometheus: Prometheus, path: Path) -> None:
    """Plot "Messages by state" (queues and workers dashboard) from the range API: this run's real series,
    one small chart per queue that held any message."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    [target] = next(
        panel["targets"]
        for panel in json.loads((GRAFANA / "queues-workers.json").read_text())["panels"]
        if panel["title"] == "Messages by state"
    )
    start, end = prometheus.started_at, time.time()
    data = prometheus.api("query_range", query=with_grafana_variables(target["expr"]), start=start, end=end, step=1)
    by_queue: dict[str, list[dict[str, Any]]] = {}
    for series in data["result"]:
        if any(float(value) for _, value in series["values"]):
            by_queue.setdefault(series["metric"]["queue_name"], []).append(series)
    figure, axes = plt.subplots(
        len(by_queue), 1, figsize=(9, 1.6 * len(by_queue) + 0.8), dpi=110, sharex=True, squeeze=False
    )
    for row, (queue_name, queue_series) in zip(axes[:, 0], sorted(by_queue.items()), strict=True):
        for series in sorted(queue_series, key=lambda series: series["metric"]["state"]):
            times = [stamp - start for stamp, _ in series["values"]]
            row.step(
                times, [float(value) for _, value in series["values"]], where="post", label=series["metric"]["state"]
            )
        row.set_ylabel(queue_name, rotation=0, ha="right", va="center")
        row.set_ylim(bottom=0)
        row.legend(fontsize="x-small", loc="upper left", ncols=4)
        row.grid(alpha=0.3)
    axes[0, 0].set_title("Messages by state, per queue: the dashboard panel's query over one test run")
    axes[-1, 0].set_xlabel("seconds since Prometheus started")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
