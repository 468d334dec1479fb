"""Video frames of the VideoAgent protocol: validation from the image headers and a bounded buffer.

Images are never decoded here: the magic bytes say the format and the header says the size, which
is all the checks need (and keeps hostile pixels away from any image library).
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections import deque
from dataclasses import dataclass

MAX_FRAME_BYTES = 2 * 1024 * 1024  # decoded image bytes
MAX_SIDE = 4096  # pixels, each dimension
CONTEXT_FRAMES = 3  # frames kept for the visual context
MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
ALIASES = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}


class FrameRejected(ValueError):
    """A frame the server will not take; ``code`` names the reason for clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Frame:
    sequence: int | float | None
    timestamp: int | float | None
    trigger: str
    format: str
    width: int
    height: int
    data_url: str


def declared_format(value: object) -> str | None:
    """'webp', 'image/webp', 'JPG' -> canonical name; None when absent; FrameRejected when unknown."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise FrameRejected("bad_format", "image.format must be a string such as 'webp'")
    name = value.strip().lower().split(";")[0].removeprefix("image/")
    if name not in ALIASES:
        raise FrameRejected("bad_format", f"unsupported image format {value!r}; use jpeg, png or webp")
    return ALIASES[name]


def sniff(image: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header of a JPEG, PNG or WebP image."""
    if image.startswith(b"\x89PNG\r\n\x1a\n") and image[12:16] == b"IHDR" and len(image) >= 24:
        width, height = struct.unpack(">II", image[16:24])
        return "png", width, height
    if image.startswith(b"RIFF") and image[8:12] == b"WEBP":
        return ("webp", *_webp_size(image))
    if image.startswith(b"\xff\xd8"):
        return ("jpeg", *_jpeg_size(image))
    raise FrameRejected("bad_format", "image data is not a JPEG, PNG or WebP image")


def _webp_size(image: bytes) -> tuple[int, int]:
    chunk = image[12:16]
    if chunk == b"VP8 " and len(image) >= 30 and image[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", image[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(image) >= 25 and image[20] == 0x2F:
        bits = int.from_bytes(image[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(image) >= 30:
        return int.from_bytes(image[24:27], "little") + 1, int.from_bytes(image[27:30], "little") + 1
    raise FrameRejected("bad_image", "WebP header is damaged")


def _jpeg_size(image: bytes) -> tuple[int, int]:
    """Walks the JPEG segments to the start-of-frame marker that holds the dimensions."""
    at = 2
    while at + 4 <= len(image):
        if image[at] != 0xFF:
            break
        marker = image[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # segments without a length
            at += 2
            continue
        (length,) = struct.unpack(">H", image[at + 2 : at + 4])
        if marker in (*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)):
            if at + 9 > len(image):
                break
            height, width = struct.unpack(">HH", image[at + 5 : at + 9])
            return width, height
        at += 2 + length
    raise FrameRejected("bad_image", "JPEG header is damaged or has no frame size")


def parse_frame(message: dict) -> Frame:
    """A ``video_frame`` message -> Frame, or FrameRejected saying why."""
    image = message.get("image")
    if not isinstance(image, dict) or not isinstance(image.get("data"), str) or not image["data"]:
        raise FrameRejected("bad_frame", "video_frame needs image.data (base64) and image.format")
    text = image["data"]
    if "," in text[:100] and text.startswith("data:"):
        text = text.split(",", 1)[1]  # a whole data URL is fine too
    if len(text) > (MAX_FRAME_BYTES + 2) // 3 * 4 + 4:  # refuse before decoding
        raise FrameRejected("frame_too_large", _too_large(len(text) * 3 // 4))
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FrameRejected("bad_frame", f"image.data is not valid base64 ({exc})") from exc
    if len(data) > MAX_FRAME_BYTES:
        raise FrameRejected("frame_too_large", _too_large(len(data)))
    kind, width, height = sniff(data)
    declared = declared_format(image.get("format"))
    if declared is not None and declared != kind:
        raise FrameRejected("bad_format", f"image.format says {declared} but the data is {kind}")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise FrameRejected("bad_dimensions", f"image is {width}x{height}; each side must be 1 to {MAX_SIDE}")
    sequence, timestamp = message.get("sequence"), message.get("timestamp")
    trigger = message.get("triggerReason")
    return Frame(
        sequence=sequence if _number(sequence) else None,
        timestamp=timestamp if _number(timestamp) else None,
        trigger=trigger if isinstance(trigger, str) else "user_request",
        format=kind,
        width=width,
        height=height,
        data_url=f"data:{MIME[kind]};base64,{base64.b64encode(data).decode()}",
    )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _too_large(size: int) -> str:
    return f"frame too large ({size / 2**20:.1f} MB); at most {MAX_FRAME_BYTES / 2**20:.1f} MB"


class VisualContext:
    """The last few frames; the newest ones go with the next user message to vision LLMs."""

    def __init__(self, size: int = CONTEXT_FRAMES) -> None:
        self.frames: deque[Frame] = deque(maxlen=size)

    def add(self, frame: Frame) -> None:
        self.frames.append(frame)

    def images(self) -> list[str]:
        return [frame.data_url for frame in self.frames]
