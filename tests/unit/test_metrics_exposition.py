"""The metrics endpoint's mechanics: dead processes' live gauges, the per-instance directory, the port."""

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
from prometheus_client import CollectorRegistry

from middleware.serving.metrics_directory import (
    MULTIPROC_VARIABLE,
    MetricsDirectoryError,
    instance_directory,
    instance_name,
    is_dramatiq_process,
    process_start_ticks,
    use_metrics_directory,
)
from middleware.serving.metrics_server import LiveProcessesCollector, MetricsPortTaken, MetricsServer, check_port_free

# A process of a worker deployment: one job in progress, three finished; it waits to be killed.
WORKER_PROCESS = """
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import Counter, Gauge
Gauge("running", "", ["queue_name"], multiprocess_mode="livesum").labels("q").inc()
Counter("finished", "", ["queue_name"]).labels("q").inc(3)
print("ready", flush=True)
sys.stdin.read()
"""


def samples(directory: Path) -> dict[str, float]:
    return {
        sample.name: sample.value for metric in LiveProcessesCollector(directory).collect() for sample in metric.samples
    }


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER_PROCESS, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_sigkilled_process_s_jobs_in_progress_disappear_and_its_totals_stay(
    tmp_path: Path, worker_process: subprocess.Popen
) -> None:
    assert samples(tmp_path) == {"running": 1.0, "finished_total": 3.0}
    os.kill(worker_process.pid, signal.SIGKILL)
    worker_process.wait()
    assert samples(tmp_path) == {"finished_total": 3.0}


def test_each_instance_gets_a_fresh_directory_and_stopped_instances_lose_theirs(tmp_path: Path) -> None:
    host = socket.gethostname()
    alive = tmp_path / instance_name(os.getpid())
    stopped = tmp_path / f"{host}-{_dead_pid()}-12345"
    reused_pid = tmp_path / f"{host}-{os.getpid()}-{process_start_ticks(os.getpid()) - 1}"  # an earlier process
    other_host = tmp_path / "another-host-1-1"
    for directory in (alive, stopped, reused_pid, other_host):
        directory.mkdir()
        (directory / "counter_1.db").write_bytes(b"")

    assert instance_directory(tmp_path, os.getpid()) == alive
    assert sorted(path.name for path in tmp_path.iterdir() if path.is_dir()) == sorted([alive.name, other_host.name])
    assert (alive / "counter_1.db").exists(), "a running instance's files are kept"


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_prometheus_client_imported_too_early_stops_the_process_with_the_reason(tmp_path: Path) -> None:
    # prometheus_client is imported in this test process already, in memory mode.
    with pytest.raises(MetricsDirectoryError, match="imported before the metrics directory was set"):
        use_metrics_directory(tmp_path / "metrics")
    assert os.environ.get(MULTIPROC_VARIABLE) != str(tmp_path / "metrics")


def test_only_processes_of_the_dramatiq_command_use_a_directory() -> None:
    assert not is_dramatiq_process()


def test_a_taken_port_is_refused_with_the_setting_to_change() -> None:
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        with pytest.raises(MetricsPortTaken, match=f"127.0.0.1:{port}: the port is taken.*METRICS_PORT"):
            check_port_free("127.0.0.1", port)
        with pytest.raises(MetricsPortTaken):
            MetricsServer(CollectorRegistry(), bind="127.0.0.1", port=port)


def test_worker_processes_checking_the_port_at_once_do_not_collide() -> None:
    with socket.socket() as sibling:  # another worker process of the same master, mid-check
        sibling.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sibling.bind(("127.0.0.1", 0))
        check_port_free("127.0.0.1", sibling.getsockname()[1])


def test_a_collector_that_fails_answers_503_in_one_line() -> None:
    class Unreachable:
        def collect(self) -> list:
            raise ConnectionError("the database did not answer")

    registry = CollectorRegistry()
    registry.register(Unreachable())
    server = MetricsServer(registry, bind="127.0.0.1", port=0)
    try:
        response = httpx.get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.shutdown()
    assert response.status_code == 503
    assert response.text == "metrics unavailable: ConnectionError: the database did not answer\n"
