"""Scripted stand-ins for the VAD, STT, LLM and TTS, for unit tests of the engine's turn logic.

The microphone is a timeline of speech and silence pushed through the real ``Session`` on its own
clock (samples received), far faster than real time. Each utterance is a constant level the fake
VAD hears as speech and the fake STT reads back as the utterance's scripted words, so a test says
what the user said and when, and the engine's decisions are the only thing under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from voxloop.audio.pcm import float_to_pcm16
from voxloop.backends.llm.base import ChatMessage, LlmEvent, TextDelta, ToolCall, ToolSpec
from voxloop.backends.stt.base import Transcript
from voxloop.backends.tts.base import SpeechChunk, Voice
from voxloop.backends.tts.voices import UnknownLanguage
from voxloop.config import Settings
from voxloop.engine.session import Session

RATE = 16000
VAD_FRAME = 512
SPEECH_ABOVE = 0.05  # a frame louder than this is speech to the fake VAD
WORD_S = 0.02  # reply audio per spoken word
CHUNK_S = 0.02  # the fake microphone sends 20 ms at a time


class LevelVad:
    """Speech is any frame louder than ``SPEECH_ABOVE``."""

    sample_rate = RATE
    frame_samples = VAD_FRAME

    def new_stream(self) -> LevelVad:
        return self

    def probability(self, frame: np.ndarray) -> float:
        return 1.0 if float(np.abs(frame).max(initial=0.0)) > SPEECH_ABOVE else 0.0

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Utterance:
    text: str
    language: str
    confidence: float


class ScriptedStt:
    """Reads each utterance back from its level; audio holding several reads as their words in order."""

    sample_rate = RATE

    def __init__(self) -> None:
        self.utterances: dict[int, Utterance] = {}
        self.calls = 0

    def level_for(self, text: str, language: str = "en", confidence: float = 0.9) -> float:
        key = len(self.utterances) + 1
        self.utterances[key] = Utterance(text, language, confidence)
        return self._level(key)

    @staticmethod
    def _level(key: int) -> float:
        return 0.1 + 0.01 * key

    def transcribe(
        self, audio: np.ndarray, language: str | None = None, *, keyterms: Sequence[str] | None = None
    ) -> Transcript:
        self.calls += 1
        keys = [round((abs(float(x)) - 0.1) / 0.01) for x in audio if abs(float(x)) > SPEECH_ABOVE]
        heard = [self.utterances[k] for k in dict.fromkeys(keys) if k in self.utterances]
        if not heard:
            return Transcript("", language or "en", len(audio) / RATE, confidence=0.0)
        spoken = heard[-1].language
        # like Whisper: a transcript forced into the wrong language comes back unsure
        confidence = min(u.confidence for u in heard) if language in (None, spoken) else 0.2
        text = " ".join(u.text for u in heard)
        return Transcript(text, language or spoken, len(audio) / RATE, confidence=confidence)


@dataclass
class Reply:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    after_tools: str = ""  # the answer once the tools' results are in


class ScriptedLlm:
    """Answers each user text with its scripted reply ("You said: ..." when none), word by word.

    ``gate`` (when set by a test) holds every stream before its first word, so a test can act while
    a reply is being prepared; ``requests`` keeps the context of each call."""

    name = "scripted"
    accepts_images = False

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.requests: list[list[ChatMessage]] = []
        self.gate: asyncio.Event | None = None
        self.closed = 0  # streams closed before their end (a reply thrown away)

    def script(self, user_text: str, reply: str, *calls: ToolCall, after_tools: str = "") -> None:
        self.replies[user_text] = Reply(reply, list(calls), after_tools)

    async def stream(
        self,
        messages: list[ChatMessage],
        tools: list[ToolSpec] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[LlmEvent]:
        self.requests.append(list(messages))
        finished = False
        try:
            if self.gate is not None:
                await self.gate.wait()
            asked = next((m.content for m in reversed(messages) if m.role == "user"), "")
            reply = self.replies.get(asked, Reply(f"You said: {asked}."))
            if messages[-1].role == "tool":
                words, calls = reply.after_tools, []
            else:
                words, calls = reply.text, reply.tool_calls
            for index, word in enumerate(words.split()):
                await asyncio.sleep(0)
                yield TextDelta(word if index == 0 else " " + word)
            for call in calls:
                yield call
            finished = True
        finally:
            self.closed += not finished


class FakeSpeaker:
    """Speaks English and Spanish: each word is ``WORD_S`` of silence (no echo to cancel)."""

    def __init__(self) -> None:
        self.spoken: list[str] = []

    def languages(self) -> list[str]:
        return ["en", "es"]

    def resolve(self, voice_id: str | None = None, language: str | None = None) -> Voice:
        language = language or "en"
        if language not in self.languages():
            raise UnknownLanguage(f"no voice speaks {language!r}")
        return Voice(f"fake-{language}", f"fake {language}", "female", (language,), "fake")

    def language_of(self, language: str | None, voice: Voice) -> str:
        if language and language not in voice.languages:
            raise UnknownLanguage(f"voice {voice.id!r} does not speak {language!r}")
        return language or voice.languages[0]

    def synthesize(self, text: str, voice: Voice, language: str, speed: float = 1.0) -> Iterator[SpeechChunk]:
        self.spoken.append(text)
        samples = int(len(text.split()) * WORD_S * RATE)
        yield SpeechChunk(np.zeros(samples, np.float32), RATE, text)


@dataclass
class FakeBackends:
    """The shape of ``Backends`` the engine uses."""

    settings: Settings = field(default_factory=lambda: Settings(warmup=False))
    vad: LevelVad = field(default_factory=LevelVad)
    stt: ScriptedStt = field(default_factory=ScriptedStt)
    speaker: FakeSpeaker = field(default_factory=FakeSpeaker)
    llm: ScriptedLlm = field(default_factory=ScriptedLlm)


class Microphone:
    """A user on the session's sample clock: ``say`` and ``pause`` push audio 20 ms at a time,
    letting the session's tasks run between chunks, as a real stream would."""

    def __init__(self, session: Session, stt: ScriptedStt) -> None:
        self.session, self.stt = session, stt

    async def say(
        self, text: str, seconds: float = 0.6, language: str = "en", confidence: float = 0.9
    ) -> None:
        level = self.stt.level_for(text, language, confidence)
        await self._push(np.full(int(seconds * RATE), level, np.float32))

    async def pause(self, seconds: float) -> None:
        await self._push(np.zeros(int(seconds * RATE), np.float32))

    async def _push(self, samples: np.ndarray) -> None:
        step = int(CHUNK_S * RATE)
        for start in range(0, len(samples), step):
            await self.session.push_audio(float_to_pcm16(samples[start : start + step]))
            await asyncio.sleep(0)
