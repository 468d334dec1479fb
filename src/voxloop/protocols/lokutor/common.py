"""Pieces shared by the Lokutor endpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass

from faster_whisper.tokenizer import _LANGUAGE_CODES

from voxloop.protocols.common import check_sample_rate, parse_json

MAX_KEYTERMS = 100


def base_language(code: str | None) -> str | None:
    """'en-US' -> 'en'; None, '' and 'auto' mean: detect."""
    if not code or code.lower() == "auto":
        return None
    return code.replace("_", "-").split("-")[0].lower()


def check_stt_language(code: object) -> str | None:
    if code is not None and not isinstance(code, str):
        raise ValueError("'language' must be a string such as 'en'")
    language = base_language(code)
    if language is not None and language not in _LANGUAGE_CODES:
        raise ValueError(f"unsupported language {code!r} for speech-to-text")
    return language


def check_keyterms(value: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(term, str) for term in value):
        raise ValueError("'keyterms' must be a list of strings")
    if len(value) > MAX_KEYTERMS:
        raise ValueError(f"too many keyterms ({len(value)}, at most {MAX_KEYTERMS})")
    return [term.strip()[:100] for term in value if term.strip()] or None


@dataclass(frozen=True)
class StreamOptions:
    language: str | None = "en"
    sample_rate: int = 16000
    keyterms: list[str] | None = None


def parse_stream_options(raw: str | None) -> StreamOptions | str:
    """The /ws/stt opening message; a string result is the error to send back."""
    if raw is None:  # audio straight away: defaults
        return StreamOptions()
    try:
        payload = parse_json(raw)
    except ValueError as exc:
        return f"first message must be JSON {{language, vad}}: {exc}"
    if not isinstance(payload, dict):
        return "first message must be a JSON object {language, vad}"
    try:
        return StreamOptions(
            language=check_stt_language(payload.get("language", "en")),
            sample_rate=check_sample_rate(payload.get("sample_rate", 16000)),
            keyterms=check_keyterms(payload.get("keyterms")),
        )
    except ValueError as exc:
        return str(exc)


MICROPHONE_RATES = (8000, 16000, 24000, 44100, 48000)  # what an undeclared microphone may run at
RATE_WINDOW_S = 1.0  # arrival measured over this long before deciding
MAX_ARRIVAL_GAP_S = 0.5  # a pause this long means the client stopped sending: the window restarts
RATE_TOLERANCE = 0.04  # log2 distance to a candidate (about 3 %): 44.1 and 48 kHz are 12 % apart


class RateSniffer:
    """The rate of a microphone whose client declared none, from how fast its audio arrives.

    A live microphone sends in real time: the samples after a window's first frame, over the time
    since that frame arrived, are its rate. Lokutor's own raw-API example streams 16 kHz without a
    word; taken for the documented 44.1 kHz it would be heard 2.76 times too fast. Audio faster
    than real time (a file sent at once) or between candidates is no evidence: the rate stays.
    The first window decides; later ones change the rate only when two running agree on another.
    """

    def __init__(self, default: int) -> None:
        self.rate = default
        self.decided = False
        self._window_start: float | None = None
        self._last_at = 0.0
        self._samples = 0  # samples after the window's first frame
        self._other: int | None = None  # a different rate the previous window found

    def observe(self, samples: int, now: float) -> bool:
        """Counts a frame; True when this frame decided or changed ``rate``."""
        if self._window_start is None or now - self._last_at > MAX_ARRIVAL_GAP_S:
            self._window_start, self._samples = now, 0
        else:
            self._samples += samples
        self._last_at = now
        elapsed = now - self._window_start
        faster_than_any = self._samples > MICROPHONE_RATES[-1] * (elapsed + MAX_ARRIVAL_GAP_S)
        if elapsed < RATE_WINDOW_S and not faster_than_any:
            return False
        measured = self._samples / elapsed
        self._window_start, self._samples = now, 0
        return self._judge(measured)

    def decide_now(self) -> None:
        """No more waiting for evidence: the rate so far stands."""
        self.decided = True

    def _judge(self, measured: float) -> bool:
        distance = lambda rate: abs(math.log2(max(measured, 1.0) / rate))  # noqa: E731
        nearest = min(MICROPHONE_RATES, key=distance)
        plausible = distance(nearest) <= RATE_TOLERANCE
        if not self.decided:
            self.decided = True
            self.rate = nearest if plausible else self.rate
            return True
        if not plausible or nearest == self.rate:
            self._other = None
            return False
        if self._other != nearest:
            self._other = nearest  # one window is a hint; the next must agree
            return False
        self.rate, self._other = nearest, None
        return True
