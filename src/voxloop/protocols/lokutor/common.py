"""Pieces shared by the Lokutor endpoints."""

from __future__ import annotations

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
