"""Speech-to-text engines behind one small interface.

Engines take mono signed 16-bit little-endian PCM (what ``actors.audio.Recording.pcm`` returns)
and feed it to the recogniser in chunks of at most one second. The chunking matters: Dramatiq
stops an over-running or shutting-down job by raising an exception asynchronously in its thread
(TimeLimitExceeded, Shutdown), and Python can only deliver that between C calls. One call
decoding a whole segment would delay it by the full decoding time of the segment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = [
    "ENGINE_NAMES",
    "EchoEngine",
    "PocketSphinxEngine",
    "SpeechEngine",
    "engine_from_name",
    "pcm_chunks",
]

MAX_CHUNK_MS = 1000
_BYTES_PER_SAMPLE = 2


class SpeechEngine(Protocol):
    """Turns one span of mono s16le PCM into text ("" when nothing was said)."""

    def transcribe(self, pcm: bytes, *, sample_rate: int) -> str: ...


def pcm_chunks(pcm: bytes, *, sample_rate: int, chunk_ms: int = MAX_CHUNK_MS) -> list[memoryview]:
    """Consecutive slices of ``pcm`` of at most ``chunk_ms``, without copying, never splitting a sample.

    Validates eagerly (it is not a generator) so bad input fails before a decoder starts an utterance.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    _check_chunk_ms(chunk_ms)
    if len(pcm) % _BYTES_PER_SAMPLE:
        raise ValueError(f"PCM must be 16-bit samples, got an odd length of {len(pcm)} bytes")
    chunk_bytes = max(1, sample_rate * chunk_ms // 1000) * _BYTES_PER_SAMPLE
    view = memoryview(pcm)
    return [view[start : start + chunk_bytes] for start in range(0, len(view), chunk_bytes)]


def _check_chunk_ms(chunk_ms: int) -> None:
    if not 0 < chunk_ms <= MAX_CHUNK_MS:
        raise ValueError(f"chunk_ms must be between 1 and {MAX_CHUNK_MS}, got {chunk_ms}")


def _pcm_duration_ms(pcm: bytes, sample_rate: int) -> int:
    return len(pcm) // _BYTES_PER_SAMPLE * 1000 // sample_rate


class EchoEngine:
    """Deterministic stand-in for tests: reports the length of the audio instead of its words.

    ``chunk_delay_ms`` sleeps after each chunk, to simulate a slow engine (for time-limit and
    shutdown tests) while still giving interrupts a chance to land between chunks.
    """

    def __init__(self, *, chunk_ms: int = MAX_CHUNK_MS, chunk_delay_ms: int = 0) -> None:
        if chunk_delay_ms < 0:
            raise ValueError(f"chunk_delay_ms must not be negative, got {chunk_delay_ms}")
        _check_chunk_ms(chunk_ms)
        self.chunk_ms = chunk_ms
        self.chunk_delay_ms = chunk_delay_ms

    def transcribe(self, pcm: bytes, *, sample_rate: int) -> str:
        """Return "segment of N ms" for N milliseconds of audio."""
        for _chunk in pcm_chunks(pcm, sample_rate=sample_rate, chunk_ms=self.chunk_ms):
            if self.chunk_delay_ms:
                time.sleep(self.chunk_delay_ms / 1000)
        return f"segment of {_pcm_duration_ms(pcm, sample_rate)} ms"


def _default_decoder_factory(options: Mapping[str, Any]) -> Any:
    # Imported here so that processes using only the echo engine never load the C extension.
    from pocketsphinx import Decoder

    # The default hmm/lm/dict are the US English model bundled in the wheel: nothing to download.
    return Decoder(**{"loglevel": "FATAL", **options})


class PocketSphinxEngine:
    """CMU PocketSphinx 5 with its bundled US English model; 16 kHz input only.

    Each thread gets its own decoder, created on first use and kept: creating one loads the model
    (about half a second) and a decoder must not be used by two threads at once. Note that
    ``process_raw`` holds the GIL, so several threads in one process decode one at a time; run
    more worker processes, not more threads, to decode in parallel.

    Every call starts from the same cepstral mean (the decoder otherwise carries it over from the
    previous utterance), so a segment's text does not depend on which segments the thread decoded
    before it: a retried or resumed segment gets the same text.

    ``decoder_factory`` builds a decoder from ``decoder_options`` (a seam for tests and for other
    models: pass ``hmm``, ``lm``, ``dict`` options to use them instead of the bundled ones).
    """

    sample_rate = 16000

    def __init__(
        self,
        *,
        chunk_ms: int = MAX_CHUNK_MS,
        decoder_options: Mapping[str, Any] | None = None,
        decoder_factory: Callable[[Mapping[str, Any]], Any] = _default_decoder_factory,
    ) -> None:
        _check_chunk_ms(chunk_ms)
        self.chunk_ms = chunk_ms
        self._options = dict(decoder_options or {})
        self._factory = decoder_factory
        self._local = threading.local()

    def transcribe(self, pcm: bytes, *, sample_rate: int) -> str:
        """Decode one utterance; returns the words separated by spaces, "" for silence."""
        if sample_rate != self.sample_rate:
            raise ValueError(f"PocketSphinx's model needs {self.sample_rate} Hz audio, got {sample_rate} Hz")
        chunks = pcm_chunks(pcm, sample_rate=sample_rate, chunk_ms=self.chunk_ms)
        decoder, initial_cmn = self._decoder()
        try:
            decoder.set_cmn(initial_cmn)
            decoder.start_utt()
            for chunk in chunks:
                decoder.process_raw(chunk)
            decoder.end_utt()
        except BaseException:
            # Most likely an interrupt (time limit, shutdown) between chunks: the decoder is
            # mid-utterance and would refuse the next start_utt, so this thread gets a new one.
            self._local.__dict__.pop("decoder", None)
            raise
        hypothesis = decoder.hyp()
        return hypothesis.hypstr.strip() if hypothesis is not None else ""

    def _decoder(self) -> tuple[Any, str]:
        """This thread's decoder and the cepstral mean it started with."""
        state = getattr(self._local, "decoder", None)
        if state is None:
            decoder = self._factory(self._options)
            state = self._local.decoder = (decoder, decoder.get_cmn())
        return state


_ENGINES: dict[str, Callable[[], SpeechEngine]] = {
    "pocketsphinx": PocketSphinxEngine,
    "echo": EchoEngine,
}
ENGINE_NAMES = tuple(sorted(_ENGINES))


def engine_from_name(name: str) -> SpeechEngine:
    """A new engine by its settings name; create it once per process and reuse it."""
    try:
        factory = _ENGINES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown speech engine {name!r}; valid names: {', '.join(ENGINE_NAMES)}") from None
    return factory()
