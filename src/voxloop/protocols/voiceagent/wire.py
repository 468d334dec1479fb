"""Checks on the VoiceAgent SDK's incoming audio messages (no engine needed, so unit-testable)."""

from __future__ import annotations

import base64
import binascii

MAX_AUDIO_BYTES = 5 * 2**19  # 2.5 MB decoded: its base64 fits the server's 4 MB WebSocket message limit
# MediaRecorder MIME types and short names -> the container PyAV should expect.
AUDIO_FORMATS = {
    "webm": "webm", "opus": "ogg", "ogg": "ogg", "oga": "ogg", "mp3": "mp3", "mpeg": "mp3",
    "mpga": "mp3", "wav": "wav", "wave": "wav", "x-wav": "wav", "vnd.wave": "wav", "flac": "flac",
    "x-flac": "flac", "mp4": "mp4", "m4a": "mp4", "x-m4a": "mp4", "aac": "aac",
}  # fmt: skip


def audio_format(value: object) -> str | None:
    """'audio/webm;codecs=opus' -> 'webm'; None (sniff the bytes) when absent or unknown to the client."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("audio 'format' must be a string such as 'webm' or 'audio/webm;codecs=opus'")
    name = value.strip().lower().split(";")[0].strip().removeprefix("audio/").removeprefix("video/")
    if name in ("", "unknown", "auto", "octet-stream", "application/octet-stream"):
        return None
    if name not in AUDIO_FORMATS:
        raise ValueError(f"unsupported audio format {value!r}; use webm, ogg, mp3, wav, flac or mp4")
    return AUDIO_FORMATS[name]


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
