"""The scheduler's Kubernetes manifest agrees with the code: replicas, command, queues, settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from actors.maintenance import QUEUE
from actors.settings import Settings

MANIFEST = Path(__file__).resolve().parents[2] / "ops" / "deploy" / "kubernetes" / "scheduler.yaml"


def test_two_scheduler_replicas_and_a_worker_for_the_maintenance_queue() -> None:
    scheduler, workers = yaml.safe_load_all(MANIFEST.read_text())
    [replica] = scheduler["spec"]["template"]["spec"]["containers"]
    assert scheduler["spec"]["replicas"] == 2 and replica["command"] == ["python", "-m", "scheduler"]
    settings = Settings.from_env({item["name"]: item["value"] for item in replica["env"]})
    assert replica["ports"] == [{"name": "metrics", "containerPort": settings.scheduler_metrics_port}]
    [worker] = workers["spec"]["template"]["spec"]["containers"]
    assert worker["command"][-2:] == ["--queues", QUEUE]
    for container in (replica, worker):
        assert [ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]] == [
            "resilient-jobs-settings",
            "resilient-jobs-urls",
        ]
