"""Reading WAV recordings for transcription.

Meeting recordings can be hours long, so nothing here loads a whole file:

* ``wav_duration_ms`` parses only the RIFF header; the sender calls it to route a job.
* ``open_recording`` also parses only the header. ``Recording.pcm`` reads just the frames of the
  requested span (plus a little context for the resampler) and converts them to 16 kHz mono
  signed 16-bit little-endian PCM, the format speech engines expect. A job that resumes at
  segment 500 therefore does not decode the 499 segments before it.

The header is parsed here rather than with the stdlib ``wave`` module because, before Python 3.12,
``wave`` rejects WAVE_FORMAT_EXTENSIBLE headers, which is what sox, ffmpeg and most recorders
write for 24-bit, 32-bit or multi-channel files.
"""

from __future__ import annotations

import math
import os
import pathlib
import struct
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soxr

from middleware.errors import FatalError

__all__ = ["AudioUnreadable", "Recording", "open_recording", "resolve_audio_path", "wav_duration_ms"]

TARGET_SAMPLE_RATE = 16000

# Context read on each side of a span so the resampler's filter sees real signal, not the
# zeros it assumes beyond the ends of its input: a span cut from the middle of a file then
# matches the same span of the whole file converted at once.
_RESAMPLER_CONTEXT_MS = 50

_MAX_FMT_CHUNK_SIZE = 1024
_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# Names for the encodings people actually meet, so the error says what the file is.
_FORMAT_NAMES = {
    0x0002: "Microsoft ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MP3",
}
_SUPPORTED = "PCM with 8, 16, 24 or 32-bit integer samples, or 32/64-bit float samples"
_CONVERT_HINT = "convert it first, e.g. `sox input.wav -b 16 output.wav`"


class AudioUnreadable(FatalError, ValueError):
    """A recording that cannot be used, with a message a person can act on.

    Fatal (and a ValueError) because the problem is in the input (the URI or the file):
    retrying the job will not help, so it goes straight to the dead-letter table.
    """

    def __init__(self, audio_uri: str, reason: str) -> None:
        super().__init__(f"Cannot read audio {audio_uri!r}: {reason}")
        self.audio_uri = audio_uri
        self.reason = reason


@dataclass(frozen=True)
class _WavHeader:
    """Where the samples are and how they are encoded."""

    is_float: bool
    channels: int
    sample_rate: int
    sample_width: int  # bytes per sample, per channel
    data_offset: int  # byte offset of the first frame in the file
    frame_count: int

    @property
    def frame_size(self) -> int:
        return self.channels * self.sample_width

    @property
    def duration_ms(self) -> int:
        return self.frame_count * 1000 // self.sample_rate


def resolve_audio_path(audio_uri: str) -> pathlib.Path:
    """Map a local path or a ``file://`` URI to a filesystem path (without checking it exists).

    Plain paths are taken literally (a ``%`` in a file name stays a ``%``); ``file://`` URIs are
    percent-decoded. Remote schemes are rejected rather than fetched: workers read recordings
    from storage they share with the sender.
    """
    if not audio_uri:
        raise AudioUnreadable(audio_uri, "the audio URI is empty")
    parts = urllib.parse.urlsplit(audio_uri)
    if not parts.scheme:
        return pathlib.Path(audio_uri)
    if parts.scheme.lower() != "file":
        raise AudioUnreadable(
            audio_uri,
            f"the {parts.scheme!r} scheme is not supported; only local paths and file:// URIs are",
        )
    if parts.netloc not in ("", "localhost"):
        raise AudioUnreadable(audio_uri, f"file:// URIs must name a local file, not one on host {parts.netloc!r}")
    if not parts.path:
        raise AudioUnreadable(audio_uri, "the file:// URI has no path")
    return pathlib.Path(urllib.request.url2pathname(parts.path))


