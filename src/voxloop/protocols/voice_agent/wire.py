"""Checks on the VoiceAgent SDK's incoming audio messages."""

from __future__ import annotations

import base64
import binascii

from voxloop.audio import codec
from voxloop.audio.pcm import AudioFormatError

MAX_AUDIO_BYTES = 5 * 2**19  # 2.5 MB decoded: its base64 fits the server's 4 MB WebSocket message limit
UNNAMED = frozenset({"", "unknown", "auto", "octet-stream"})  # the bytes will tell


def audio_format(value: object) -> str | None:
    """'audio/webm;codecs=opus' or 'webm' -> 'webm' (FFmpeg's container name); None: probe the bytes."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("audio 'format' must be a string such as 'webm' or 'audio/webm;codecs=opus'")
    if value.strip().lower().split(";")[0].split("/")[-1] in UNNAMED:
        return None
    try:
        return codec.container_of(value)
    except AudioFormatError as exc:
        raise ValueError(f"{exc}; use webm, ogg, mp3, wav, flac or mp4") from exc


def decode_base64(text: object, limit: int, what: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what} needs base64 'data'")
    if len(text) > (limit + 2) // 3 * 4 + 4:  # refuse before decoding
        raise ValueError(
            f"{what} too large ({len(text) * 3 // 4 / 2**20:.1f} MB); at most {limit / 2**20:.0f} MB"
        )
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} 'data' is not valid base64 ({exc})") from exc
    if not data:
        raise ValueError(f"{what} 'data' is empty")
    return data
