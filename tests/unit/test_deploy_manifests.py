"""The deployment files agree with the settings: queues, replicas, grace periods and time limits."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from actors.settings import Settings
from ops.supervisor import EXIT_CRASH_LOOP
from ops.worker_profiles import LONG_JOBS, SHORT_JOBS

DEPLOY = Path(__file__).resolve().parents[2] / "ops" / "deploy"


def documents(name: str) -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()))


def deployments() -> list[dict]:
    """Every Deployment of every manifest (the maintenance workers sit beside the scheduler)."""
    return [
        document
        for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document and document["kind"] == "Deployment"
    ]


def served_queues(deployment: dict) -> list[str] | None:
    """The queues a Deployment's dramatiq workers serve; None for one that runs no worker."""
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    if command[0] != "dramatiq":
        return None
    assert "--queues" in command, f"{deployment['metadata']['name']} serves every queue; name them"
    return command[command.index("--queues") + 1 :]


def declared_queues() -> set[str]:
    """The queues the project's actors declare (importing them declares them), a routed actor's large
    queue included. Only actors of the ``actors`` package: other tests declare actors of their own on
    the same broker."""
    import actors

    ours = [actor for actor in actors.broker.actors.values() if actor.fn.__module__.split(".")[0] == "actors"]
    return {queue for actor in ours for queue in getattr(actor, "queue_names", (actor.queue_name,))}


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


def test_every_declared_queue_is_served_by_exactly_one_deployment_and_no_other_queue_is() -> None:
    served = Counter(
        queue for deployment in deployments() if (queues := served_queues(deployment)) is not None for queue in queues
    )
    declared = declared_queues()
    assert sorted(declared - set(served)) == [], "declared queues that no Deployment serves"
    assert sorted(set(served) - declared) == [], "Deployments serving queues no actor declares"
    assert sorted(queue for queue, count in served.items() if count > 1) == [], "queues served twice"


@pytest.mark.parametrize(("queue", "profile"), [("notifications", SHORT_JOBS), ("exports", LONG_JOBS)])
def test_the_other_queues_workers_follow_their_profile_and_their_grace_covers_the_time_limit(
    queue: str, profile: object
) -> None:
    import actors
    from middleware.routing import longest_time_limit_ms

    [deployment] = documents(f"workers-{queue}.yaml")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command = container["command"]
    environment = {variable["name"]: variable["value"] for variable in container.get("env", [])}
    assert command[command.index("--threads") + 1] == str(profile.threads)
    assert {**environment, **profile.environment()} == environment
    time_limit_s = max(
        longest_time_limit_ms(actors.broker, actor) // 1000
        for actor in actors.broker.actors.values()
        if actor.queue_name == queue
    )
    assert time_limit_s < pod["terminationGracePeriodSeconds"] <= time_limit_s + 60
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


@pytest.mark.parametrize("unit", ["resilient-workers@.service", "resilient-short-workers@.service"])
def test_a_systemd_unit_waits_longer_than_its_grace_and_does_not_restart_a_crash_loop(unit: str) -> None:
    text = (DEPLOY / "systemd" / unit).read_text()
    grace_s = float(re.search(r"--grace (\d+)", text).group(1))
    stop_s = float(re.search(r"^TimeoutStopSec=(\d+)$", text, re.MULTILINE).group(1))
    assert grace_s < stop_s
    # Every worker stopped in a crash loop: systemd restarting the supervisor would start the loop again.
    assert re.search(r"^RestartPreventExitStatus=(\d+)$", text, re.MULTILINE).group(1) == str(EXIT_CRASH_LOOP)


def test_the_short_jobs_unit_covers_the_webhooks_time_limit() -> None:
    from actors.notifications import TIME_LIMIT_MS

    text = (DEPLOY / "systemd" / "resilient-short-workers@.service").read_text()
    assert "--profile short" in text
    grace_s = float(re.search(r"--grace (\d+)", text).group(1))
    assert grace_s >= TIME_LIMIT_MS / 1000
