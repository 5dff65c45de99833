"""The deployment files agree with the settings: queues, replicas, grace periods and time limits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from actors.settings import Settings

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
        "resilient-jobs-settings", "resilient-jobs-urls",
    ]  # fmt: skip


def test_the_systemd_unit_waits_longer_than_its_workers_grace(settings: Settings) -> None:
    unit = (DEPLOY / "systemd" / "resilient-workers@.service").read_text()
    grace_s = float(re.search(r"--grace (\d+)", unit).group(1))
    stop_s = float(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE).group(1))
    assert settings.regular_time_limit_ms / 1000 <= grace_s < stop_s
    assert "python -m ops workers" in unit and "Restart=on-failure" in unit
