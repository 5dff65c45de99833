"""RabbitMQ's consumer_timeout: a long checkpointed job hands its message back before it expires.

RabbitMQ closes the channel of a consumer that holds a delivery unacked longer than its
``consumer_timeout`` (30 min by default) and redelivers the message while the job still runs.
With RABBITMQ_CONSUMER_TIMEOUT_MS set to the server's value, a checkpointed job hands its message
back at its first checkpoint after 80 % of it, and the next delivery continues after that
checkpoint: no delivery is ever held past the timeout, no step runs twice, no attempt is spent.

RabbitMQ 3.10 (on this machine) has no per-queue or per-vhost consumer timeout, and ignores a
runtime change of the global one, so the test sets a short timeout on the workers' side only:
what it proves is that no delivery outlives it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import WorkerProcess, run_python, wait_until

TIMEOUT_MS = 2_500  # hand-back after 2 s
STEPS, STEP_S = 8, 0.75  # a 6 s job: three deliveries


@pytest.mark.parametrize(("broker_env", "database_url"), [("rabbitmq", "postgresql")], indirect=True)
def test_a_long_checkpointed_job_hands_its_message_back_before_the_consumer_timeout(
    broker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    env = {**broker_env, "DATABASE_URL": database_url, "RABBITMQ_CONSUMER_TIMEOUT_MS": str(TIMEOUT_MS)}
    workers = [
        WorkerProcess(env, log_path=tmp_path / f"worker-{n}.log", modules=("tests.chaos_actors",)) for n in range(2)
    ]
    try:
        for worker in workers:
            worker.wait_ready()
        marker = tmp_path / "steps"
        sent = run_python(
            env,
            f"from tests.chaos_actors import checkpointed_steps\n"
            f"checkpointed_steps.send({str(marker)!r}, {STEPS}, {STEP_S})",
        )
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: marker.exists() and "done" in marker.read_text(), timeout_s=60, what="the job to finish")
    finally:
        for worker in workers:
            worker.stop()

    lines = marker.read_text().splitlines()
    steps = [int(line.split()[1]) for line in lines if line.startswith("step")]
    starts = [int(line.split()[2]) for line in lines if line.startswith("start")]
    assert steps == list(range(STEPS)), f"every step once, in order: {lines}"
    assert len(starts) >= 3 and starts[0] == 0, f"handed back at least twice: {lines}"
    # Each delivery started right after the last step the previous one saved: none overlapped.
    assert all(start - 1 in steps[: steps.index(start)] for start in starts[1:]), lines
    events = [event for worker in workers for event in worker.events()]
    names = [event["event"] for event in events]
    assert names.count("checkpoint.handed_back") == len(starts) - 1
    assert names.count("job.interrupted") == len(starts) - 1
    assert "job.retry" not in names and "job.failed" not in names, "a hand-back spends no attempt"
    # At boot, each worker named the actors that could outlive the timeout: every one not checkpointed.
    log = workers[0].log()
    assert "Actor 'long_job' is not checkpointed and may run for up to 10 min" in log
    assert "Actor 'checkpointed_steps'" not in log and "Actor 'transcribe'" not in log
