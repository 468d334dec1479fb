"""The Realtime session object: ``session.update`` in the GA or the beta shape, and rendering it back.

GA: ``{"type": "realtime", "instructions", "output_modalities", "audio": {"input": {"format",
"transcription", "turn_detection"}, "output": {"format", "voice", "speed"}}, "tools", "tool_choice",
"max_output_tokens"}``. Beta: ``{"modalities", "instructions", "voice", "input_audio_format",
"output_audio_format", "input_audio_transcription", "turn_detection", "tools", "tool_choice",
"temperature", "max_response_output_tokens"}``. Both are accepted on every connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voxloop.protocols.realtime.wire import RealtimeError

FORMATS = {"pcm16": 24000, "g711_ulaw": 8000, "g711_alaw": 8000}  # wire format -> sample rate
GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
BETA_KEYS = frozenset(
    {
        "modalities",
        "voice",
        "input_audio_format",
        "output_audio_format",
        "input_audio_transcription",
        "turn_detection",
        "temperature",
        "max_response_output_tokens",
    }
)
MAX_INSTRUCTIONS = 20000
MAX_TOOLS = 64


# semantic_vad eagerness -> (how sure Smart Turn must be to end a turn early, the longest a
# mid-sentence pause is waited out in ms): "low" lets the user take their time, "high" answers soon.
SEMANTIC_EAGERNESS = {"low": (0.95, 3000), "medium": (0.85, 1500), "auto": (0.85, 1500), "high": (0.6, 800)}


def semantic_turn(turn: dict[str, Any]) -> dict[str, Any]:
    """The engine's end-of-turn settings (SegmenterConfig fields) for a turn_detection object."""
    if turn.get("type") != "semantic_vad":
        return {"smart_turn": False}  # server_vad: the silence duration alone, as documented
    probability, max_hangover_ms = SEMANTIC_EAGERNESS[turn["eagerness"]]
    return {"smart_turn": True, "early_end_probability": probability, "max_hangover_ms": max_hangover_ms}


def default_turn_detection() -> dict[str, Any]:
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
    }


@dataclass
class RealtimeConfig:
    instructions: str = "You are a helpful voice assistant."
    voice: str = "alloy"
    input_format: str = "pcm16"
    output_format: str = "pcm16"
    audio_out: bool = True  # output modality audio (with its transcript) or text only
    turn_detection: dict[str, Any] | None = field(default_factory=default_turn_detection)
    transcription: dict[str, Any] | None = None  # input transcription events only when set
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    temperature: float = 0.8
    max_output_tokens: int | str = "inf"
    speed: float = 1.0

    @property
    def input_rate(self) -> int:
        return FORMATS[self.input_format]

    @property
    def output_rate(self) -> int:
        return FORMATS[self.output_format]


def is_beta_shape(session: dict[str, Any]) -> bool:
    return session.get("type") is None and bool(BETA_KEYS & session.keys())


