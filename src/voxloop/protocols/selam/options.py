"""SelamGPT's errors, voices and ``start_session`` options, mapped onto voxloop's engine.

The mapping of ``vad_threshold`` and ``interrupt_threshold`` is documented in docs/selam.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from voxloop.backends.tts.voices import Speaker, UnknownLanguage, UnknownVoice, normalize_language
from voxloop.engine.barge_in import BargeInRules
from voxloop.engine.segmenter import SegmenterConfig

ERROR_TYPES = frozenset(
    {"authentication_error", "authorization_error", "validation_error", "session_error", "audio_error"}
)
DEFAULT_VAD_THRESHOLD = 600  # PCM16 amplitude in SelamGPT's docs (about -35 dBFS)
DEFAULT_INTERRUPT_THRESHOLD = 8  # 1-5 easy to interrupt, 10-15 needs confident speech
MAX_INSTRUCTIONS = 20000

# SelamGPT's "GPT Audio" voices, given voxloop's voice styles (docs/voices.md). They speak every
# language voxloop speaks.
GPT_VOICES = {
    "alloy": "F1", "nova": "F2", "shimmer": "F3", "coral": "F4", "sage": "F5",
    "echo": "M1", "onyx": "M2", "fable": "M3", "ash": "M4", "verse": "M5", "ballad": "M5",
}  # fmt: skip
# SelamGPT's native voices: the style that speaks as them, and their language (the session's
# language when the client names none). They too speak any other language they are asked to.
NATIVE_VOICES = {
    "mekdes": ("F1", "am"), "betty": ("F2", "am"), "ameha": ("M1", "am"),
    "ubax": ("F1", "so"), "muuse": ("M1", "so"),
}  # fmt: skip


class SelamError(Exception):
    """An error for the client, in one of the seed's types."""

    def __init__(self, kind: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        assert kind in ERROR_TYPES
        self.kind, self.message, self.code = kind, message, code or kind

    def payload(self) -> dict[str, Any]:
        """SelamGPT's error object ({"error": {message, type, code}}), with type and message also
        at the top level for clients that read ``error.message`` / ``error.type`` directly."""
        body = {"message": self.message, "type": self.kind, "code": self.code}
        return {**body, "error": body}


def voice_id(name: object, speaker: Speaker, language: str | None = None) -> str:
    """The voxloop voice for a SelamGPT (or voxloop) voice name; validation_error if none."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise SelamError("validation_error", "'voice' must be a voice name such as 'alloy' or 'F1'")
    key = name.strip().lower()
    native = NATIVE_VOICES.get(key)
    resolved = native[0] if native else GPT_VOICES.get(key, name.strip())
    try:
        speaker.resolve(resolved, language or (native[1] if native else None))
    except (UnknownVoice, UnknownLanguage) as exc:
        raise SelamError("validation_error", str(exc), "unsupported_voice") from exc
    return resolved


def language_code(value: object, speaker: Speaker) -> str | None:
    """The reply language, or None (absent, empty or "auto") for auto-detection."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    if not isinstance(value, str) or len(value) > 20:
        raise SelamError("validation_error", "'language' must be a language code such as 'en'")
    code = normalize_language(value)
    if code not in speaker.languages():
        raise SelamError(
            "validation_error",
            f"language {value!r} is not supported here; use one of {', '.join(speaker.languages())} "
            "or leave 'language' out to detect it",
            "unsupported_language",
        )
    return code


def _number(data: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SelamError("validation_error", f"'{key}' must be a number")
    if not low <= value <= high:
        raise SelamError("validation_error", f"'{key}' must be within {low:g}-{high:g}, not {value}")
    return float(value)


def turn_for(vad_threshold: float, base: SegmenterConfig) -> SegmenterConfig:
    """vad_threshold is a PCM16 amplitude; each doubling above 600 asks the VAD for 0.1 more speech
    probability and sqrt(2) times the voiced time before speech counts (halving: the reverse)."""
    octaves = math.log2(vad_threshold / DEFAULT_VAD_THRESHOLD)
    threshold = min(0.9, max(0.2, base.threshold + 0.1 * octaves))
    release = max(0.05, threshold - (base.threshold - base.release))
    min_speech = base.min_speech_ms * min(2.0, max(0.5, 2 ** (octaves / 2)))
    return replace(base, threshold=threshold, release=release, min_speech_ms=round(min_speech))


def barge_in_for(interrupt_threshold: float, base: BargeInRules) -> BargeInRules:
    """8 keeps the engine's rules (already the most permissive words rule: one word). Below 8 the
    paused-for speech is checked more often and gets longer to bring its words; above 8 it needs
    more words, characters and STT confidence, and barge-ins need a pause between them."""
    step = round(interrupt_threshold) - DEFAULT_INTERRUPT_THRESHOLD  # -7 .. +7
    if step <= 0:
        return replace(
            base,
            check_every_s=base.check_every_s * (1 + step / 14),  # 1: half the interval
            window_s=base.window_s * (1 - step / 7),  # 1: twice the window
        )
    return replace(
        base,
        min_words=base.min_words + math.ceil(step / 2),  # 9-10: +1 word ... 15: +4 words
        min_chars=base.min_chars + 3 * step,
        min_confidence=min(0.9, base.min_confidence + 0.1 * step),
        cooldown_s=base.cooldown_s + 0.5 * step,
    )


@dataclass(frozen=True)
class StartOptions:
    voice: str  # voxloop's voice id
    voice_name: str  # as the client named it
    language: str | None  # None: detect the spoken language and answer in it
    voice_language: str | None  # a native voice's own language: the first reply's without `language`
    instructions: str | None
    vad_threshold: float
    interrupt_threshold: float


def parse_start(data: object, default_voice: str, speaker: Speaker) -> StartOptions:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SelamError("validation_error", "start_session takes an object {voice, language?, ...}")
    language = language_code(data.get("language"), speaker)
    name = data.get("voice") or default_voice
    voice = voice_id(name, speaker, language)
    native = NATIVE_VOICES.get(name.strip().lower()) if isinstance(name, str) else None
    instructions = data.get("instructions")
    if instructions is not None and (
        not isinstance(instructions, str) or len(instructions) > MAX_INSTRUCTIONS
    ):
        raise SelamError("validation_error", f"'instructions' must be a string of at most {MAX_INSTRUCTIONS}")
    return StartOptions(
        voice=voice,
        voice_name=name,
        language=language,
        voice_language=native[1] if native else None,
        instructions=instructions.strip() if instructions and instructions.strip() else None,
        vad_threshold=_number(data, "vad_threshold", DEFAULT_VAD_THRESHOLD, 1, 32767),
        interrupt_threshold=_number(data, "interrupt_threshold", DEFAULT_INTERRUPT_THRESHOLD, 1, 15),
    )
