"""Synthetic speech recordings for the demo and the tests, made with espeak-ng and sox (Debian packages).

Real speech, so PocketSphinx has something to recognise, yet cheap: a 95 s recording is a few
sentences padded with silence, made in well under a second.

The default voice is espeak-ng's ``en-us``: PocketSphinx's bundled model is US English, and on
the default (British) voice it recognises noticeably fewer words.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile
import wave

__all__ = ["make_long_recording", "make_speech_wav", "wav_frames"]

DEFAULT_VOICE = "en-us"

_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS_WORDS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def make_speech_wav(
    path: str | os.PathLike[str],
    text: str,
    *,
    sample_rate: int | None = None,
    channels: int = 1,
    pad_to_ms: int | None = None,
    bits: int = 16,
    voice: str = DEFAULT_VOICE,
) -> pathlib.Path:
    """Speak ``text`` into a PCM WAV file at ``path`` and return the path.

    espeak-ng writes 22.05 kHz mono 16-bit; sox converts to ``sample_rate``, ``channels`` and
    ``bits`` (24 and 32-bit come out as WAVE_FORMAT_EXTENSIBLE, as real tools write them) and
    appends silence up to ``pad_to_ms`` if the speech is shorter.
    """
    path = pathlib.Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        spoken = pathlib.Path(scratch, "spoken.wav")
        _espeak(spoken, text, voice=voice)
        effects = _pad_effect(spoken, pad_to_ms)
        _sox(spoken, path, sample_rate=sample_rate, channels=channels, bits=bits, effects=effects)
    return path


def make_long_recording(
    path: str | os.PathLike[str],
    *,
    seconds: int,
    sample_rate: int = 22050,
    channels: int = 1,
) -> pathlib.Path:
    """A recording of exactly ``seconds`` of numbered spoken sentences, back to back.

    Sentences ("this is sentence number three of the meeting") continue to the end rather than
    trailing off into silence, so every segment of a long job has words in it.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    path = pathlib.Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        spoken = pathlib.Path(scratch, "spoken.wav")
        count = max(1, seconds // 3)  # espeak-ng takes about 2.5 s per sentence
        while True:
            _espeak(spoken, _sentences(count), voice=DEFAULT_VOICE)
            if wav_frames(spoken) / _rate(spoken) >= seconds:
                break
            count *= 2
        _sox(
            spoken,
            path,
            sample_rate=sample_rate,
            channels=channels,
            bits=16,
            effects=["trim", "0", str(seconds)],
        )
    return path


def wav_frames(path: str | os.PathLike[str]) -> int:
    """Number of frames in a plain PCM WAV file (as written by espeak-ng or sox at 8/16 bits)."""
    with wave.open(str(path), "rb") as reader:
        return reader.getnframes()


def _rate(path: pathlib.Path) -> int:
    with wave.open(str(path), "rb") as reader:
        return reader.getframerate()


def _sentences(count: int) -> str:
    return " ".join(f"this is sentence number {_number_words(n)} of the meeting." for n in range(1, count + 1))


def _number_words(number: int) -> str:
    # Words rather than digits, so tests can look for them in a transcript as spoken.
    if number < 20:
        return _NUMBER_WORDS[number]
    if number < 100:
        tens, units = divmod(number, 10)
        return _TENS_WORDS[tens] + (f" {_NUMBER_WORDS[units]}" if units else "")
    hundreds, rest = divmod(number, 100)
    return f"{_NUMBER_WORDS[hundreds]} hundred" + (f" {_number_words(rest)}" if rest else "")


def _espeak(path: pathlib.Path, text: str, *, voice: str) -> None:
    # Text on stdin, so text that starts with "-" is not taken for an option.
    subprocess.run(
        ["espeak-ng", "-v", voice, "--stdin", "-w", str(path)],
        input=text.encode(),
        check=True,
        capture_output=True,
    )


def _pad_effect(spoken: pathlib.Path, pad_to_ms: int | None) -> list[str]:
    if pad_to_ms is None:
        return []
    missing_frames = pad_to_ms * _rate(spoken) // 1000 - wav_frames(spoken)
    # "pad 0 <n>s": n samples of silence at the end, before any rate change.
    return ["pad", "0", f"{missing_frames}s"] if missing_frames > 0 else []


def _sox(
    source: pathlib.Path,
    target: pathlib.Path,
    *,
    sample_rate: int | None,
    channels: int,
    bits: int,
    effects: list[str],
) -> None:
    output_format = ["-b", str(bits), "-c", str(channels)]
    if sample_rate is not None:
        output_format += ["-r", str(sample_rate)]
    target.parent.mkdir(parents=True, exist_ok=True)
    # Effects before the implicit rate/channel conversion (sox appends those at the end).
    subprocess.run(
        ["sox", str(source), *output_format, str(target), *effects],
        check=True,
        capture_output=True,
    )