def apply_update(config: RealtimeConfig, session: object) -> RealtimeConfig:
    """A copy of ``config`` with the update applied; RealtimeError (nothing changed) when invalid."""
    if not isinstance(session, dict):
        raise RealtimeError("'session' must be an object", "invalid_type", "session")
    new = RealtimeConfig(**vars(config))
    kind = session.get("type")
    if kind not in (None, "realtime"):
        raise RealtimeError(f"unsupported session type {kind!r}; use 'realtime'", param="session.type")
    if "instructions" in session:
        new.instructions = _text(session["instructions"], "session.instructions", MAX_INSTRUCTIONS)
    for key in ("output_modalities", "modalities"):
        if key in session:
            new.audio_out = _modalities(session[key], f"session.{key}")
    # beta, flat
    if "voice" in session:
        new.voice = _text(session["voice"], "session.voice", 100)
    if "input_audio_format" in session:
        new.input_format = _beta_format(session["input_audio_format"], "session.input_audio_format")
    if "output_audio_format" in session:
        new.output_format = _beta_format(session["output_audio_format"], "session.output_audio_format")
    if "turn_detection" in session:
        new.turn_detection = _turn_detection(session["turn_detection"], "session.turn_detection")
    if "input_audio_transcription" in session:
        new.transcription = _optional_object(
            session["input_audio_transcription"], "input_audio_transcription"
        )
    if "temperature" in session:
        value = session["temperature"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
            raise RealtimeError("temperature must be a number from 0 to 2", param="session.temperature")
        new.temperature = float(value)
    for key in ("max_output_tokens", "max_response_output_tokens"):
        if key in session:
            new.max_output_tokens = _max_tokens(session[key], f"session.{key}")
    if "speed" in session:
        new.speed = _speed(session["speed"], "session.speed")
    # GA, nested under audio
    audio = session.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            raise RealtimeError("'audio' must be an object", "invalid_type", "session.audio")
        _apply_audio(new, audio)
    if "tools" in session:
        new.tools = _tools(session["tools"])
    if "tool_choice" in session:
        new.tool_choice = _tool_choice(session["tool_choice"], new.tools)
    return new


def _apply_audio(new: RealtimeConfig, audio: dict[str, Any]) -> None:
    inputs, outputs = audio.get("input") or {}, audio.get("output") or {}
    if not isinstance(inputs, dict) or not isinstance(outputs, dict):
        raise RealtimeError(
            "'audio.input' and 'audio.output' must be objects", "invalid_type", "session.audio"
        )
    if "format" in inputs:
        new.input_format = _ga_format(inputs["format"], "session.audio.input.format")
    if "turn_detection" in inputs:
        new.turn_detection = _turn_detection(inputs["turn_detection"], "session.audio.input.turn_detection")
    if "transcription" in inputs:
        new.transcription = _optional_object(inputs["transcription"], "session.audio.input.transcription")
    if "format" in outputs:
        new.output_format = _ga_format(outputs["format"], "session.audio.output.format")
    if "voice" in outputs:
        voice = outputs["voice"]
        new.voice = _text(
            voice.get("id") if isinstance(voice, dict) else voice, "session.audio.output.voice", 100
        )
    if "speed" in outputs:
        new.speed = _speed(outputs["speed"], "session.audio.output.speed")


def render(config: RealtimeConfig, beta: bool, session_id: str, model: str) -> dict[str, Any]:
    """The session object as the dialect's ``session.created``/``session.updated`` carries it."""
    modalities = ["audio"] if config.audio_out else ["text"]
    if beta:
        return {
            "id": session_id,
            "object": "realtime.session",
            "model": model,
            "modalities": ["text", "audio"] if config.audio_out else ["text"],
            "instructions": config.instructions,
            "voice": config.voice,
            "input_audio_format": config.input_format,
            "output_audio_format": config.output_format,
            "input_audio_transcription": config.transcription,
            "turn_detection": config.turn_detection,
            "tools": config.tools,
            "tool_choice": config.tool_choice,
            "temperature": config.temperature,
            "max_response_output_tokens": config.max_output_tokens,
            "speed": config.speed,
        }
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": modalities,
        "instructions": config.instructions,
        "audio": {
            "input": {
                "format": _ga_format_object(config.input_format),
                "transcription": config.transcription,
                "noise_reduction": None,
                "turn_detection": config.turn_detection,
            },
            "output": {
                "format": _ga_format_object(config.output_format),
                "voice": config.voice,
                "speed": config.speed,
            },
        },
        "tools": config.tools,
        "tool_choice": config.tool_choice,
        "max_output_tokens": config.max_output_tokens,
    }


def _ga_format_object(name: str) -> dict[str, Any]:
    if name == "pcm16":
        return {"type": "audio/pcm", "rate": 24000}
    return {"type": "audio/pcmu" if name == "g711_ulaw" else "audio/pcma"}


def _text(value: object, param: str, limit: int) -> str:
    if not isinstance(value, str):
        raise RealtimeError(f"'{param}' must be a string", "invalid_type", param)
    if len(value) > limit:
        raise RealtimeError(f"'{param}' is too long (at most {limit} characters)", param=param)
    return value


def _modalities(value: object, param: str) -> bool:
    """True when audio is produced."""
    if not isinstance(value, list) or not value or not all(v in ("text", "audio") for v in value):
        raise RealtimeError(f"'{param}' must be a list of 'text' and/or 'audio'", param=param)
    return "audio" in value


