"""The Soca ``start`` message: the first message of every connection, which also authenticates.

``{"type": "start", "token" (or "private_key"), "session_id", "agent_id", "lang", "sr"}`` plus
voxloop extensions: ``prompt``, ``voice``, ``partials`` and ``barge`` (the barge-in gate, keys as
in the Soca docs in either case: ``min_partial_chars``, ``min_partial_words``, ``min_confidence``,
``speech_start_window``, ``barge_cooldown``, ``filler_words``, plus ``enabled``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from voxloop.config import Settings
from voxloop.engine.barge_in import BargeInRules
from voxloop.protocols.common import SESSION_ID, check_sample_rate

MAX_PROMPT = 20000


# The Soca barge-in gate (a partial transcript interrupts the reply only if ALL hold), by its docs'
# names, and the engine's BargeInRules field each one sets.
BARGE_KEYS = {
    "enabled": "enabled",
    "min_partial_chars": "min_chars",
    "min_partial_words": "min_words",
    "min_confidence": "min_confidence",
    "speech_start_window": "window_s",  # seconds of speech in which qualifying words must come
    "barge_cooldown": "cooldown_s",  # seconds between two barge-ins
    "filler_words": "filler_words",
}
SOCA_FILLERS = frozenset({"uh", "um", "hmm", "eh", "ah", "ya", "yah"})
SOCA_BARGE_IN = BargeInRules(
    min_chars=10,
    min_words=2,
    min_confidence=0.30,
    window_s=1.5,
    cooldown_s=0.8,
    filler_words=SOCA_FILLERS,
    backchannels=frozenset(),  # every non-filler word counts, as documented
)


def barge_rules(settings: Settings) -> BargeInRules:
    """The server's Soca gate (VOXLOOP_SOCA_*), the documented one unless configured."""
    return BargeInRules(
        enabled=settings.soca_barge_enabled,
        min_chars=settings.soca_min_partial_chars,
        min_words=settings.soca_min_partial_words,
        min_confidence=settings.soca_min_confidence,
        window_s=settings.soca_speech_start_window_s,
        cooldown_s=settings.soca_barge_cooldown_s,
        filler_words=frozenset(word.lower() for word in settings.soca_filler_words),
        backchannels=frozenset(),  # Soca's documented rules: every non-filler word counts
    )


def with_barge_overrides(rules: BargeInRules, changes: object) -> BargeInRules:
    """``rules`` with the client's ``barge`` overrides (Soca's names); ValueError names a bad one."""
    if changes is None:
        return rules
    if not isinstance(changes, dict):
        raise ValueError("'barge' must be an object")
    values: dict[str, Any] = {}
    for raw_key, value in changes.items():
        key = str(raw_key).lower()
        if key == "enabled":
            value = _bool(value, "barge.enabled")
        elif key in ("min_partial_chars", "min_partial_words"):
            value = _number(value, f"barge.{key}", 0, 1000, integer=True)
        elif key == "min_confidence":
            value = _number(value, "barge.min_confidence", 0.0, 1.0)
        elif key in ("speech_start_window", "barge_cooldown"):
            value = _number(value, f"barge.{key}", 0.0, 600.0)
        elif key == "filler_words":
            if (
                not isinstance(value, list)
                or len(value) > 200
                or not all(isinstance(word, str) and 0 < len(word) <= 40 for word in value)
            ):
                raise ValueError("'barge.filler_words' must be a list of at most 200 short strings")
            value = frozenset(word.lower() for word in value)
        else:
            raise ValueError(f"unknown barge setting {raw_key!r}")
        values[BARGE_KEYS[key]] = value
    return replace(rules, **values)


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
    barge: BargeInRules = field(default_factory=lambda: replace(SOCA_BARGE_IN))


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
        barge=with_barge_overrides(barge_rules(settings), message.get("barge")),
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
