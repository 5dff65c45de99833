"""actors.engines: the echo and PocketSphinx engines, and chunked feeding so interrupts can land."""

from __future__ import annotations

import ctypes
import pathlib
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from actors.audio import open_recording
from actors.engines import (
    EchoEngine,
    PocketSphinxEngine,
    SpeechEngine,
    engine_from_name,
    pcm_chunks,
)
from ops.recordings import make_long_recording, make_speech_wav

RATE = 16000
ONE_SECOND = b"\x00\x01" * RATE
NUMBERS = "one two three four five six seven eight nine ten"


def speech_pcm(tmp_path: pathlib.Path, text: str) -> bytes:
    recording = open_recording(str(make_speech_wav(tmp_path / "speech.wav", text, pad_to_ms=2000)))
    return recording.pcm(0, recording.duration_ms)


class SpyDecoder:
    """Wraps a real decoder and records the size of every process_raw call."""

    def __init__(self, decoder: Any, *, fail_on_call: int | None = None) -> None:
        self._decoder = decoder
        self._fail_on_call = fail_on_call
        self.chunk_sizes: list[int] = []

    def process_raw(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        self.chunk_sizes.append(len(data))
        if len(self.chunk_sizes) == self._fail_on_call:
            raise KeyboardInterrupt("simulated interrupt between chunks")
        return self._decoder.process_raw(data, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decoder, name)


class SpyFactory:
    def __init__(self, **spy_options: Any) -> None:
        self.spy_options = spy_options
        self.decoders: list[SpyDecoder] = []

    def __call__(self, options: Mapping[str, Any]) -> SpyDecoder:
        from pocketsphinx import Decoder

        spy = SpyDecoder(Decoder(loglevel="FATAL", **options), **self.spy_options)
        self.decoders.append(spy)
        return spy


@pytest.fixture(scope="module")
def sphinx() -> PocketSphinxEngine:
    # Shared: each decoder loads the model (about half a second and 80 MB).
    return PocketSphinxEngine()


# --- chunking and the echo engine ---------------------------------------------------------------


def test_chunks_are_at_most_one_second_and_cover_everything() -> None:
    pcm = ONE_SECOND * 2 + b"\x00\x02" * 100
    chunks = pcm_chunks(pcm, sample_rate=RATE)
    assert [len(chunk) for chunk in chunks] == [32000, 32000, 200]
    assert b"".join(chunks) == pcm


def test_chunk_length_above_one_second_is_refused() -> None:
    with pytest.raises(ValueError, match="chunk_ms"):
        pcm_chunks(ONE_SECOND, sample_rate=RATE, chunk_ms=1500)
    with pytest.raises(ValueError, match="chunk_ms"):
        PocketSphinxEngine(chunk_ms=0)


def test_odd_length_pcm_is_refused() -> None:
    with pytest.raises(ValueError, match="odd length"):
        EchoEngine().transcribe(ONE_SECOND + b"\x00", sample_rate=RATE)


def test_echo_engine_reports_the_duration() -> None:
    engine = EchoEngine()
    assert engine.transcribe(ONE_SECOND * 2 + ONE_SECOND[:16000], sample_rate=RATE) == "segment of 2500 ms"
    assert engine.transcribe(ONE_SECOND, sample_rate=8000) == "segment of 2000 ms"
    assert engine.transcribe(b"", sample_rate=RATE) == "segment of 0 ms"


def test_echo_engine_delay_is_per_chunk() -> None:
    started = time.monotonic()
    EchoEngine(chunk_delay_ms=50).transcribe(ONE_SECOND * 3, sample_rate=RATE)
    assert time.monotonic() - started >= 0.15


def test_engine_from_name() -> None:
    assert isinstance(engine_from_name("echo"), EchoEngine)
    assert isinstance(engine_from_name("pocketsphinx"), PocketSphinxEngine)
    assert isinstance(engine_from_name(" PocketSphinx "), PocketSphinxEngine)


def test_unknown_engine_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'whisper'.*echo, pocketsphinx"):
        engine_from_name("whisper")


def test_engines_satisfy_the_protocol() -> None:
    engines: list[SpeechEngine] = [EchoEngine(), PocketSphinxEngine()]
    assert all(callable(engine.transcribe) for engine in engines)


# --- PocketSphinx -------------------------------------------------------------------------------


def test_pocketsphinx_recognises_spoken_numbers(tmp_path: pathlib.Path, sphinx: PocketSphinxEngine) -> None:
    # Synthetic speech is hard for this model (about 60 % of words wrong), so ask for a few of the
    # ten words, not all of them; silence or a broken pipeline would give none.
    text = sphinx.transcribe(speech_pcm(tmp_path, NUMBERS), sample_rate=RATE)
    recognised = set(text.split()) & set(NUMBERS.split())
    assert len(recognised) >= 3, text


def test_pocketsphinx_hello_world(tmp_path: pathlib.Path, sphinx: PocketSphinxEngine) -> None:
    text = sphinx.transcribe(speech_pcm(tmp_path, "hello world one two three"), sample_rate=RATE)
    assert text and text == text.strip()
    assert set(text.split()) & {"hello", "world", "one", "two", "three"}, text


def test_pocketsphinx_silence_is_empty(sphinx: PocketSphinxEngine) -> None:
    assert sphinx.transcribe(b"\x00\x00" * RATE * 3, sample_rate=RATE) == ""
    assert sphinx.transcribe(b"", sample_rate=RATE) == ""


def test_pocketsphinx_needs_16k(sphinx: PocketSphinxEngine) -> None:
    with pytest.raises(ValueError, match="16000 Hz"):
        sphinx.transcribe(ONE_SECOND, sample_rate=8000)


def test_pocketsphinx_text_does_not_depend_on_earlier_calls(tmp_path: pathlib.Path, sphinx: PocketSphinxEngine) -> None:
    # A retried or resumed segment must come out the same, whatever the thread decoded before.
    numbers = speech_pcm(tmp_path, NUMBERS)
    first = sphinx.transcribe(numbers, sample_rate=RATE)
    sphinx.transcribe(speech_pcm(tmp_path, "good morning everyone welcome to the meeting"), sample_rate=RATE)
    assert sphinx.transcribe(numbers, sample_rate=RATE) == first


def test_five_seconds_are_fed_in_at_least_five_chunks(tmp_path: pathlib.Path) -> None:
    recording = open_recording(str(make_long_recording(tmp_path / "five.wav", seconds=5)))
    factory = SpyFactory()
    text = PocketSphinxEngine(decoder_factory=factory).transcribe(recording.pcm(0, 5000), sample_rate=RATE)
    assert text
    (spy,) = factory.decoders
    assert len(spy.chunk_sizes) >= 5
    assert max(spy.chunk_sizes) <= RATE * 2  # at most one second each
    assert sum(spy.chunk_sizes) == 5000 * 16 * 2


def test_one_decoder_per_thread_reused_across_calls() -> None:
    factory = SpyFactory()
    engine = PocketSphinxEngine(decoder_factory=factory)
    engine.transcribe(ONE_SECOND, sample_rate=RATE)
    engine.transcribe(ONE_SECOND, sample_rate=RATE)
    assert len(factory.decoders) == 1

    worker = threading.Thread(target=engine.transcribe, args=(ONE_SECOND,), kwargs={"sample_rate": RATE})
    worker.start()
    worker.join()
    assert len(factory.decoders) == 2
    assert len(factory.decoders[1].chunk_sizes) == 1


def test_interrupted_decoder_is_replaced() -> None:
    # An interrupt leaves the decoder mid-utterance; the next call must not trip over it.
    factory = SpyFactory(fail_on_call=2)
    engine = PocketSphinxEngine(decoder_factory=factory)
    with pytest.raises(KeyboardInterrupt):
        engine.transcribe(ONE_SECOND * 3, sample_rate=RATE)
    assert engine.transcribe(b"\x00\x00" * RATE, sample_rate=RATE) == ""
    assert len(factory.decoders) == 2


class Interrupted(Exception):
    """Stands in for Dramatiq's TimeLimitExceeded, raised the same way."""


def test_asynchronous_interrupt_lands_within_a_chunk(tmp_path: pathlib.Path, sphinx: PocketSphinxEngine) -> None:
    # Dramatiq interrupts a worker thread with PyThreadState_SetAsyncExc, which Python delivers only
    # between C calls: decoding 20 s of speech takes several seconds, but it must stop soon after.
    recording = open_recording(str(make_long_recording(tmp_path / "long.wav", seconds=20)))
    pcm = recording.pcm(0, recording.duration_ms)
    outcome: dict[str, Any] = {}

    def run() -> None:
        sphinx.transcribe(ONE_SECOND, sample_rate=RATE)  # create this thread's decoder first
        outcome["started"] = time.monotonic()
        try:
            outcome["text"] = sphinx.transcribe(pcm, sample_rate=RATE)
        except Interrupted:
            outcome["stopped"] = time.monotonic()

    worker = threading.Thread(target=run)
    worker.start()
    while "started" not in outcome and worker.is_alive():
        time.sleep(0.01)
    time.sleep(0.5)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(Interrupted))
    worker.join(timeout=60)
    assert "stopped" in outcome, "transcription ran to the end instead of being interrupted"
    # Timed from the start of decoding, not from sending: process_raw holds the GIL, so this
    # thread's own clock stalls while a chunk is decoded. Whole: ~8 s; chunked: ~1 s.
    assert outcome["stopped"] - outcome["started"] < 3.0
