"""Compressed and telephone audio: MP3 out, any container in (PyAV), and G.711 both ways.

PyAV comes with faster-whisper and bundles FFmpeg, so no system codec is needed.
"""

from __future__ import annotations

import io

import av
import numpy as np

from voxloop.audio.pcm import AudioFormatError, float_to_pcm16, pcm16_to_float, resample

MAX_DECODED_S = 600  # a clip that decodes to more than this is refused (a zip bomb of audio)

# Names clients use (short names, MIME types, file extensions) -> FFmpeg demuxer names.
_CONTAINERS = {
    "wav": "wav",
    "wave": "wav",
    "x-wav": "wav",
    "mp3": "mp3",
    "mpeg": "mp3",
    "mpga": "mp3",
    "ogg": "ogg",
    "opus": "ogg",
    "oga": "ogg",
    "webm": "webm",
    "weba": "webm",
    "flac": "flac",
    "x-flac": "flac",
    "m4a": "mp4",
    "mp4": "mp4",
    "aac": "aac",
}


def container_of(format_hint: str | None) -> str | None:
    """'audio/webm;codecs=opus', 'webm' or '.mp3' -> FFmpeg's name; None lets FFmpeg probe."""
    if not format_hint:
        return None
    name = format_hint.strip().lower().split(";")[0].split("/")[-1].lstrip(".")
    if name not in _CONTAINERS:
        raise AudioFormatError(f"unsupported audio format {format_hint!r}")
    return _CONTAINERS[name]


def decode_audio(data: bytes, format_hint: str | None = None, rate: int = 16000) -> np.ndarray:
    """Any supported container/codec -> mono float32 at ``rate``."""
    if not data:
        raise AudioFormatError("empty audio")
    try:
        container = av.open(io.BytesIO(data), format=container_of(format_hint))
    except AudioFormatError:
        raise
    except (av.FFmpegError, ValueError) as exc:
        raise AudioFormatError(f"cannot read the audio: {exc}") from exc
    pieces: list[np.ndarray] = []
    total = 0
    with container:
        if not container.streams.audio:
            raise AudioFormatError("the file holds no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        try:
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    total += out.samples
                if total > MAX_DECODED_S * rate:
                    raise AudioFormatError(f"audio longer than {MAX_DECODED_S} s")
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
        except (av.FFmpegError, ValueError) as exc:
            raise AudioFormatError(f"cannot decode the audio: {exc}") from exc
    if not pieces:
        raise AudioFormatError("the audio decodes to nothing")
    return np.concatenate(pieces).astype(np.float32)


def encode_mp3(pcm16: bytes, sample_rate: int, bitrate: int = 64000) -> bytes:
    """One self-contained MP3 (plays on its own, e.g. in an <audio> element) from S16LE mono."""
    return encode_mp3_timed(pcm16, sample_rate, bitrate)[0]


def encode_mp3_timed(pcm16: bytes, sample_rate: int, bitrate: int = 64000) -> tuple[bytes, float]:
    """The MP3 and how long a player that ignores the encoder's gapless info plays it: every
    frame, padding included (the upper bound: gapless players stop a few frames sooner)."""
    if sample_rate not in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000):
        audio = resample(pcm16_to_float(pcm16), sample_rate, 24000)
        pcm16, sample_rate = float_to_pcm16(audio), 24000
    out = io.BytesIO()
    with av.open(out, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate, layout="mono")
        stream.bit_rate = bitrate
        samples = np.frombuffer(pcm16, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = sample_rate
        frames = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
            frames += 1
        seconds = frames * stream.codec_context.frame_size / sample_rate
    return out.getvalue(), seconds


# ---- G.711 (ITU-T), as OpenAI Realtime's g711_ulaw / g711_alaw at 8 kHz ----------------------

_ULAW_BIAS = 0x84


def _ulaw_decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    magnitude = (((codes & 0x0F) << 3) + _ULAW_BIAS) << exponent
    return np.where(codes & 0x80, _ULAW_BIAS - magnitude, magnitude - _ULAW_BIAS).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)


_ULAW_TO_PCM = _ulaw_decode_table()
_ALAW_TO_PCM = _alaw_decode_table()
# Encoding by nearest decoded level: exact for every code and simple to trust.
_ULAW_LEVELS = np.argsort(_ULAW_TO_PCM, kind="stable")
_ALAW_LEVELS = np.argsort(_ALAW_TO_PCM, kind="stable")


def _encode(pcm16: bytes, table: np.ndarray, order: np.ndarray) -> bytes:
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.int32)
    levels = table[order].astype(np.int32)
    index = np.clip(np.searchsorted(levels, samples), 1, len(levels) - 1)
    nearer_below = samples - levels[index - 1] < levels[index] - samples
    return order[index - nearer_below].astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> bytes:
    return _ULAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def alaw_decode(data: bytes) -> bytes:
    return _ALAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def ulaw_encode(pcm16: bytes) -> bytes:
    if len(pcm16) % 2:
        raise AudioFormatError(f"PCM16 data has an odd length ({len(pcm16)} bytes)")
    return _encode(pcm16, _ULAW_TO_PCM, _ULAW_LEVELS)


def alaw_encode(pcm16: bytes) -> bytes:
    if len(pcm16) % 2:
        raise AudioFormatError(f"PCM16 data has an odd length ({len(pcm16)} bytes)")
    return _encode(pcm16, _ALAW_TO_PCM, _ALAW_LEVELS)
