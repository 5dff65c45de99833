"""An app for the observability test: sends one of every kind of job, then serves its own metrics.

``python -m tests.observed_app WORK_DIR METRICS_PORT``: writes the message ids to
``WORK_DIR/sent.json`` and serves ``prometheus_client``'s default registry (where routing decisions
are counted, in the process that builds the messages) on 127.0.0.1:METRICS_PORT until its
standard input closes.
"""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path

from prometheus_client import start_http_server

from actors.transcription import transcribe
from tests import observed_actors as observed

SAMPLE_RATE = 16_000


def silent_wav(path: Path, *, seconds: int) -> Path:
    """A recording the echo engine can transcribe (it reports lengths, not words)."""
    with wave.open(str(path), "wb") as recording:
        recording.setnchannels(1)
        recording.setsampwidth(2)
        recording.setframerate(SAMPLE_RATE)
        recording.writeframes(b"\x00\x00" * SAMPLE_RATE * seconds)
    return path


def send_everything(work_dir: Path) -> dict[str, str]:
    def marker(name: str) -> str:
        return str(work_dir / name)

    return {
        "regular": transcribe.send("meeting-short", str(silent_wav(work_dir / "short.wav", seconds=3))).message_id,
        "large": transcribe.send("meeting-long", str(silent_wav(work_dir / "long.wav", seconds=8))).message_id,
        "recovered": observed.flaky.send(marker("flaky"), 1).message_id,
        "exhausted": observed.always_fails.send(marker("exhausted"), {"email": "ada@example.com"}, "pw").message_id,
        "fatal": observed.fails_fatally.send(marker("fatal"), "https://api.example/meetings/7").message_id,
        # Eight steps of 0.5 s with a 1 s time limit: handed back at its limit, resumed from its checkpoint.
        "stepped": observed.stepped.send_with_options(args=(marker("stepped"), 8, 0.5), time_limit=1_000).message_id,
        "delayed": observed.succeeds.send_with_options(args=(marker("delayed"),), delay=600_000).message_id,
        "doomed": observed.slow.send(marker("doomed"), 60).message_id,
        "backlog": observed.waits.send(marker("backlog")).message_id,
    }


def main(work_dir: str, metrics_port: str) -> int:
    sent = send_everything(Path(work_dir))
    server, _thread = start_http_server(int(metrics_port), addr="127.0.0.1")
    written = Path(work_dir) / "sent.json.partial"
    written.write_text(json.dumps(sent))
    written.replace(Path(work_dir) / "sent.json")  # whole or absent, for the test that polls for it
    sys.stdin.read()  # serve until the test closes our standard input
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
