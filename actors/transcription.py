"""transcribe: a recording, split into segments, each segment's text stored with its checkpoint.

1. ``transcribe.send(meeting_id, audio_uri)`` reads the WAV header to route the job: recordings
   longer than LARGE_THRESHOLD_MS go to ``transcription-large`` with the long time limit.
2. The worker loads the recording (converted to 16 kHz mono) and cuts it into segments of
   TRANSCRIPTION_SEGMENT_MS (the length is saved in the checkpoint, so a resumed job keeps the
   segmentation it started with even if the setting changes).
3. Each segment is transcribed, then written to ``transcript_segments`` in the same transaction
   as the checkpoint that records it; a killed or interrupted job resumes after the last one.
4. With ``callback_url``, a ``transcript.ready`` webhook is sent once the transcript is complete
   (once per meeting: its idempotency key is the meeting).
"""

from __future__ import annotations

import logging
from functools import cache

import dramatiq
from sqlalchemy import insert

from actors.audio import AudioUnreadable, open_recording, wav_duration_ms
from actors.engines import SpeechEngine, engine_from_name
from actors.notifications import notify_transcript_ready
from actors.system import current_system
from actors.tables import transcript_segments
from middleware.checkpoints import current_checkpoint
from middleware.errors import DuplicateJob
from middleware.metrics import count_transcribed_segment
from middleware.routing import RoutedActor

logger = logging.getLogger(__name__)

QUEUE = "transcription"


def _estimate_duration_ms(meeting_id: str, audio_uri: str, **_: object) -> int | None:
    # The sender may not see the file the workers see: an unreadable header routes the job to
    # the regular queue, and the worker reports the real error.
    try:
        return wav_duration_ms(audio_uri)
    except AudioUnreadable as error:
        logger.warning("Routing meeting %s as a regular job: %s", meeting_id, error)
        return None


def _meeting_checkpoint_key(meeting_id: str, audio_uri: str, **_: object) -> str:
    # One transcript per meeting: sending the same meeting again resumes or skips its work.
    return f"transcribe:{meeting_id}"


@cache
def _engine(name: str) -> SpeechEngine:
    return engine_from_name(name)


@dramatiq.actor(
    actor_class=RoutedActor,
    queue_name=QUEUE,
    estimate_duration_ms=_estimate_duration_ms,
    checkpointed=True,
    checkpoint_key=_meeting_checkpoint_key,
    notify_shutdown=True,
    max_retries=5,
)
def transcribe(
    meeting_id: str, audio_uri: str, *, segment_ms: int | None = None, callback_url: str | None = None
) -> None:
    settings = current_system().settings
    checkpoint = current_checkpoint()
    saved = checkpoint.position or {}
    segment_ms = saved.get("segment_ms") or segment_ms or settings.transcription_segment_ms
    next_idx = saved["idx"] + 1 if "idx" in saved else 0

    recording = open_recording(audio_uri)
    bounds = recording.segment_bounds(segment_ms)
    engine = _engine(settings.transcription_engine)
    logger.info(
        "Transcribing meeting %s: %d segments of %d ms, starting at segment %d.",
        meeting_id,
        len(bounds),
        segment_ms,
        next_idx,
    )
    for idx in range(next_idx, len(bounds)):
        start_ms, end_ms = bounds[idx]
        text = engine.transcribe(recording.pcm(start_ms, end_ms), sample_rate=recording.sample_rate)
        position = {"idx": idx, "segment_ms": segment_ms, "segments": len(bounds)}
        with checkpoint.saving(position, progress=(idx + 1) / len(bounds)) as connection:
            connection.execute(
                insert(transcript_segments).values(
                    meeting_id=meeting_id, idx=idx, start_ms=start_ms, end_ms=end_ms, text=text
                )
            )
        count_transcribed_segment((end_ms - start_ms) / 1000)
    if callback_url:
        _notify_once(meeting_id, callback_url)


def _notify_once(meeting_id: str, callback_url: str) -> None:
    try:
        notify_transcript_ready(meeting_id, callback_url)
    except DuplicateJob as duplicate:
        # A resumed or redelivered job that already sent its notification: once is enough.
        logger.info("Transcript-ready webhook for meeting %s was already sent (%s).", meeting_id, duplicate)
