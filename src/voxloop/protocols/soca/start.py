"""The Soca ``start`` message: the first message of every connection, which also authenticates.

``{"type": "start", "token" (or "private_key"), "session_id", "agent_id", "lang", "sr"}`` plus
voxloop extensions: ``prompt``, ``voice``, ``partials`` and ``barge`` (the barge-in gate, keys as
in the Soca docs in either case: ``min_partial_chars``, ``min_partial_words``, ``min_confidence``,
``speech_start_window``, ``barge_cooldown``, ``filler_words``, plus ``enabled``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from voxloop.config import Settings
from voxloop.protocols.lokutor.common import check_sample_rate

SESSION_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
MAX_PROMPT = 20000


@dataclass(frozen=True)
class BargeGate:
    """The Soca barge-in gate: a partial transcript interrupts the reply only if ALL hold."""

    enabled: bool = True
    min_partial_chars: int = 10
    min_partial_words: int = 2
    min_confidence: float = 0.30
    speech_start_window: float = 1.5  # seconds of speech in which qualifying words must come
    barge_cooldown: float = 0.8  # seconds between two barge-ins
    filler_words: frozenset[str] = frozenset({"uh", "um", "hmm", "eh", "ah", "ya", "yah"})

    @classmethod
    def from_settings(cls, settings: Settings) -> BargeGate:
        return cls(
            enabled=settings.soca_barge_enabled,
            min_partial_chars=settings.soca_min_partial_chars,
            min_partial_words=settings.soca_min_partial_words,
            min_confidence=settings.soca_min_confidence,
            speech_start_window=settings.soca_speech_start_window_s,
            barge_cooldown=settings.soca_barge_cooldown_s,
            filler_words=frozenset(word.lower() for word in settings.soca_filler_words),
        )

    def updated(self, changes: object) -> BargeGate:
        """This gate with the client's overrides; ValueError names a bad one."""
        if changes is None:
            return self
        if not isinstance(changes, dict):
            raise ValueError("'barge' must be an object")
        values: dict[str, Any] = {}
        for raw_key, value in changes.items():
            key = str(raw_key).lower()
            if key == "enabled":
                values[key] = _bool(value, "barge.enabled")
            elif key in ("min_partial_chars", "min_partial_words"):
                values[key] = _number(value, f"barge.{key}", 0, 1000, integer=True)
            elif key == "min_confidence":
                values[key] = _number(value, "barge.min_confidence", 0.0, 1.0)
            elif key in ("speech_start_window", "barge_cooldown"):
                values[key] = _number(value, f"barge.{key}", 0.0, 600.0)
            elif key == "filler_words":
                if (
                    not isinstance(value, list)
                    or len(value) > 200
                    or not all(isinstance(word, str) and 0 < len(word) <= 40 for word in value)
                ):
                    raise ValueError("'barge.filler_words' must be a list of at most 200 short strings")
                values[key] = frozenset(word.lower() for word in value)
            else:
                raise ValueError(f"unknown barge setting {raw_key!r}")
        return replace(self, **values)


@dataclass(frozen=True)
class Start:
    token: str | None
    session_id: str
    agent_id: str | None = None
    lang: str = "en"
    sr: int = 16000
    prompt: str | None = None
    voice: str | None = None
    partials: bool = True
    barge: BargeGate = field(default_factory=BargeGate)


def parse_start(message: object, settings: Settings) -> Start:
    """A validated start message, or ValueError with the message to send back."""
    if not isinstance(message, dict) or message.get("type") != "start":
        raise ValueError("must start with type=start")
    token = token_of(message)
    session_id = message.get("session_id")
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        raise ValueError("'session_id' must be a string of 1 to 128 letters, digits or _.:-")
    agent_id = message.get("agent_id")
    if agent_id is not None and (not isinstance(agent_id, str) or len(agent_id) > 128):
        raise ValueError("'agent_id' must be a string of at most 128 characters or null")
    lang = message.get("lang") or settings.default_language
    if not isinstance(lang, str) or len(lang) > 16:
        raise ValueError("'lang' must be a language code such as 'en' or 'id'")
    prompt = message.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT):
        raise ValueError(f"'prompt' must be a non-empty string of at most {MAX_PROMPT} characters")
    voice = message.get("voice")
    if voice is not None and (not isinstance(voice, str) or len(voice) > 64):
        raise ValueError("'voice' must be a voice id such as 'F1'")
    return Start(
        token=token,
        session_id=session_id,
        agent_id=agent_id,
        lang=lang.replace("_", "-").split("-")[0].lower(),
        sr=check_sample_rate(message.get("sr", 16000)),
        prompt=prompt,
        voice=voice,
        partials=_bool(message.get("partials", True), "partials"),
        barge=BargeGate.from_settings(settings).updated(message.get("barge")),
    )


def token_of(message: dict[str, Any]) -> str | None:
    """The key: ``token`` (the docs' example client) or ``private_key`` (their reference page)."""
    token = message.get("token")
    token = message.get("private_key") if token is None else token
    if token is not None and not isinstance(token, str):
        raise ValueError("Invalid or expired token")
    return token


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"'{name}' must be true or false")
    return value


def _number(value: object, name: str, low: float, high: float, integer: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise ValueError(f"'{name}' must be a{'n integer' if integer else ' number'} from {low} to {high}")
    return value