def _beta_format(value: object, param: str) -> str:
    if not isinstance(value, str) or value not in FORMATS:  # a list or dict is no key (and unhashable)
        raise RealtimeError(f"unsupported audio format {value!r}; use one of {list(FORMATS)}", param=param)
    return str(value)


def _ga_format(value: object, param: str) -> str:
    if isinstance(value, str):
        return _beta_format(value, param)
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("type"), str)
        or value["type"] not in GA_FORMATS
    ):
        raise RealtimeError(f"unsupported audio format {value!r}; use one of {list(GA_FORMATS)}", param=param)
    name = GA_FORMATS[value["type"]]
    if name == "pcm16" and value.get("rate", 24000) != 24000:
        raise RealtimeError("audio/pcm is supported at rate 24000 only", param=f"{param}.rate")
    return name


def _turn_detection(value: object, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RealtimeError(f"'{param}' must be an object or null", "invalid_type", param)
    kind = value.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise RealtimeError(f"unsupported turn detection {kind!r}; use 'server_vad' or null", param=param)
    turn = default_turn_detection()
    if kind == "semantic_vad":  # the engine's end-of-turn model; eagerness sets how it waits
        eagerness = value.get("eagerness") or "auto"
        if eagerness not in SEMANTIC_EAGERNESS:
            raise RealtimeError(
                f"'eagerness' must be one of {sorted(SEMANTIC_EAGERNESS)}", param=f"{param}.eagerness"
            )
        turn.update(type=kind, eagerness=eagerness)
    for key, low, high in (
        ("threshold", 0.0, 1.0),
        ("prefix_padding_ms", 0, 5000),
        ("silence_duration_ms", 50, 10000),
    ):
        if key in value and value[key] is not None:
            number = value[key]
            if isinstance(number, bool) or not isinstance(number, int | float) or not low <= number <= high:
                raise RealtimeError(f"'{key}' must be a number from {low} to {high}", param=f"{param}.{key}")
            turn[key] = number
    for key in ("create_response", "interrupt_response"):
        if key in value and value[key] is not None:
            if not isinstance(value[key], bool):
                raise RealtimeError(f"'{key}' must be true or false", "invalid_type", f"{param}.{key}")
            turn[key] = value[key]
    return turn


def _optional_object(value: object, param: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise RealtimeError(f"'{param}' must be an object or null", "invalid_type", param)
    return value


def _max_tokens(value: object, param: str) -> int | str:
    if value == "inf" or value is None:
        return "inf"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise RealtimeError(f"'{param}' must be an integer from 1 to 4096 or 'inf'", param=param)
    return value


def _speed(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.25 <= value <= 1.5:
        raise RealtimeError(f"'{param}' must be a number from 0.25 to 1.5", param=param)
    return float(value)


def _tools(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise RealtimeError(f"'tools' must be a list of at most {MAX_TOOLS} tools", param="session.tools")
    tools = []
    for index, tool in enumerate(value):
        param = f"session.tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise RealtimeError("only tools of type 'function' are supported", param=param)
        name = tool.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RealtimeError("each tool needs a 'name'", "missing_required_parameter", f"{param}.name")
        parameters = tool.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise RealtimeError("'parameters' must be a JSON schema object", param=f"{param}.parameters")
        description = tool.get("description") or ""
        tools.append(
            {
                "type": "function",
                "name": name.strip(),
                "description": str(description),
                "parameters": parameters,
            }
        )
    return tools


def _tool_choice(value: object, tools: list[dict[str, Any]]) -> str | dict[str, Any]:
    if value in ("auto", "none", "required"):
        return str(value)
    if isinstance(value, dict) and value.get("type") == "function":
        if not any(tool["name"] == value.get("name") for tool in tools):
            raise RealtimeError("tool_choice names a tool that is not declared", param="session.tool_choice")
        return value
    raise RealtimeError(
        "tool_choice must be 'auto', 'none', 'required' or a function", param="session.tool_choice"
    )
