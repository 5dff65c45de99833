"""make demo: the main job on the embedded default, a SIGKILL mid-job, and the resumed transcript.

1. Make three spoken recordings with espeak-ng; the longest lands on the large queue (the demo
   sets a low threshold).
2. Create the schema, start one worker for ``transcription`` and one for ``transcription-large``.
3. Send the jobs and show their progress.
4. SIGKILL the large worker once two segments of the long recording are stored, start another.
5. Print the transcripts and the segment the killed job resumed at; stop everything it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / "var" / "demo"
DEMO_SETTINGS = {
    "STATE_DIR": str(STATE_DIR),
    "TRANSCRIPTION_ENGINE": "pocketsphinx",
    "TRANSCRIPTION_SEGMENT_MS": "6000",
    # Anything over a minute is "large" in the demo (40 minutes by default).
    "LARGE_THRESHOLD_MS": "60000",
}
RECORDINGS = {"standup-monday": 20, "design-review": 25, "all-hands": 80}
DEADLINE_S = 150


def main() -> int:
    for variable in ("BROKER_URL", "DATABASE_URL"):
        os.environ.pop(variable, None)  # the demo runs on the embedded default, whatever the shell says
    os.environ.update(DEMO_SETTINGS)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    (STATE_DIR / "recordings").mkdir(parents=True)

    from ops.recordings import make_long_recording

    say(f"1. Making {len(RECORDINGS)} spoken recordings with espeak-ng in {STATE_DIR / 'recordings'}")
    recordings = {
        meeting: make_long_recording(STATE_DIR / "recordings" / f"{meeting}.wav", seconds=seconds)
        for meeting, seconds in RECORDINGS.items()
    }

    # Imported only now: importing actors configures this process from the settings above.
    from actors.embedded_redis import stop_embedded_redis
    from actors.schema import upgrade
    from actors.system import current_system
    from actors.transcription import transcribe

    system = current_system()
    upgrade(system.database)
    workers: list[Worker] = []
    try:
        say("2. Schema created; starting one worker per queue (embedded Redis, SQLite)")
        workers.append(Worker("transcription"))
        large = Worker("transcription-large")
        workers.append(large)
        for worker in workers:
            worker.wait_ready()

        say("3. Sending the jobs")
        for meeting, path in recordings.items():
            message = transcribe.send(meeting, str(path))
            say(f"   {meeting} ({RECORDINGS[meeting]} s) -> queue {message.queue_name}")

        progress = Progress(system.database, list(recordings))
        progress.watch_until(lambda: progress.stored("all-hands") >= 2, deadline_s=DEADLINE_S)
        killed = large.kill_child()
        killed_at_segment = progress.stored("all-hands")
        say(
            f"4. SIGKILL worker process {killed} while all-hands is mid-job "
            f"({killed_at_segment} segments stored); starting a new worker"
        )
        large.wait_exit()
        workers.append(Worker("transcription-large"))
        progress.watch_until(progress.all_completed, deadline_s=DEADLINE_S)

        say("5. Transcripts (pocketsphinx on synthetic speech: expect rough text)")
        progress.print_transcripts()
        resumed = progress.checkpoint("all-hands")
        say(
            f"The killed job resumed at segment {resumed.resumed_from['idx'] + 1} from its checkpoint "
            f"(not from zero): {resumed.resumes} resume, no segment lost or stored twice."
        )
        return 0
    finally:
        for worker in workers:
            worker.stop()
        stop_embedded_redis(STATE_DIR)
        say("Stopped the workers and the embedded Redis server; nothing is left running.")


class Worker:
    """One ``dramatiq actors`` command serving one queue, logging to the demo's state dir."""

    def __init__(self, queue: str) -> None:
        self.log_path = STATE_DIR / f"worker-{queue}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        dramatiq = Path(sys.executable).parent / "dramatiq"
        self.process = subprocess.Popen(
            [str(dramatiq), "actors", "--processes", "1", "--threads", "1", "--queues", queue],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while b"Worker process is ready for action" not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"a worker failed to start; see {self.log_path}")
            time.sleep(0.1)

    def kill_child(self) -> int:
        child = int(Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()[0])
        os.kill(child, signal.SIGKILL)
        return child

    def wait_exit(self) -> None:
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)  # the master only: it passes it on once
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


class Progress:
    """Reads the jobs' checkpoints and segments from the database and prints what changed."""

    def __init__(self, database, meetings: list[str]) -> None:
        self.database = database
        self.meetings = meetings
        self._shown: dict[str, str] = {}

    def stored(self, meeting: str) -> int:
        from sqlalchemy import func, select

        from actors.tables import transcript_segments

        query = select(func.count()).where(transcript_segments.c.meeting_id == meeting)
        with self.database.engine.connect() as connection:
            return connection.scalar(query)

    def checkpoint(self, meeting: str):
        from sqlalchemy import select

        from middleware.checkpoints import job_checkpoints

        query = select(job_checkpoints).where(job_checkpoints.c.key == f"transcribe:{meeting}")
        with self.database.engine.connect() as connection:
            return connection.execute(query).first()

    def all_completed(self) -> bool:
        return all((row := self.checkpoint(m)) is not None and row.completed_at for m in self.meetings)

    def watch_until(self, condition, *, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the demo did not get there within {deadline_s} s; see the logs in {STATE_DIR}")
            self._show_changes()
            time.sleep(0.25)
        self._show_changes()

    def _show_changes(self) -> None:
        for meeting in self.meetings:
            row = self.checkpoint(meeting)
            if row is None or row.position is None:
                continue
            done, total = row.position["idx"] + 1, row.position["segments"]
            bar = "#" * round(20 * done / total)
            line = f"   {meeting:<15} [{bar:<20}] {done:>2}/{total} segments"
            if row.completed_at is not None:
                line += "  done"
            if self._shown.get(meeting) != line:
                self._shown[meeting] = line
                say(line)

    def print_transcripts(self) -> None:
        from sqlalchemy import select

        from actors.tables import transcript_segments

        for meeting in self.meetings:
            query = select(transcript_segments).where(transcript_segments.c.meeting_id == meeting)
            with self.database.engine.connect() as connection:
                rows = list(connection.execute(query.order_by(transcript_segments.c.idx)))
            say(f"   {meeting}: segments {[row.idx for row in rows]}")
            for row in rows[:3]:
                say(f"     [{row.start_ms / 1000:5.1f}-{row.end_ms / 1000:5.1f} s] {row.text[:70]}")
            if len(rows) > 3:
                say(f"     ... {len(rows) - 3} more segments")


def say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