def wav_duration_ms(audio_uri: str) -> int:
    """Duration of a WAV recording in whole milliseconds, from its header alone (cheap)."""
    path = resolve_audio_path(audio_uri)
    with _open(audio_uri, path) as file:
        return _read_header(audio_uri, file, os.fstat(file.fileno()).st_size).duration_ms


def open_recording(audio_uri: str, *, target_rate: int = TARGET_SAMPLE_RATE) -> Recording:
    """Validate a WAV recording and return a handle that serves it as mono 16-bit PCM.

    Raises AudioUnreadable for a missing, non-WAV, unsupported or empty file. Only the header is
    read here; samples are read and converted span by span in ``Recording.pcm``.
    """
    if target_rate <= 0:
        raise ValueError(f"target_rate must be positive, got {target_rate}")
    path = resolve_audio_path(audio_uri)
    with _open(audio_uri, path) as file:
        header = _read_header(audio_uri, file, os.fstat(file.fileno()).st_size)
    return Recording(audio_uri, path, header, target_rate)


class Recording:
    """A WAV recording served as mono signed 16-bit little-endian PCM at ``sample_rate``.

    Holds no open file and no samples, so it is cheap to keep and safe to share between threads:
    each ``pcm`` call opens the file, reads its span and closes it.
    """

    def __init__(self, audio_uri: str, path: pathlib.Path, header: _WavHeader, target_rate: int) -> None:
        self.audio_uri = audio_uri
        self.path = path
        self.sample_rate = target_rate
        self.duration_ms = header.duration_ms
        self.source_sample_rate = header.sample_rate
        self.source_channels = header.channels
        self._header = header

    def __repr__(self) -> str:
        return (
            f"Recording({self.audio_uri!r}, duration_ms={self.duration_ms}, "
            f"source={self.source_sample_rate} Hz x {self.source_channels} ch)"
        )

    def segment_bounds(self, segment_ms: int) -> list[tuple[int, int]]:
        """(start_ms, end_ms) of each segment, in order; the last may be shorter, none is empty."""
        if segment_ms <= 0:
            raise ValueError(f"segment_ms must be positive, got {segment_ms}")
        return [(start, min(start + segment_ms, self.duration_ms)) for start in range(0, self.duration_ms, segment_ms)]

    def pcm(self, start_ms: int, end_ms: int) -> bytes:
        """Samples from start_ms (inclusive) to end_ms (exclusive) as mono s16le at ``sample_rate``.

        The result has exactly ``_sample_index(end_ms) - _sample_index(start_ms)`` samples, so
        consecutive spans join without gaps or overlaps.
        """
        if not 0 <= start_ms <= end_ms <= self.duration_ms:
            raise ValueError(f"span {start_ms}-{end_ms} ms is outside the recording (0-{self.duration_ms} ms)")
        first, stop = self._sample_index(start_ms), self._sample_index(end_ms)
        if first == stop:
            return b""
        with _open(self.audio_uri, self.path) as file:
            self._check_unchanged(file)
            if self._is_native_format():
                return _read_frames(file, self._header, first, stop - first).tobytes()
            return _to_s16le(self._converted(file, first, stop))

    def _check_unchanged(self, file: BinaryIO) -> None:
        # A file truncated or replaced since open_recording would otherwise yield short spans.
        header = self._header
        needed = header.data_offset + header.frame_count * header.frame_size
        if os.fstat(file.fileno()).st_size < needed:
            raise AudioUnreadable(self.audio_uri, "the file has become shorter since it was opened")

    def _sample_index(self, ms: int) -> int:
        return ms * self.sample_rate // 1000

    def _is_native_format(self) -> bool:
        header = self._header
        return (
            header.sample_rate == self.sample_rate
            and header.channels == 1
            and header.sample_width == 2
            and not header.is_float
        )

    def _converted(self, file: BinaryIO, first: int, stop: int) -> np.ndarray:
        """Output samples [first, stop) as float32 in [-1, 1], mixed to mono and resampled."""
        header = self._header
        in_rate, out_rate = header.sample_rate, self.sample_rate
        if in_rate == out_rate:
            return _mono(_read_frames(file, header, first, stop - first), header)
        # Read from an input frame that falls exactly on an output sample, some context before the
        # span, so the output sample grid of the slice lines up with that of the whole file.
        step_in, step_out = _grid(in_rate, out_rate)
        context_out = _RESAMPLER_CONTEXT_MS * out_rate // 1000
        in_first = max(0, (first - context_out) // step_out) * step_in
        in_stop = min(header.frame_count, math.ceil((stop + context_out) * in_rate / out_rate))
        frames = _mono(_read_frames(file, header, in_first, in_stop - in_first), header)
        resampled = soxr.resample(frames, in_rate, out_rate)
        offset = first - in_first * out_rate // in_rate
        span = resampled[offset : offset + stop - first]
        # The file's last output sample can need input beyond its last frame; pad that sliver.
        return np.pad(span, (0, stop - first - len(span)))


def _open(audio_uri: str, path: pathlib.Path) -> BinaryIO:
    try:
        return open(path, "rb")  # callers close it with `with`
    except FileNotFoundError:
        raise AudioUnreadable(audio_uri, f"no such file: {path}") from None
    except IsADirectoryError:
        raise AudioUnreadable(audio_uri, f"{path} is a directory, not a WAV file") from None
    except PermissionError:
        raise AudioUnreadable(audio_uri, f"permission denied reading {path}") from None
    except OSError as error:
        raise AudioUnreadable(audio_uri, f"cannot open {path}: {error.strerror or error}") from None


def _read_header(audio_uri: str, file: BinaryIO, file_size: int) -> _WavHeader:
    """Parse the RIFF header: the fmt chunk, then the position and size of the data chunk."""
    riff = file.read(12)
    if len(riff) < 12:
        raise AudioUnreadable(audio_uri, f"not a WAV file (only {len(riff)} bytes long)")
    if riff[:4] == b"RF64":
        raise AudioUnreadable(audio_uri, f"RF64 (over 4 GB) WAV files are not supported; {_CONVERT_HINT}")
    if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise AudioUnreadable(audio_uri, "not a WAV file (no RIFF/WAVE header)")
    fmt: tuple[bool, int, int, int] | None = None
    while True:
        chunk = file.read(8)
        if len(chunk) < 8:
            missing = "fmt" if fmt is None else "data"
            raise AudioUnreadable(audio_uri, f"truncated WAV file: no {missing} chunk")
        chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if chunk_id == b"fmt ":
            if size > _MAX_FMT_CHUNK_SIZE:  # real ones are 16 to 40 bytes; don't read garbage sizes
                raise AudioUnreadable(audio_uri, f"malformed WAV file: fmt chunk of {size} bytes")
            fmt = _parse_fmt(audio_uri, file.read(size))
        elif chunk_id == b"data":
            if fmt is None:
                raise AudioUnreadable(audio_uri, "malformed WAV file: data chunk before fmt chunk")
            return _header_from(audio_uri, fmt, file.tell(), size, file_size)
        else:
            file.seek(size, os.SEEK_CUR)
        if size % 2:  # chunks are padded to an even length
            file.seek(1, os.SEEK_CUR)


def _parse_fmt(audio_uri: str, body: bytes) -> tuple[bool, int, int, int]:
    """(is_float, channels, sample_rate, sample_width) from a fmt chunk, or AudioUnreadable."""
    if len(body) < 16:
        raise AudioUnreadable(audio_uri, "malformed WAV file: fmt chunk too short")
    tag, channels, sample_rate, _, block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack("<H", body[24:26])[0]  # first two bytes of the SubFormat GUID
    if tag not in (_WAVE_FORMAT_PCM, _WAVE_FORMAT_IEEE_FLOAT):
        name = _FORMAT_NAMES.get(tag, f"format tag 0x{tag:04x}")
        raise AudioUnreadable(audio_uri, f"unsupported WAV encoding {name}; need {_SUPPORTED}; {_CONVERT_HINT}")
    is_float = tag == _WAVE_FORMAT_IEEE_FLOAT
    if channels == 0 or sample_rate == 0:
        raise AudioUnreadable(audio_uri, "malformed WAV file: zero channels or zero sample rate")
    sample_width = block_align // channels
    if block_align % channels or sample_width * 8 < bits:
        raise AudioUnreadable(audio_uri, f"malformed WAV file: block align {block_align} for {channels} ch")
    allowed = (4, 8) if is_float else (1, 2, 3, 4)
    if sample_width not in allowed:
        kind = "float" if is_float else "integer"
        raise AudioUnreadable(
            audio_uri, f"unsupported sample width of {sample_width * 8} bits ({kind}); need {_SUPPORTED}"
        )
    return is_float, channels, sample_rate, sample_width


def _header_from(
    audio_uri: str, fmt: tuple[bool, int, int, int], data_offset: int, data_size: int, file_size: int
) -> _WavHeader:
    is_float, channels, sample_rate, sample_width = fmt
    # Recorders that were killed, or that stream, leave a wrong size (often 0 or 0xFFFFFFFF):
    # trust the bytes actually present.
    available = max(0, file_size - data_offset)
    if data_size == 0 or data_size > available:
        data_size = available
    header = _WavHeader(
        is_float=is_float,
        channels=channels,
        sample_rate=sample_rate,
        sample_width=sample_width,
        data_offset=data_offset,
        frame_count=data_size // (channels * sample_width),
    )
    if header.duration_ms == 0:
        raise AudioUnreadable(audio_uri, f"the recording is empty ({header.frame_count} audio frames)")
    return header


def _read_frames(file: BinaryIO, header: _WavHeader, first: int, count: int) -> np.ndarray:
    """Frames [first, first + count) as an array of shape (count, channels) in the file's encoding."""
    file.seek(header.data_offset + first * header.frame_size)
    raw = file.read(count * header.frame_size)
    if header.is_float:
        samples = np.frombuffer(raw, dtype="<f4" if header.sample_width == 4 else "<f8")
    elif header.sample_width == 3:
        samples = _int24_to_int32(raw)
    else:
        samples = np.frombuffer(raw, dtype={1: "u1", 2: "<i2", 4: "<i4"}[header.sample_width])
    return samples.reshape(count, header.channels)


def _int24_to_int32(raw: bytes) -> np.ndarray:
    # Put each 3-byte sample in the top of a 4-byte word, then shift right, which sign-extends.
    padded = np.zeros((len(raw) // 3, 4), dtype=np.uint8)
    padded[:, 1:] = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
    return padded.view("<i4").reshape(-1) >> 8


def _mono(frames: np.ndarray, header: _WavHeader) -> np.ndarray:
    """Average the channels into float32 samples in [-1, 1]."""
    if header.is_float:
        scaled = frames.astype(np.float32)
    elif header.sample_width == 1:  # 8-bit WAV is unsigned, centred on 128
        scaled = (frames.astype(np.float32) - 128.0) / 128.0
    else:
        full_scale = float(1 << (8 * header.sample_width - 1))
        scaled = (frames.astype(np.float64) / full_scale).astype(np.float32)
    return scaled[:, 0] if header.channels == 1 else scaled.mean(axis=1, dtype=np.float32)


def _to_s16le(samples: np.ndarray) -> bytes:
    scaled = np.clip(np.rint(samples * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def _grid(in_rate: int, out_rate: int) -> tuple[int, int]:
    """Smallest (input frames, output samples) pair that spans the same time exactly."""
    common = math.gcd(in_rate, out_rate)
    return in_rate // common, out_rate // common
