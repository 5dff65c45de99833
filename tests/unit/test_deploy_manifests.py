"""The deployment files agree with the settings: queues, replicas, grace periods and time limits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from actors.settings import Settings
from ops.worker_profiles import LONG_JOBS

DEPLOY = Path(__file__).resolve().parents[2] / "ops" / "deploy"


def documents(name: str) -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()))


@pytest.fixture
def settings() -> Settings:
    [configmap, _secret] = documents("configmap.yaml")
    return Settings.from_env(configmap["data"])


@pytest.mark.parametrize(("queue", "limit"), [("transcription", "regular"), ("transcription-large", "large")])
def test_each_queue_has_two_workers_whose_grace_covers_its_time_limit(
    settings: Settings, queue: str, limit: str
) -> None:
    [deployment] = documents(f"workers-{queue}.yaml")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    time_limit_s = getattr(settings, f"{limit}_time_limit_ms") // 1000
    assert spec["replicas"] == 2
    assert container["command"][-2:] == ["--queues", queue] and "--processes" in container["command"]
    assert time_limit_s < pod["terminationGracePeriodSeconds"] <= time_limit_s + 60
    assert [ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]] == [
        "resilient-jobs-settings",
        "resilient-jobs-urls",
    ]


@pytest.mark.parametrize("queue", ["transcription", "transcription-large"])
def test_each_worker_has_a_liveness_probe_on_its_health_port(settings: Settings, queue: str) -> None:
    [deployment] = documents(f"workers-{queue}.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    probe = container["livenessProbe"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert probe["httpGet"]["path"] == "/healthz"
    assert ports[probe["httpGet"]["port"]] == settings.worker_health_port > 0
    # One worker process per pod: one port (process k would listen on the port + k).
    assert container["command"][container["command"].index("--processes") + 1] == "1"
    assert settings.worker_health_bind == "0.0.0.0", "the kubelet probes the pod's address, not its loopback"
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 60, "a healthy job may hold the GIL for seconds"


@pytest.mark.parametrize("queue", ["transcription", "transcription-large"])
def test_transcription_workers_use_the_long_jobs_prefetch(queue: str) -> None:
    [deployment] = documents(f"workers-{queue}.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    environment = {variable["name"]: variable["value"] for variable in container.get("env", [])}
    assert {**environment, **LONG_JOBS.environment()} == environment


def test_the_systemd_unit_waits_longer_than_its_workers_grace(settings: Settings) -> None:
    unit = (DEPLOY / "systemd" / "resilient-workers@.service").read_text()
    grace_s = float(re.search(r"--grace (\d+)", unit).group(1))
    stop_s = float(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE).group(1))
    assert settings.regular_time_limit_ms / 1000 <= grace_s < stop_s
    assert "python -m ops workers" in unit and "Restart=on-failure" in unit
