"""Builds the process-wide backends from the settings: each model loads once per process."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from voxloop.backends.llm.base import LanguageModel
from voxloop.backends.llm.factory import create_llm
from voxloop.backends.stt.base import SpeechToText
from voxloop.backends.stt.whisper import WhisperStt
from voxloop.backends.tts.voices import Speaker
from voxloop.backends.vad.base import VoiceActivityDetector
from voxloop.backends.vad.silero import SileroVad
from voxloop.config import Settings

log = logging.getLogger(__name__)


@dataclass
class Backends:
    settings: Settings
    vad: VoiceActivityDetector
    stt: SpeechToText
    speaker: Speaker
    llm: LanguageModel

    @classmethod
    def create(cls, settings: Settings) -> Backends:
        """Cheap: models load lazily, or all at once in warmup()."""
        return cls(settings, SileroVad(), WhisperStt(settings), Speaker(settings), create_llm(settings))

    def warmup(self) -> None:
        """Load every model and run it once, so the first user does not pay for it (blocking)."""
        for name, part in (("tts", self.speaker), ("stt", self.stt), ("llm", self.llm)):
            started = time.perf_counter()
            warm = getattr(part, "warmup", None)
            if warm is not None:
                warm()
            log.info("%s ready in %.2f s", name, time.perf_counter() - started)
