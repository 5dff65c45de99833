"""actors.audio: URI resolution, header checks, and conversion to 16 kHz mono s16le."""

from __future__ import annotations

import pathlib
import subprocess
import wave

import numpy as np
import pytest

from actors.audio import AudioUnreadable, open_recording, resolve_audio_path, wav_duration_ms
from ops.recordings import make_speech_wav

PHRASE = "one two three four five six seven eight nine ten"


def write_tone(path: pathlib.Path, *, ms: int, rate: int = 16000, channels: int = 1) -> pathlib.Path:
    """A 440 Hz 16-bit tone of exactly ``ms`` milliseconds (when rate is a multiple of 1000)."""
    frames = ms * rate // 1000
    tone = (np.sin(2 * np.pi * 440 * np.arange(frames) / rate) * 8000).astype("<i2")
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(np.repeat(tone, channels).tobytes())
    return path


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def sox_reference(path: pathlib.Path) -> np.ndarray:
    """What sox makes of the file at 16 kHz mono 16-bit: an independent conversion to compare with."""
    raw = subprocess.run(
        ["sox", str(path), "-t", "raw", "-e", "signed", "-b", "16", "-r", "16000", "-c", "1", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return samples(raw)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


# --- resolve_audio_path -------------------------------------------------------------------------


def test_plain_path_is_taken_literally(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "100% done.wav"
    assert resolve_audio_path(str(path)) == path


def test_file_uri_is_percent_decoded(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "weekly meeting #3.wav"
    assert resolve_audio_path(path.as_uri()) == path
    assert "%20" in path.as_uri()


def test_file_uri_with_localhost(tmp_path: pathlib.Path) -> None:
    assert resolve_audio_path(f"file://localhost{tmp_path}/a%20b.wav") == tmp_path / "a b.wav"


@pytest.mark.parametrize("uri", ["http://example.com/a.wav", "https://x/a.wav", "s3://bucket/a.wav"])
def test_remote_schemes_are_refused(uri: str) -> None:
    with pytest.raises(AudioUnreadable, match=r"only local paths and file:// URIs") as caught:
        resolve_audio_path(uri)
    assert uri in str(caught.value)


def test_file_uri_on_another_host_is_refused() -> None:
    with pytest.raises(AudioUnreadable, match="host 'fileserver'"):
        resolve_audio_path("file://fileserver/share/a.wav")


def test_empty_uri_is_refused() -> None:
    with pytest.raises(AudioUnreadable, match="empty"):
        resolve_audio_path("")


# --- unreadable files ---------------------------------------------------------------------------


@pytest.mark.parametrize("read", [open_recording, wav_duration_ms])
def test_missing_file(tmp_path: pathlib.Path, read) -> None:
    uri = (tmp_path / "nowhere.wav").as_uri()
    with pytest.raises(AudioUnreadable, match="no such file") as caught:
        read(uri)
    assert caught.value.audio_uri == uri
    assert uri in str(caught.value)


@pytest.mark.parametrize("read", [open_recording, wav_duration_ms])
def test_not_a_wav_file(tmp_path: pathlib.Path, read) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("These are the meeting notes, not a recording of the meeting.\n")
    with pytest.raises(AudioUnreadable, match="not a WAV file"):
        read(str(path))


def test_zero_byte_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "zero.wav"
    path.touch()
    with pytest.raises(AudioUnreadable, match="not a WAV file"):
        open_recording(str(path))


def test_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(AudioUnreadable, match="directory"):
        open_recording(str(tmp_path))


@pytest.mark.parametrize("read", [open_recording, wav_duration_ms])
def test_wav_without_samples(tmp_path: pathlib.Path, read) -> None:
    path = write_tone(tmp_path / "empty.wav", ms=0)
    with pytest.raises(AudioUnreadable, match="empty"):
        read(str(path))


def test_truncated_header(tmp_path: pathlib.Path) -> None:
    path = write_tone(tmp_path / "cut.wav", ms=100)
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(AudioUnreadable, match="truncated"):
        open_recording(str(path))


def test_compressed_encoding_is_named(tmp_path: pathlib.Path) -> None:
    source = make_speech_wav(tmp_path / "speech.wav", "hello")
    path = tmp_path / "phone.wav"
    subprocess.run(["sox", str(source), "-e", "mu-law", "-r", "8000", str(path)], check=True)
    with pytest.raises(AudioUnreadable, match="mu-law"):
        open_recording(str(path))


def test_header_size_larger_than_file_uses_the_bytes_present(tmp_path: pathlib.Path) -> None:
    # What a recorder killed mid-write leaves behind.
    path = write_tone(tmp_path / "killed.wav", ms=1000)
    path.write_bytes(path.read_bytes()[: 44 + 16000])  # 44-byte header + 500 ms of samples
    assert wav_duration_ms(str(path)) == 500
    recording = open_recording(str(path))
    assert len(recording.pcm(0, 500)) == 500 * 16 * 2


def test_file_shortened_after_opening(tmp_path: pathlib.Path) -> None:
    path = write_tone(tmp_path / "tone.wav", ms=1000)
    recording = open_recording(str(path))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(AudioUnreadable, match="shorter"):
        recording.pcm(0, 1000)


# --- durations and segments ---------------------------------------------------------------------


def test_segment_bounds_last_segment_shorter(tmp_path: pathlib.Path) -> None:
    recording = open_recording(str(write_tone(tmp_path / "tone.wav", ms=2500)))
    assert recording.duration_ms == 2500
    assert recording.segment_bounds(1000) == [(0, 1000), (1000, 2000), (2000, 2500)]


def test_segment_bounds_exact_multiple_has_no_empty_segment(tmp_path: pathlib.Path) -> None:
    recording = open_recording(str(write_tone(tmp_path / "tone.wav", ms=3000)))
    assert recording.segment_bounds(1000) == [(0, 1000), (1000, 2000), (2000, 3000)]
    assert recording.segment_bounds(60_000) == [(0, 3000)]


@pytest.mark.parametrize("segment_ms", [0, -1000])
def test_segment_length_must_be_positive(tmp_path: pathlib.Path, segment_ms: int) -> None:
    recording = open_recording(str(write_tone(tmp_path / "tone.wav", ms=1000)))
    with pytest.raises(ValueError, match="segment_ms"):
        recording.segment_bounds(segment_ms)


@pytest.mark.parametrize(("start_ms", "end_ms"), [(-1, 10), (500, 1001), (600, 500)])
def test_pcm_span_outside_the_recording(tmp_path: pathlib.Path, start_ms: int, end_ms: int) -> None:
    recording = open_recording(str(write_tone(tmp_path / "tone.wav", ms=1000)))
    with pytest.raises(ValueError, match="outside"):
        recording.pcm(start_ms, end_ms)


@pytest.mark.parametrize(("rate", "channels", "ms"), [(16000, 1, 1234), (44100, 2, 2000), (8000, 1, 999)])
def test_wav_duration_matches_the_recording(tmp_path: pathlib.Path, rate: int, channels: int, ms: int) -> None:
    path = write_tone(tmp_path / "tone.wav", ms=ms, rate=rate, channels=channels)
    with wave.open(str(path)) as reader:
        expected = reader.getnframes() * 1000 // reader.getframerate()
    assert wav_duration_ms(path.as_uri()) == expected == open_recording(str(path)).duration_ms


# --- conversion ---------------------------------------------------------------------------------


def test_16k_mono_16bit_is_served_unchanged(tmp_path: pathlib.Path) -> None:
    path = write_tone(tmp_path / "tone.wav", ms=1000)
    with wave.open(str(path)) as reader:
        raw = reader.readframes(reader.getnframes())
    recording = open_recording(str(path))
    assert recording.sample_rate == 16000
    assert recording.pcm(0, 1000) == raw
    assert recording.pcm(250, 500) == raw[250 * 32 : 500 * 32]


@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (8000, 1), (22050, 1), (48000, 2)])
def test_converted_to_16k_mono(tmp_path: pathlib.Path, rate: int, channels: int) -> None:
    path = make_speech_wav(tmp_path / "speech.wav", PHRASE, sample_rate=rate, channels=channels)
    with wave.open(str(path)) as reader:
        source_ms = reader.getnframes() * 1000 / reader.getframerate()
    recording = open_recording(path.as_uri())
    assert recording.sample_rate == 16000
    assert abs(recording.duration_ms - source_ms) <= 20
    pcm = recording.pcm(0, recording.duration_ms)
    assert len(pcm) == recording.duration_ms * 16 * 2
    # Same signal as sox's own conversion: right rate, channels mixed, nothing shifted in time.
    assert correlation(samples(pcm), sox_reference(path)) > 0.99


@pytest.mark.parametrize(
    ("bits", "encoding"),
    [(8, "unsigned-integer"), (24, "signed-integer"), (32, "signed-integer"), (32, "floating-point")],
)
def test_sample_widths(tmp_path: pathlib.Path, bits: int, encoding: str) -> None:
    source = make_speech_wav(tmp_path / "speech.wav", PHRASE)
    path = tmp_path / f"speech-{bits}.wav"
    subprocess.run(["sox", str(source), "-b", str(bits), "-e", encoding, str(path)], check=True)
    expected = open_recording(str(source)).pcm(0, 1500)
    converted = open_recording(str(path)).pcm(0, 1500)
    assert len(converted) == len(expected)
    assert correlation(samples(converted), samples(expected)) > 0.99
    # Same level too, not just the same shape (8-bit loses precision, hence the tolerance).
    assert np.sqrt(np.mean(samples(converted) ** 2)) == pytest.approx(
        np.sqrt(np.mean(samples(expected) ** 2)), rel=0.05
    )


def test_segments_join_seamlessly(tmp_path: pathlib.Path) -> None:
    # A span read on its own must match the same span of the whole recording, so transcribing
    # segment by segment (perhaps after a resume) hears what a single pass would.
    path = make_speech_wav(tmp_path / "speech.wav", PHRASE, sample_rate=44100, channels=2)
    recording = open_recording(str(path))
    whole = samples(recording.pcm(0, recording.duration_ms))
    pieces = samples(b"".join(recording.pcm(start, end) for start, end in recording.segment_bounds(700)))
    assert len(pieces) == len(whole)
    assert np.max(np.abs(pieces - whole)) <= 2
