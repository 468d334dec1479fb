"""A spoken conversation: turn-taking, speculation, barge-in, echo guard, history and tools.

Protocols feed it audio and configuration and forward its canonical events (``next_event``).
The session clock is samples received; wall time paces reply audio and fills the silence of
clients that stop sending audio between utterances.

Turn-taking: once the user has been silent for ``speculate_after_s`` the utterance is
transcribed and a reply is prepared (LLM and TTS) while the VAD hangover runs; if the user goes
on, that work is thrown away, otherwise it is released the moment the hangover ends.

Barge-in: speech during a reply pauses the audio at once; if the speech turns out to hold words
that qualify under ``BargeInRules`` the reply is interrupted (history keeps what was heard),
otherwise it resumes where it stopped.

Besides the microphone, protocols may start turns themselves (``reply``: typed text, a decoded
clip, or a manual ``response.create``), interrupt, stop listening and hold the reply audio.
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

from voxloop.audio.pcm import StreamResampler, pcm16_to_float
from voxloop.backends import workers
from voxloop.backends.llm.base import ChatMessage, ToolCall, ToolSpec
from voxloop.backends.registry import Backends
from voxloop.backends.scheduler import JobKind, Shed
from voxloop.backends.stt.base import Transcript
from voxloop.backends.tts.stream import frames
from voxloop.backends.tts.visemes import visemes_for
from voxloop.backends.tts.voices import UnknownLanguage
from voxloop.engine import events
from voxloop.engine.barge_in import FILLERS, BargeInRules, meaningful_words
from voxloop.engine.echo import RATE as VAD_RATE  # one 16 kHz clock: VAD, echo guard, STT
from voxloop.engine.echo import EchoGuard
from voxloop.engine.history import History
from voxloop.engine.response import CLIENT_TOOL_TIMEOUT_S, Response, TurnSetup
from voxloop.engine.segmenter import SegmenterConfig, SpeechEnded, SpeechStarted, UtteranceSegmenter
from voxloop.engine.tools import ToolRegistry
from voxloop.server.metrics import INTERRUPTIONS, TURN_LATENCY

log = logging.getLogger(__name__)

OUTBOX_SIZE = 512  # events waiting for a slow client
CLIENT_STALL_S = 10.0  # a client that reads nothing for this long is dropped
AUDIO_SLICE = 2048  # input is processed in slices, so a huge frame cannot wrap the echo rings
IDLE_TICK_S = 0.1  # how often a client's silence (no audio sent at all) is checked
IDLE_GAP_S = 0.3  # no audio for this long means the client stopped sending, not network jitter
MAX_IMAGES = 4  # visual context frames given with a user message
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


@dataclass
class PendingTurn:
    """A user utterance being turned into a reply; ``committed`` once the user is really done."""

    audio: np.ndarray
    audio_end: int  # segmenter position when it was cut
    speech_end: float  # monotonic time of the last voiced audio
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Session:
    def __init__(
        self, backends: Backends, config: SessionConfig | None = None, tools: ToolRegistry | None = None
    ) -> None:
        self.backends = backends
        self.config = config or SessionConfig()
        self.server_tools = tools or ToolRegistry()
        self.history = History(self.config.prompt, self.config.max_context_messages)
        self.voice = backends.speaker.resolve(self.config.voice, self.config.language)
        self.echo = EchoGuard()
        vad = backends.vad
        self.segmenter = UtteranceSegmenter(vad.new_stream(), vad.frame_samples, self.config.turn, VAD_RATE)
        self.resampler = StreamResampler(self.config.input_rate, VAD_RATE)
        self.outbox: asyncio.Queue[events.Event] = asyncio.Queue(OUTBOX_SIZE)
        self.stalled = asyncio.Event()  # set when the client stopped reading: the protocol hangs up
        self.generation = 0
        self.oldest_live_generation = 0  # events of older generations are dropped
        self.current: Response | None = None  # the released reply, playing or paused
        self.player: asyncio.Task[None] | None = None
        self.pending: PendingTurn | None = None
        self.barge_check: asyncio.Task[None] | None = None
        self.partial: asyncio.Task[None] | None = None
        self.partial_at = 0  # segmenter position of the last partial transcript
        self.barge_checked_at = 0
        self.paused_at = 0  # segmenter position where the current reply was paused
        self.last_voiced_at = time.monotonic()
        self.last_audio_at = time.monotonic()
        self.last_barge_at = -float("inf")
        self.listening = True
        self.output_open = asyncio.Event()  # cleared while the client holds reply audio
        self.output_open.set()
        self.images: list[str] = []
        self.spoken_language = ""  # what the user spoke last (detect_language)
        self.tool_waiters: dict[str, asyncio.Future[str]] = {}
        self.closed = False
        self.idle_watch = self._spawn(self._fill_silence())

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
            self.segmenter = UtteranceSegmenter(self.segmenter.vad, vad.frame_samples, config.turn, VAD_RATE)

    # ---- input ---------------------------------------------------------------------------

    async def push_audio(self, pcm: bytes) -> None:
        """Microphone audio, S16LE mono at ``config.input_rate``."""
        self.last_audio_at = time.monotonic()
        samples = self.resampler.process(pcm16_to_float(pcm))
        for start in range(0, len(samples), AUDIO_SLICE):
            cleaned = self.echo.process(samples[start : start + AUDIO_SLICE])
            if self.listening:
                await self._consume(cleaned)

    async def reply(self, text: str | None) -> int:
        """A turn that did not come from the microphone: typed text, a decoded clip, or (None) a
        reply to the history as it stands. Cuts whatever is playing; returns the generation."""
        self._drop_pending()
        if self.current is not None:
            await self._interrupt(self.current, "new_input")
        self.generation += 1
        response = Response(self.generation, text, self._setup(), self.emit, time.monotonic())
        response.start()
        await self._release(response)
        return response.generation

    def add_message(self, role: str, text: str) -> ChatMessage:
        """A message for the context without a reply (a client-side conversation item)."""
        message = ChatMessage(role, text)
        self.history.extend([message])
        return message

    async def interrupt(self, reason: str = "client") -> None:
        self._drop_pending()
        if self.current is not None:
            await self._interrupt(self.current, reason)

    def set_listening(self, on: bool) -> None:
        """Off: the microphone is ignored (the utterance under way is dropped)."""
        self.listening = on
        if not on:
            self._drop_pending()
            self.segmenter.reset()

    def pause_output(self) -> None:
        self.output_open.clear()

    def resume_output(self) -> None:
        self.output_open.set()

    def set_images(self, images: list[str]) -> None:
        """Visual context (data URLs) for the next user message, if the LLM accepts images."""
        self.images = list(images[-MAX_IMAGES:]) if self.backends.llm.accepts_images else []

    async def _fill_silence(self) -> None:
        """Clients may stop sending audio between utterances (Lokutor's docs advise it): their
        silence counts as silence, so turns still end and the echo guard's clock keeps time."""
        while True:
            await asyncio.sleep(IDLE_TICK_S)
            gap = time.monotonic() - self.last_audio_at
            if gap < IDLE_GAP_S:
                continue
            self.last_audio_at += gap
            samples = int(gap * VAD_RATE)
            self.echo.skip(samples)
            if self.segmenter.speaking:
                await self._consume(np.zeros(samples, dtype=np.float32))

    async def _consume(self, samples: np.ndarray) -> None:
        now = time.monotonic()
        for event in self.segmenter.push(samples):
            if isinstance(event, SpeechStarted):
                await self._on_speech_started(event)
            elif isinstance(event, SpeechEnded):
                await self._on_speech_ended(event)
        if not self.segmenter.speaking:
            return
        silence = self.segmenter.trailing_silence_s
        if silence == 0.0:
            self.last_voiced_at = now
            if self.pending is not None and not self.pending.committed.is_set():
                self._drop_pending()  # the user went on: throw the speculative reply away
        elif silence >= self.config.speculate_after_s and self.pending is None:
            self._start_turn(self.segmenter.utterance_audio(), committed=False)
        self._watch_barge_in()
        self._maybe_partial()

    async def submit_tool_result(self, call_id: str, result: str) -> None:
        waiter = self.tool_waiters.pop(call_id, None)
        if waiter is None:
            raise ValueError(f"no tool call is waiting for call_id {call_id!r}")
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
        self.output_open.set()
        self._drop_pending()
        if self.current is not None:
            await self.current.cancel()
        for task in (self.player, self.barge_check, self.partial, self.idle_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.segmenter.vad.close()  # hands the VAD engine back to the pool

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A session task whose failure is logged and reported instead of vanishing."""
        task = asyncio.create_task(coroutine)
        task.add_done_callback(self._check_task)
        return task

    def _check_task(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("session task failed", exc_info=task.exception())
        if task is self.player and self.current is not None:
            self.current = None  # a dead player must not leave the session "speaking" forever
        if not self.closed and not self.outbox.full():
            self.outbox.put_nowait(events.Error(f"internal error: {task.exception()}"))

    # ---- turn-taking ---------------------------------------------------------------------

    async def _on_speech_started(self, event: SpeechStarted) -> None:
        await self.emit(events.SpeechStarted(event.at_sample / VAD_RATE))
        if self.current is not None and self.config.barge_in.enabled:
            self._pause(self.current)  # words will confirm the barge-in
        else:
            await self.emit(events.StatusChanged("listening", self.generation))

    async def _on_speech_ended(self, event: SpeechEnded) -> None:
        await self.emit(events.SpeechStopped(event.at_sample / VAD_RATE))
        pending = self.pending
        if pending is not None and not pending.committed.is_set() and pending.audio_end >= event.at_sample:
            pending.committed.set()  # speculation covered everything the user said
            return
        audio = event.audio
        if pending is not None and pending.committed.is_set():
            audio = np.concatenate([pending.audio, audio])  # one thought in two breaths: answer both
        self._drop_pending()
        self._start_turn(audio, committed=True)

    def _start_turn(self, audio: np.ndarray, committed: bool) -> None:
        pending = PendingTurn(audio, self.segmenter.position, self.last_voiced_at)
        if committed:
            pending.committed.set()
        pending.task = self._spawn(self._turn(pending))
        self.pending = pending

    def _drop_pending(self) -> None:
        if self.pending is not None and self.pending.task is not None:
            self.pending.task.cancel()
        self.pending = None

    async def _turn(self, pending: PendingTurn) -> None:
        response: Response | None = None
        try:
            transcript = await self._transcribe_turn(pending)
            text = transcript.text
            stt_done = time.monotonic() - pending.speech_end
            # Any reply still playing (paused or not: a late transcript may come after the barge-in
            # window let it resume) is cut only by words that pass the barge-in rules.
            over_reply = self.current is not None and self.config.barge_in.enabled
            if not self._has_words(text) or (over_reply and not self._may_barge(transcript)):
                await pending.committed.wait()
                if self.current is not None and not self.segmenter.speaking:
                    self.current.resumed.set()  # a cough, a slam or an "um": the reply goes on
                return
            if over_reply and self.current is not None:
                await self._interrupt(self.current, "barge_in")  # words over the reply
            self.spoken_language = transcript.language or self.spoken_language
            self._follow_language(transcript.language)
            if not self.config.auto_reply:
                await pending.committed.wait()
                await self.emit(
                    events.TranscriptFinal(
                        "user", text.strip(), self.generation, language=transcript.language
                    )
                )
                self.add_message("user", text.strip())
                return
            self.generation += 1
            response = Response(self.generation, text.strip(), self._setup(), self.emit, pending.speech_end)
            response.user_language = transcript.language
            response.timings["stt_final"] = stt_done
            response.start()
            await pending.committed.wait()
            if self.pending is pending:
                self.pending = None  # released replies belong to the session, not the turn
            await self._release(response)
            response = None
        except asyncio.CancelledError:
            if response is not None:
                await response.cancel()
            raise
        except Exception as exc:
            log.exception("turn failed")
            if self.current is not None and not self.segmenter.speaking:
                self.current.resumed.set()
            await self.emit(events.Error(f"turn failed: {exc}"))
        finally:
            if self.pending is pending:
                self.pending = None

    async def _transcribe_turn(self, pending: PendingTurn) -> Transcript:
        if pending.committed.is_set():
            return await self.transcribe(pending.audio)
        try:
            return await self.transcribe(pending.audio, JobKind.STT_SPECULATIVE)
        except Shed:  # the speech lane is behind: transcribe once, when the user has finished
            await pending.committed.wait()
            return await self.transcribe(pending.audio)

    def _maybe_partial(self) -> None:
        if not self.config.partials or self.partial is not None or self.pending is not None:
            return  # a turn under way transcribes the same audio anyway
        position = self.segmenter.position
        if position - self.partial_at < self.config.partial_every_s * VAD_RATE:
            return
        self.partial_at = position
        self.partial = self._spawn(self._send_partial(self.segmenter.utterance_audio()))

    async def _send_partial(self, audio: np.ndarray) -> None:
        try:
            transcript = await self.transcribe(audio, JobKind.STT_PARTIAL)
            text = transcript.text.strip()
            if text and self.segmenter.speaking:
                await self.emit(events.TranscriptPartial(text, transcript.confidence))
        except Shed:
            pass  # the speech lane is behind: no partial this time
        finally:
            self.partial = None

    def _has_words(self, text: str) -> bool:
        return len(meaningful_words(text, self.config.filler_words)) >= self.config.min_words

    def _may_barge(self, transcript: Transcript) -> bool:
        rules = self.config.barge_in
        cooled = time.monotonic() - self.last_barge_at >= rules.cooldown_s
        return rules.enabled and cooled and rules.qualifies(transcript)

    async def transcribe(self, audio: np.ndarray, kind: JobKind = JobKind.STT_FINAL) -> Transcript:
        """16 kHz float32 audio -> text, in the session's language or, with detect_language, any.

        Detection costs a multilingual model and an extra pass (1.2 s against 0.34 s for English on
        2 cores), and people mostly keep to one language: the language heard last is tried first,
        and only a transcript the model is unsure of (another language reads at confidence ~0.2,
        the right one at ~0.6) is transcribed again with detection."""
        config, stt = self.config, self.backends.stt
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
        if self.current is not None and not self.config.barge_in.enabled and self.player is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(self.player)  # no barge-in: the new reply waits its turn
        if self.current is not None:
            await self._interrupt(self.current, "new_input")
        if self.closed:  # closed while we waited: nothing may keep this reply running
            await response.cancel()
            return
        self.current = response
        self.oldest_live_generation = response.generation
        if self.segmenter.speaking and self.config.barge_in.enabled:
            self._pause(response)  # the user is talking again: do not talk over them
        if response.user_text is not None:
            await self.emit(
                events.TranscriptFinal(
                    "user", response.user_text, response.generation, language=response.user_language
                )
            )
        await self.emit(events.StatusChanged("thinking", response.generation))
        await response.release()
        self.player = self._spawn(self._play(response))

    # ---- barge-in ------------------------------------------------------------------------

    def _pause(self, response: Response) -> None:
        response.resumed.clear()
        self.paused_at = self.barge_checked_at = self.segmenter.position

    def _watch_barge_in(self) -> None:
        current = self.current
        if current is None or current.resumed.is_set() or self.barge_check is not None:
            return
        position, rules = self.segmenter.position, self.config.barge_in
        if position - self.paused_at > rules.window_s * VAD_RATE:
            current.resumed.set()  # long speech with no qualifying words: not an interruption
            return
        if position - self.barge_checked_at < rules.check_every_s * VAD_RATE:
            return
        self.barge_checked_at = position
        self.barge_check = self._spawn(self._check_barge_in(current, self.segmenter.utterance_audio()))

    async def _check_barge_in(self, response: Response, audio: np.ndarray) -> None:
        try:
            if self._may_barge(await self.transcribe(audio)) and self.current is response:
                await self._interrupt(response, "barge_in")
        finally:
            self.barge_check = None

    async def _interrupt(self, response: Response, reason: str) -> None:
        if self.current is not response:
            return
        self.current = None
        INTERRUPTIONS.inc()
        if reason == "barge_in":
            self.last_barge_at = time.monotonic()
        self.oldest_live_generation = response.generation + 1  # drop its queued audio
        if self.player is not None and self.player is not asyncio.current_task():
            self.player.cancel()
        await response.cancel()
        await self.emit(events.Interrupted(response.generation, reason))
        await self.emit(events.StatusChanged("interrupted", response.generation))
        await self._finish(response, interrupted=True)

    # ---- playout -------------------------------------------------------------------------

    async def _play(self, response: Response) -> None:
        setup, playout, first = response.setup, response.playout, True
        rate, index = setup.output_rate, -1
        while (speech := await response.audio.get()) is not None:
            index += 1
            start = playout.sent_s
            playout.add_text(start, start + speech.duration, speech.text)
            if self.config.visemes:
                marks = visemes_for(speech.text, speech.duration, start, speech.audio)
                await self.emit(events.Visemes(marks, response.generation))
            reference_at = 0
            chunks = [speech.pcm] if setup.frame_ms is None else frames(speech.pcm, rate, setup.frame_ms)
            for frame in chunks:
                await self._may_play(response)
                if delay := playout.wait_before_next(time.monotonic()):
                    await asyncio.sleep(delay)
                    await self._may_play(response)
                now = time.monotonic()
                if first:
                    first = False
                    response.mark("first_byte_sent")
                    await self.emit(events.StatusChanged("speaking", response.generation))
                contiguous = playout.ends_at >= now  # the client is still playing the last frame
                starts_at = playout.sent(len(frame) // 2, now)
                count = round(len(frame) // 2 * VAD_RATE / rate)
                piece = speech.reference[reference_at : reference_at + count]
                self.echo.add_reference(piece, starts_at - now, contiguous)
                reference_at += count
                await self.emit(events.AudioOut(frame, response.generation, speech.text, index))
        await asyncio.sleep(max(0.0, playout.ends_at - time.monotonic()))
        if self.current is response:
            self.current = None
            await self._finish(response, interrupted=False)
            await self.emit(events.StatusChanged("listening", response.generation))

    async def _may_play(self, response: Response) -> None:
        await response.resumed.wait()  # not paused for a barge-in check
        await self.output_open.wait()  # nor held by the client

    async def _finish(self, response: Response, interrupted: bool) -> None:
        heard = response.playout.heard_text() if interrupted else None
        self.history.extend(response.history_messages(heard))
        text = heard if heard is not None else response.text.strip()
        if text:
            await self.emit(
                events.TranscriptFinal(
                    "assistant", text, response.generation, interrupted, response.setup.language
                )
            )
        for stage, seconds in response.timings.items():
            TURN_LATENCY.labels(stage).observe(max(seconds, 0.0))
        millis = {stage: round(seconds * 1000) for stage, seconds in response.timings.items()}
        log.info("turn %d latency %s", response.generation, json.dumps(millis))
        await self.emit(events.TurnMetrics(response.generation, dict(response.timings)))
        await self.emit(events.ResponseDone(response.generation, text, interrupted))

    # ---- client-side tools ---------------------------------------------------------------

    async def _ask_client(self, call: ToolCall, generation: int) -> str:
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.tool_waiters[call.id] = waiter
        await self.emit(events.ToolCallRequested(call.id, call.name, call.arguments, generation))
        try:
            return await asyncio.wait_for(waiter, CLIENT_TOOL_TIMEOUT_S)
        except TimeoutError:
            return json.dumps({"error": f"the client did not answer tool call {call.id} in time"})
        finally:
            self.tool_waiters.pop(call.id, None)
