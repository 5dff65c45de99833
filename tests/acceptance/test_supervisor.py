"""python -m ops workers: a dead worker process is restarted, and the others keep running; a worker
that crashes at every boot is stopped after WORKER_MAX_CRASHES tries, and says so everywhere."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from tests import harness
from tests.harness import run_ops, start_ops_workers, wait_until


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def worker_processes(namespace: str, master: int) -> list[int]:
    """A master's worker processes, as they registered for heartbeats (its other child is the heartbeat fork)."""
    registry = harness.redis_client().hgetall(f"{namespace}:__worker_processes__").values()
    pids = [identity.decode().rsplit(":", 2) for identity in registry]
    return [int(pid) for _, pid, master_pid in pids if int(master_pid) == master]


@pytest.mark.parametrize(("broker_env", "database_url"), [("redis", "sqlite")], indirect=True)
def test_a_killed_worker_is_restarted_and_its_sibling_is_untouched(
    broker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    health_port = _two_free_ports()
    env = {**broker_env, "DATABASE_URL": database_url, "WORKER_HEALTH_PORT": str(health_port)}
    log = (tmp_path / "supervisor.log").open("wb")
    supervisor = start_ops_workers(env, "--workers", "2", "--grace", "20", log=log)
    try:
        masters = wait_until(
            lambda: len(children(supervisor.pid)) == 2 and children(supervisor.pid),
            timeout_s=30,
            what="two dramatiq masters",
        )
        victim_master, sibling = masters
        # Each worker is a dramatiq command of its own, so each gets its own liveness port.
        for port in (health_port, health_port + 1):
            wait_until(lambda port=port: _alive(port), timeout_s=60, what=f"the liveness probe on port {port}")
        namespace = env["REDIS_NAMESPACE"]
        victim = wait_until(lambda: worker_processes(namespace, victim_master), timeout_s=60, what="a worker")[0]
        os.kill(victim, signal.SIGKILL)
        replaced = wait_until(
            lambda: (now := children(supervisor.pid)) and victim_master not in now and len(now) == 2 and now,
            timeout_s=60,
            what="the dead worker to be restarted",
        )
        assert sibling in replaced, "the other worker keeps running"
        assert supervisor.poll() is None
    finally:
        os.kill(supervisor.pid, signal.SIGTERM)
        code = supervisor.wait(timeout=60)
        log.close()
    output = (tmp_path / "supervisor.log").read_text()
    assert code == 0, output
    assert "exited with code 1" in output and "restarting it" in output
    assert children(supervisor.pid) == []


@pytest.mark.parametrize("broker_env", ["redis"], indirect=True)
def test_a_worker_that_crashes_at_every_boot_is_stopped_after_its_max_crashes(
    broker_env: dict[str, str], sqlite_url: str, tmp_path: Path
) -> None:
    env = {**broker_env, "DATABASE_URL": sqlite_url, "WORKER_MAX_CRASHES": "3", "WORKER_CRASH_WINDOW_MS": "60000"}
    with (tmp_path / "supervisor.log").open("wb") as log:
        supervisor = start_ops_workers(env, "--workers", "1", "--modules", "tests.crash_at_boot", log=log)
        try:
            code = supervisor.wait(timeout=60)
        finally:
            if supervisor.poll() is None:
                os.killpg(supervisor.pid, signal.SIGKILL)
                supervisor.wait()
    output = (tmp_path / "supervisor.log").read_text()
    assert code == 4, output  # EXIT_CRASH_LOOP: its only slot is stopped
    starts = re.findall(r"Worker 0 started \(pid (\d+)\)", output)
    assert len(starts) == 3, output
    assert output.count("; restarting it in") == 2
    [stop_line] = [line for line in output.splitlines() if "crash loop" in line and "Worker 0" in line]
    assert "Worker 0 is in a crash loop: it exited unexpectedly 3 times within 60 s, the last time (pid " in stop_line
    assert "exited with code 1 after" in stop_line and "not restarting it" in stop_line
    assert "Every worker is stopped in a crash loop; exiting with code 4." in output

    # The slot's row outlives its supervisor, so status and health keep saying what happened.
    host = socket.gethostname()
    status = run_ops(env, "workers", "status")
    assert status.returncode == 0, status.stderr
    [header, line] = status.stdout.splitlines()
    shown = dict(zip(header.split(), re.split(r"\s{2,}", line), strict=True))  # columns: 2 spaces apart at least
    assert shown.pop("LAST_EXIT_REASON").startswith("exited with code 1 after")
    assert shown == {
        "HOST": host,
        "SUPERVISOR": str(supervisor.pid),
        "SLOT": "0",
        "PID": starts[-1],
        "STATE": "stopped: crash loop (supervisor gone)",
        "UPTIME": "-",
        "RESTARTS": "2",
        "RSS": "-",
    }
    as_json = run_ops(env, "workers", "status", "--json")
    [row] = json.loads(as_json.stdout)
    assert {name: row[name] for name in ("host", "supervisor_pid", "slot", "restarts", "last_exit_code", "state")} == {
        "host": host,
        "supervisor_pid": supervisor.pid,
        "slot": 0,
        "restarts": 2,
        "last_exit_code": 1,
        "state": "stopped: crash loop",
    }
    assert (row["supervisor_running"], row["uptime_s"], row["rss_bytes"]) == (False, None, None)

    health = run_ops(env, "health")
    assert health.returncode == 1, health.stdout + health.stderr
    assert health.stdout.startswith(
        f"worker slot 0 on {host}: stopped in a crash loop (supervisor pid {supervisor.pid}, 2 restart(s)); "
        "its last run exited with code 1 after "
    ), health.stdout


def _two_free_ports() -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with socket.socket() as next_one:
            try:
                next_one.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def _alive(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
