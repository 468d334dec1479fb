"""All settings in one place, with their defaults.

Read from environment variables prefixed ``VOXLOOP_`` and, optionally, from a TOML file named by
``VOXLOOP_CONFIG`` (environment wins). Lists such as ``VOXLOOP_API_KEYS`` are comma-separated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voxloop"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "voxloop"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOXLOOP_", extra="ignore")

    # --- server ---
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Accepted API keys; empty accepts any client (logged)."
    )
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Assembled model files.")
    warmup: bool = True
    data_dir: Path = Field(default_factory=_default_data_dir, description="API keys and history (SQLite).")
    keys_db: Path | None = Field(None, description="API key store; default <data_dir>/keys.db.")
    history_db: Path | None = Field(None, description="Conversation history; default <data_dir>/history.db.")
    history_enabled: bool = True
    # --- shared state for many nodes (docs/scaling.md); unset: SQLite and in-process state ---
    redis_url: str = Field("", description="Redis: session leases, budgets, revocation, Soca resume, nodes.")
    database_url: str = Field("", description="PostgreSQL for API keys and conversation history.")
    lease_ttl_s: float = Field(
        15, gt=0, description="A dead node's sessions free their keys' places in this."
    )
    node_id: str = Field("", description="This node's name in the registry; default <hostname>-<port>.")
    node_address: str = Field("", description="Where the balancer reaches this node; default <host>:<port>.")
    header_timeout_s: float = Field(10, gt=0, description="Time a request has to send its headers.")
    metrics_require_key: bool = Field(False, description="GET /metrics needs an API key.")
    metrics_port: int = Field(0, ge=0, description="Serve /metrics on this port instead (0: main port).")
    metrics_host: str = Field("127.0.0.1", description="Address of the separate metrics port.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed (CORS, WebSocket Origin); empty: no CORS, any origin.",
    )

    # --- limits: per API key (0 = unlimited; a stored key may carry its own) and per session ---
    key_max_sessions: int = Field(0, ge=0, description="Open sessions per key.")
    key_messages_per_s: float = Field(0, ge=0, description="Client messages per second per key.")
    key_audio_s_per_min: float = Field(0, ge=0, description="Seconds of audio per minute per key.")
    max_message_bytes: int = Field(4 << 20, ge=1024, description="Largest WebSocket message.")
    max_session_s: float = Field(4 * 3600, ge=0, description="Longest session (0 = unlimited).")
    max_conversations: int = Field(
        2,
        ge=0,
        description="Open sessions this machine serves at once, over all keys (0 = unlimited); "
        "2 on the 2-core reference machine (docs/capacity-profile.md).",
    )
    admission_max_lag_s: float = Field(
        3.0, ge=0, description="Refuse new sessions while waiting users' inference is this late (0 = off)."
    )
    idle_timeout_s: float = Field(600, ge=0, description="A session with no client message this long ends.")
    drain_timeout_s: float = Field(5, ge=0, description="On SIGTERM, time given to sessions to close.")
    drain_grace_s: float = Field(
        0,
        ge=0,
        description="On SIGTERM, time open sessions may go on and end by themselves (readiness already "
        "false, new sessions refused) before they are told to close; for nodes behind a balancer.",
    )

    # --- speech-to-text (faster-whisper, CTranslate2 directories) ---
    stt_model_en: str = Field("tiny.en", description="'tiny.en' (embedded) or a CTranslate2 dir.")
    stt_model_multilingual: str = Field("base", description="'base' (embedded) or a CT2 dir.")
    stt_threads: int = 2
    stt_beam_size: int = 1

    # --- text-to-speech ---
    tts_threads: int = 1
    default_voice: str = "F1"
    default_language: str = "en"
    max_tts_chars: int = Field(5000, description="Longest text one TTS request may carry.")

    # --- turn-taking (voice agent) ---
    turn_hangover_ms: int = Field(480, description="Silence that ends the user's turn.")
    turn_min_speech_ms: int = Field(96, description="Voiced time before speech counts as started.")
    turn_pre_roll_ms: int = Field(320, description="Audio kept from before the detected speech start.")

    # --- language model ---
    llm_backend: Literal["llama", "openai"] = "llama"
    llm_model: str = Field("qwen2.5-0.5b", description="'qwen2.5-0.5b', 'qwen2.5-1.5b' or a .gguf")
    llm_context: int = 4096
    llm_threads: int = 1
    llm_batch_threads: int = 2  # prompt evaluation: the STT is done by then, so both cores are free
    llm_base_url: str = Field(
        "http://127.0.0.1:8000/v1",
        description="OpenAI-compatible server; a comma-separated list is a pool of replicas (failover).",
    )
    llm_health_interval_s: float = Field(5.0, gt=0, description="How often a pool's servers are probed.")
    llm_api_key: str = ""
    llm_remote_model: str = "default"
    llm_vision: bool = Field(False, description="The remote model accepts images (video frames).")
    llm_timeout_s: float = 30.0
    llm_max_tokens: int = 256
    llm_temperature: float = 0.6
    # The embedded model's KV cache: a sequence per conversation being answered or kept between
    # turns (the least recently used gives way), sharing this many cells (~12 KB each for the 0.5B).
    llm_slots: int = Field(8, ge=1, le=64)
    llm_cache_tokens: int = Field(16384, ge=256)
    spoken_style: bool = Field(
        True, description="Append a 'short, plain spoken sentences' instruction to every prompt."
    )
    echo_canceller: bool = Field(
        True,
        description="Run Speex's adaptive echo canceller behind the one-tap echo guard (where "
        "libspeexdsp is found); false leaves the one-tap subtraction alone.",
    )
    server_tools: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Built-in server-side tools to offer the LLM, e.g. get_current_time.",
    )

    # --- Soca voice WebSocket (seed 003): barge-in gate defaults and reconnects ---
    soca_barge_enabled: bool = True
    soca_min_partial_chars: int = Field(10, description="Characters a partial needs to barge in.")
    soca_min_partial_words: int = Field(2, description="Words (fillers aside) a partial needs to barge in.")
    soca_min_confidence: float = Field(0.30, description="STT confidence a partial needs to barge in.")
    soca_speech_start_window_s: float = Field(1.5, description="Speech after VAD start to find words in.")
    soca_barge_cooldown_s: float = Field(0.8, description="Minimum time between two barge-ins.")
    soca_filler_words: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["uh", "um", "hmm", "eh", "ah", "ya", "yah"],
        description="Words that never barge in.",
    )
    soca_resume_grace_s: float = Field(120.0, description="How long a closed session can be resumed.")
    soca_resume_capacity: int = Field(1000, description="Closed sessions kept for resuming, at most.")

    @field_validator("api_keys", "server_tools", "soca_filler_words", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("VOXLOOP_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @property
    def keys_path(self) -> Path:
        return self.keys_db or self.data_dir / "keys.db"

    @property
    def history_path(self) -> Path:
        return self.history_db or self.data_dir / "history.db"
