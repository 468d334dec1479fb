"""A spoken conversation: the front that protocols use.

Protocols feed it audio and configuration and forward its canonical events (``next_event``).
The session clock is samples received; wall time paces reply audio and fills the silence of
clients that stop sending audio between utterances.

The work is split three ways: ``TurnTaker`` (engine/turns.py) cuts the microphone into turns,
speculates and decides barge-ins; ``Player`` (engine/player.py) sends reply audio at the pace it
is heard; the session holds the replies (each a ``ReplyHandle``), the history, tools, language and
the outbox of events, and its tasks live in one ``SessionTasks``.

Besides the microphone, protocols may start turns themselves (``reply``: typed text, a decoded
clip, or a manual ``response.create``; ``audio_turn`` for a whole utterance), interrupt, stop
listening and hold the reply audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxloop.audio.pcm import StreamResampler, pcm16_to_float, resample
from voxloop.backends import workers
from voxloop.backends.llm.base import ChatMessage, ToolCall, ToolSpec
from voxloop.backends.registry import Backends
from voxloop.backends.scheduler import JobKind
from voxloop.backends.stt.base import Transcript
from voxloop.backends.tts.voices import UnknownLanguage
from voxloop.engine import events
from voxloop.engine.barge_in import FILLERS, BargeInRules
from voxloop.engine.echo import RATE as VAD_RATE  # one 16 kHz clock: VAD, echo guard, STT
from voxloop.engine.echo import EchoGuard
from voxloop.engine.history import History
from voxloop.engine.player import Player
from voxloop.engine.reply import ReplyHandle, Source
from voxloop.engine.response import CLIENT_TOOL_TIMEOUT_S, Response, TurnSetup
from voxloop.engine.segmenter import SegmenterConfig, UtteranceSegmenter
from voxloop.engine.tasks import SessionTasks
from voxloop.engine.tools import ToolRegistry
from voxloop.engine.turns import PendingTurn, TurnTaker
from voxloop.service.metrics import INTERRUPTIONS, TURN_LATENCY

log = logging.getLogger(__name__)

OUTBOX_SIZE = 512  # events waiting for a slow client
CLIENT_STALL_S = 10.0  # a client that reads nothing for this long is dropped
AUDIO_SLICE = 2048  # input is processed in slices, so a huge frame cannot wrap the echo rings
MAX_IMAGES = 4  # visual context frames given with a user message
KEEP_DONE_REPLIES = 8  # finished replies whose handles stay findable by id (late lookups)
SAME_LANGUAGE_CONFIDENCE = 0.45  # below this, a transcript in the last language is re-detected


@dataclass
class SessionConfig:
    prompt: str = "You are a helpful voice assistant."
    voice: str | None = None
    language: str = "en"  # the reply's language (and the STT's, unless detect_language)
    detect_language: bool = False  # the STT detects what the user speaks
    follow_language: bool = True  # with detect_language: reply in the detected language
    speed: float = 1.0
    visemes: bool = False
    input_rate: int = 44100
    output_rate: int = 44100
    max_context_messages: int = 20
    client_tools: list[ToolSpec] = field(default_factory=list)
    temperature: float | None = None  # None: the LLM backend's default
    max_tokens: int | None = None
    turn: SegmenterConfig = field(default_factory=SegmenterConfig)
    barge_in: BargeInRules = field(default_factory=BargeInRules)
    auto_reply: bool = True  # False: a finished turn is only transcribed and added to the history
    tool_filler: bool = True  # a tool slower than a second gets a spoken "One moment, please."
    frame_ms: int | None = 40  # reply audio frames; None: one AudioOut per spoken piece
    speculate_after_s: float = 0.1  # silence after which a reply is prepared speculatively
    partials: bool = False  # transcribe the utterance under way now and then (costs STT time)
    partial_every_s: float = 0.7
    min_words: int = 1  # words (fillers aside) an utterance needs to start a turn
    filler_words: frozenset[str] = FILLERS


class Session:
    """The front of a conversation: protocols configure it, feed it audio and turns, and read its
    events. Turn-taking lives in ``turns`` (TurnTaker), reply audio in ``player`` (Player)."""

    def __init__(
        self, backends: Backends, config: SessionConfig | None = None, tools: ToolRegistry | None = None
    ) -> None:
        self.backends = backends
        self.config = config or SessionConfig()
        self.server_tools = tools or ToolRegistry()
        self.history = History(self.config.prompt, self.config.max_context_messages)
        self.voice = backends.speaker.resolve(self.config.voice, self.config.language)
        self.echo = EchoGuard(adaptive=backends.settings.echo_canceller)
        self.next_turn: str | None = None  # words said over a reply that did not interrupt it
        vad = backends.vad
        segmenter = UtteranceSegmenter(vad.new_stream(), vad.frame_samples, self.config.turn, VAD_RATE)
        self.turns = TurnTaker(self, segmenter)
        self.resampler = StreamResampler(self.config.input_rate, VAD_RATE)
        self.outbox: asyncio.Queue[events.Event] = asyncio.Queue(OUTBOX_SIZE)
        self.stalled = asyncio.Event()  # set when the client stopped reading: the protocol hangs up
        self.generation = 0
        self.oldest_live_generation = 0  # events of older generations are dropped
        self.current: Response | None = None  # the released reply, playing or paused
        self.player = Player(self.emit, self.echo, lambda: self.config.visemes)
        self.playing: asyncio.Task[None] | None = None  # the player's task for ``current``
        self.tasks = SessionTasks(self._task_failed)
        self.listening = True
        self.images: list[str] = []
        self.spoken_language = ""  # what the user spoke last (detect_language)
        self.replies: dict[int, ReplyHandle] = {}  # live replies and the last few finished ones
        self.tool_waiters: dict[str, tuple[ReplyHandle, asyncio.Future[str]]] = {}  # by call_id
        self.closed = False
        self.idle_watch = self._spawn(self.turns.fill_silence())

    @property
    def segmenter(self) -> UtteranceSegmenter:
        return self.turns.segmenter

    @property
    def pending(self) -> PendingTurn | None:
        return self.turns.pending

    # ---- configuration -------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Applies config changes; a bad voice or language raises ValueError and changes nothing."""
        config, speaker = self.config, self.backends.speaker
        if "voice" in changes or "language" in changes:
            voice_id = changes.get("voice", config.voice)
            language = changes.get("language", config.language)
            try:
                voice = speaker.resolve(voice_id, language)
            except UnknownLanguage:
                if "language" in changes:
                    raise
                voice = speaker.resolve(voice_id, None)  # a voice of another language brings its own
                language = None
            changes["language"] = speaker.language_of(language, voice)
            self.voice = voice
        for key, value in changes.items():
            setattr(config, key, value)
        self.history.prompt = config.prompt
        self.history.max_messages = config.max_context_messages
        if "input_rate" in changes:
            self.resampler = StreamResampler(config.input_rate, VAD_RATE)
        if "turn" in changes:
            vad = self.backends.vad
            vad_stream = self.segmenter.vad
            self.turns.segmenter = UtteranceSegmenter(vad_stream, vad.frame_samples, config.turn, VAD_RATE)

    # ---- input ---------------------------------------------------------------------------

    async def push_audio(self, pcm: bytes) -> None:
        """Microphone audio, S16LE mono at ``config.input_rate``."""
        self.turns.last_audio_at = time.monotonic()
        samples = self.resampler.process(pcm16_to_float(pcm))
        for start in range(0, len(samples), AUDIO_SLICE):
            cleaned = self.echo.process(samples[start : start + AUDIO_SLICE])
            if self.listening:
                await self.turns.consume(cleaned)

    async def reply(self, text: str | None, tag: Any = None, language: str = "") -> ReplyHandle:
        """A turn that did not come from the microphone: typed text, a decoded clip, or (None) a
        reply to the history as it stands. Cuts whatever is playing. ``tag`` is the protocol's
        state for the reply, on its handle before the reply's first event goes out; ``language``
        what the user spoke, when an audio turn detected it."""
        self.turns.drop_pending()
        if self.current is not None:
            await self._interrupt(self.current, "new_input")
        reply = self._new_reply(text, "text" if text is not None else "manual", time.monotonic())
        reply.tag, reply.response.user_language = tag, language
        await self._release(reply.response)
        return reply

    def handle(self, reply_id: int) -> ReplyHandle | None:
        """The reply with this id (an event's ``generation``); None once long forgotten."""
        return self.replies.get(reply_id)

    def waiting_reply(self, call_id: str) -> ReplyHandle | None:
        """The reply waiting for the client's result of tool call ``call_id``, if one is."""
        waiting = self.tool_waiters.get(call_id)
        return waiting[0] if waiting is not None else None

    def _new_reply(self, text: str | None, source: Source, speech_end: float) -> ReplyHandle:
        self.generation += 1
        response = Response(self.generation, text, self._setup(), self.emit, speech_end)
        reply = ReplyHandle(response, source, self._cut)
        self.replies[reply.id] = reply
        finished = [old for old in self.replies.values() if old.done()]
        for old in finished[:-KEEP_DONE_REPLIES]:
            del self.replies[old.id]
        response.start()
        return reply

    async def _cut(self, reply: ReplyHandle, reason: str) -> None:
        if self.current is reply.response:
            await self._interrupt(reply.response, reason)
        elif self.turns.pending is not None and self.turns.pending.reply is reply:
            self.turns.drop_pending()

    def _discard(self, response: Response) -> None:
        """A reply that never went out (speculation thrown away, or the session closed)."""
        if (reply := self.replies.get(response.generation)) is not None:
            reply.finish("", interrupted=True, reason="discarded")

    async def audio_turn(self, audio: np.ndarray | bytes, rate: int = VAD_RATE) -> Transcript | None:
        """A whole utterance from outside the microphone stream (a committed buffer, a clip), taken
        as a microphone turn is: transcribed, None unless it holds words (fillers aside), and with
        detect_language and follow_language the reply follows its language. The caller answers it
        (``reply(text, language=...)``) or files it (``add_message``)."""
        transcript = await self.transcribe(audio, rate)
        if not self.turns.has_words(transcript.text):
            return None
        self._heard_language(transcript.language)
        return transcript

    def add_message(self, role: str, text: str) -> ChatMessage:
        """A message for the context without a reply (a client-side conversation item)."""
        message = ChatMessage(role, text)
        self.history.insert([message])
        return message

    async def interrupt(self, reason: str = "client") -> None:
        self.turns.drop_pending()
        if self.current is not None:
            await self._interrupt(self.current, reason)

    def set_listening(self, on: bool) -> None:
        """Off: the microphone is ignored (the utterance under way is dropped)."""
        self.listening = on
        if not on:
            self.turns.stop_listening()

    def pause_output(self) -> None:
        self.player.hold()

    def resume_output(self) -> None:
        self.player.release()

    def set_images(self, images: list[str]) -> None:
        """Visual context (data URLs) for the next user message, if the LLM accepts images."""
        self.images = list(images[-MAX_IMAGES:]) if self.backends.llm.accepts_images else []

    async def submit_tool_result(self, call_id: str, result: str) -> None:
        waiting = self.tool_waiters.pop(call_id, None)
        if waiting is None:
            raise ValueError(f"no tool call is waiting for call_id {call_id!r}")
        waiter = waiting[1]
        if not waiter.done():
            waiter.set_result(result)

    # ---- output --------------------------------------------------------------------------

    async def next_event(self) -> events.Event:
        while True:
            event = await self.outbox.get()
            generation = getattr(event, "generation", None)
            if isinstance(event, events.AudioOut | events.Visemes | events.TextDelta) and (
                generation is not None and generation < self.oldest_live_generation
            ):
                continue
            return event

    async def emit(self, event: events.Event) -> None:
        if self.closed:
            return
        try:
            await asyncio.wait_for(self.outbox.put(event), CLIENT_STALL_S)
        except TimeoutError:
            log.warning("client read nothing for %.0f s: dropping the session", CLIENT_STALL_S)
            self.closed = True
            self.stalled.set()

    async def close(self) -> None:
        self.closed = True
        self.player.release()
        self.turns.drop_pending()
        if self.current is not None:
            await self.current.cancel()
        for reply in self.replies.values():
            reply.finish(reply.heard if reply.released else "", interrupted=True, reason="closed")
        await self.tasks.close()
        self.segmenter.vad.close()  # hands the VAD engine back to the pool

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A session task whose failure is logged and reported instead of vanishing."""
        return self.tasks.spawn(coroutine)

    def _task_failed(self, task: asyncio.Task[None], exc: BaseException) -> None:
        if task is self.playing and self.current is not None:
            self.current = None  # a dead player must not leave the session "speaking" forever
        if not self.closed and not self.outbox.full():
            self.outbox.put_nowait(events.Error(f"internal error: {exc}"))

    async def transcribe(
        self, audio: np.ndarray | bytes, rate: int = VAD_RATE, kind: JobKind = JobKind.STT_FINAL
    ) -> Transcript:
        """Audio (float32 samples, or S16LE bytes) at ``rate`` -> text, in the session's language or,
        with detect_language, any.

        Detection costs a multilingual model and an extra pass (1.2 s against 0.34 s for English on
        2 cores), and people mostly keep to one language: the language heard last is tried first,
        and only a transcript the model is unsure of (another language reads at confidence ~0.2,
        the right one at ~0.6) is transcribed again with detection."""
        config, stt = self.config, self.backends.stt
        if isinstance(audio, bytes):
            audio = pcm16_to_float(audio)
        if rate != VAD_RATE:
            audio = resample(audio, rate, VAD_RATE)
        if audio.size == 0:
            return Transcript("", config.language, 0.0, confidence=0.0)
        run = lambda language: workers.run_in(  # noqa: E731
            workers.SPEECH, lambda: stt.transcribe(audio, language), kind
        )
        if not config.detect_language:
            return await run(config.language)
        guess = await run(self.spoken_language or config.language)
        if guess.text and guess.confidence >= SAME_LANGUAGE_CONFIDENCE:
            return guess
        return await run(None)

    def _heard_language(self, spoken: str) -> None:
        self.spoken_language = spoken or self.spoken_language
        self._follow_language(spoken)

    def _follow_language(self, spoken: str) -> None:
        """With detect_language and follow_language the reply (voice included) follows the user."""
        config = self.config
        if not (config.detect_language and config.follow_language) or spoken in ("", config.language):
            return
        if spoken not in self.backends.speaker.languages():
            return  # a language we cannot speak: answer in the current one
        try:
            self.configure(language=spoken)
        except ValueError:
            self.configure(voice=None, language=spoken)  # the voice cannot: the language's own

    def _setup(self) -> TurnSetup:
        config = self.config
        return TurnSetup(
            backends=self.backends,
            history=self.history,
            voice=self.voice,
            language=config.language,
            speed=config.speed,
            output_rate=config.output_rate,
            server_tools=self.server_tools,
            client_tools=list(config.client_tools),
            ask_client=self._ask_client,
            frame_ms=config.frame_ms,
            tool_filler=config.tool_filler,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            images=list(self.images),
        )

    async def _release(self, response: Response) -> None:
        if self.current is not None and not self.config.barge_in.enabled and self.playing is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(self.playing)  # no barge-in: the new reply waits its turn
        if self.current is not None:
            await self._interrupt(self.current, "new_input")
        if self.closed:  # closed while we waited: nothing may keep this reply running
            await response.cancel()
            self._discard(response)
            return
        self.current = response
        self.next_turn = None  # the user moved on: what they said over the last reply is answered
        if (reply := self.replies.get(response.generation)) is not None:
            reply.released = True
        self.oldest_live_generation = response.generation
        if self.segmenter.speaking and self.config.barge_in.enabled:
            self.turns.pause(response)  # the user is talking again: do not talk over them
        if response.user_text is not None:
            await self.emit(
                events.TranscriptFinal(
                    "user",
                    response.user_text,
                    response.generation,
                    language=response.user_language,
                    message_id=response.asked[0].id,
                )
            )
        await self.emit(events.StatusChanged("thinking", response.generation))
        await response.release()
        self.playing = self._spawn(self._play(response))

    async def _interrupt(self, response: Response, reason: str) -> None:
        if self.current is not response:
            return
        self.current = None
        INTERRUPTIONS.inc()
        self.oldest_live_generation = response.generation + 1  # drop its queued audio
        if self.playing is not None and self.playing is not asyncio.current_task():
            self.playing.cancel()
        await response.cancel()
        await self.emit(events.Interrupted(response.generation, reason))
        await self.emit(events.StatusChanged("interrupted", response.generation))
        await self._finish(response, interrupted=True, reason=reason)

    # ---- playout -------------------------------------------------------------------------

    async def _play(self, response: Response) -> None:
        await self.player.play(response)
        if self.current is response:
            self.current = None
            await self._finish(response, interrupted=False)
            await self.emit(events.StatusChanged("listening", response.generation))
            if (
                self.next_turn is not None
                and self.turns.pending is None
                and not self.turns.segmenter.speaking
            ):
                await self.reply(self.next_turn)  # what the user said over it, now answered

    async def _finish(self, response: Response, interrupted: bool, reason: str = "") -> None:
        heard = response.playout.heard_text() if interrupted else None
        committed = response.history_messages(heard)
        self.history.insert(committed)
        text = heard if heard is not None else response.text.strip()
        spoken = next((m for m in reversed(committed) if m.role == "assistant" and m.content), None)
        if text:
            language, message_id = response.setup.language, spoken.id if spoken else ""
            await self.emit(
                events.TranscriptFinal(
                    "assistant", text, response.generation, interrupted, language, message_id
                )
            )
        for stage, seconds in response.timings.items():
            TURN_LATENCY.labels(stage).observe(max(seconds, 0.0))
        millis = {stage: round(seconds * 1000) for stage, seconds in response.timings.items()}
        log.info("turn %d latency %s", response.generation, json.dumps(millis))
        trace = {stage: round(seconds * 1000) for stage, seconds in response.trace.items()}
        log.info("turn %d trace %s", response.generation, json.dumps(trace))
        await self.emit(events.TurnMetrics(response.generation, dict(response.timings)))
        await self.emit(events.ResponseDone(response.generation, text, interrupted))
        if (reply := self.replies.get(response.generation)) is not None:
            reply.finish(text, interrupted, reason)

    # ---- client-side tools ---------------------------------------------------------------

    async def _ask_client(self, call: ToolCall, generation: int) -> str:
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.tool_waiters[call.id] = (self.replies[generation], waiter)
        await self.emit(events.ToolCallRequested(call.id, call.name, call.arguments, generation))
        try:
            return await asyncio.wait_for(waiter, CLIENT_TOOL_TIMEOUT_S)
        except TimeoutError:
            return json.dumps({"error": f"the client did not answer tool call {call.id} in time"})
        finally:
            self.tool_waiters.pop(call.id, None)
