"""PCM conversions, resampling and WAV I/O: the one place audio changes shape.

Inside voxloop audio is mono float32 in [-1, 1] with an explicit sample rate; bytes on the wire
are signed 16-bit little-endian PCM.
"""

from __future__ import annotations

import io
import wave

import numpy as np
import soxr


class AudioFormatError(ValueError):
    """Audio bytes that cannot be decoded as claimed."""


def pcm16_to_float(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise AudioFormatError(f"PCM16 data has an odd length ({len(data)} bytes)")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    clipped = np.clip(samples, -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2").tobytes()


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)


class StreamResampler:
    """Resamples a stream chunk by chunk without clicks at chunk borders."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in, self.rate_out = rate_in, rate_out
        self._stream = (
            None if rate_in == rate_out else soxr.ResampleStream(rate_in, rate_out, 1, "float32", "HQ")
        )

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples.astype(np.float32, copy=False)
        return self._stream.resample_chunk(samples.astype(np.float32, copy=False), last=last)


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a PCM WAV file (8/16/32-bit, any channel count) into mono float32."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioFormatError(f"not a readable PCM WAV file: {exc}") from exc
    if width == 2:
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 1:
        samples = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 4:
        samples = np.frombuffer(frames, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise AudioFormatError(f"unsupported WAV sample width: {width} bytes")
    if channels > 1:
        samples = samples[: len(samples) - len(samples) % channels].reshape(-1, channels).mean(axis=1)
    return samples, rate


def write_wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(float_to_pcm16(samples))
    return buffer.getvalue()
