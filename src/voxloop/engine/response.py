"""One reply (a generation): LLM text, cut into pieces, synthesised, ready for paced playout.

Three concurrent stages so each starts as early as it can: the LLM writes text and runs tools,
the synthesiser turns finished pieces into audio, and the session's player sends that audio.
A response may start speculatively (while the user might still go on) and is held: its events
wait until the session releases it, or are thrown away with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace

from voxloop.backends import workers
from voxloop.backends.llm.base import (
    ChatMessage,
    LlmError,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
)
from voxloop.backends.registry import Backends
from voxloop.backends.tts.base import Voice
from voxloop.backends.tts.stream import RenderedSpeech, speak
from voxloop.engine import events
from voxloop.engine.chunker import SpeechChunker
from voxloop.engine.echo import RATE as ECHO_RATE
from voxloop.engine.history import History
from voxloop.engine.playout import LEAD_S, Playout
from voxloop.engine.tools import ToolRegistry, filler_for

log = logging.getLogger(__name__)

MAX_TOOL_ROUNDS = 4
FILLER_AFTER_S = 1.0  # a tool running longer than this gets a spoken filler: no dead air
CLIENT_TOOL_TIMEOUT_S = 30.0
DUE_MARGIN_S = 0.5  # the next piece's LLM text and synthesis take about this under load


@dataclass
class TurnSetup:
    """Everything a reply needs, frozen when it starts (config changes apply to the next one)."""

    backends: Backends
    history: History
    voice: Voice
    language: str
    speed: float
    output_rate: int
    server_tools: ToolRegistry
    client_tools: list[ToolSpec]
    ask_client: Callable[[ToolCall, int], Awaitable[str]]  # runs a client-side tool
    frame_ms: int | None = 40  # None: each spoken piece leaves whole
    tool_filler: bool = True
    temperature: float | None = None  # None: the backend's default
    max_tokens: int | None = None
    images: list[str] = field(default_factory=list)  # data URLs for the user message


WHOLE_PIECE_LEAD_S = 1.0  # whole pieces go out this far ahead, so the client can decode in time


@dataclass
class Response:
    generation: int
    user_text: str | None  # None: a reply to the history as it stands
    setup: TurnSetup
    emit: Callable[[events.Event], Awaitable[None]]
    speech_end: float  # monotonic time the user stopped speaking: the latency reference
    user_language: str = ""  # what the STT heard the user speak, if it detected it
    released: asyncio.Event = field(default_factory=asyncio.Event)
    resumed: asyncio.Event = field(default_factory=asyncio.Event)  # cleared while a barge-in is checked
    audio: asyncio.Queue[RenderedSpeech | None] = field(default_factory=asyncio.Queue)
    turn: list[ChatMessage] = field(default_factory=list)  # this turn's messages, user first
    text: str = ""
    held_events: list[events.Event] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # stages sent to the client (TurnMetrics)
    trace: dict[str, float] = field(default_factory=dict)  # more stages, for the server's log only
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    synthesized_s: float = 0.0  # audio made so far

    def __post_init__(self) -> None:
        self.resumed.set()
        if self.user_text is not None:
            self.turn.append(ChatMessage("user", self.user_text, images=list(self.setup.images)))
        self.asked = list(self.turn)  # what the user asked: kept even when the reply is cut
        lead = WHOLE_PIECE_LEAD_S if self.setup.frame_ms is None else LEAD_S
        self.playout = Playout(self.setup.output_rate, lead_s=lead)
        self._pieces: asyncio.Queue[str | None] = asyncio.Queue()
        self._filler_spoken = False

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._write()), asyncio.create_task(self._synthesize())]

    def due(self) -> float:
        """When this reply's next audio is needed, the deadline of its LLM and TTS jobs: since the
        user stopped speaking until it has some audio, then when the audio made so far will
        have played (less the time to render the next piece)."""
        if not self.synthesized_s:
            return self.speech_end
        started = self.timings.get("first_byte_sent", self.timings.get("tts_first_audio", 0.0))
        return self.speech_end + started + self.synthesized_s - DUE_MARGIN_S

    def mark(self, name: str) -> None:
        self.timings.setdefault(name, time.monotonic() - self.speech_end)

    def note(self, name: str) -> None:
        """A stage for the server's per-turn log (where a turn's time went), not sent to clients."""
        self.trace.setdefault(name, time.monotonic() - self.speech_end)

    async def send(self, event: events.Event) -> None:
        if self.released.is_set():
            await self.emit(event)
        else:
            self.held_events.append(event)

    async def release(self) -> None:
        while self.held_events:  # events sent while flushing join the queue, in order
            await self.emit(self.held_events.pop(0))
        self.note("released")
        self.released.set()

    async def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def history_messages(self, heard: str | None) -> list[ChatMessage]:
        """This turn for the history. After an interruption the reply is only what was heard, and
        its tool exchanges go too: a call without its result would break the next request. Images
        stay out of the history: each frame is sent once, with the turn it came with."""
        asked = [replace(message, images=[]) for message in self.asked]
        if heard is None:
            return asked + self.turn[len(self.asked) :]
        return [*asked, ChatMessage("assistant", heard)] if heard else asked

    async def _write(self) -> None:
        setup = self.setup
        workers.DUE.set(self.due)
        tools = setup.server_tools.specs() + setup.client_tools
        try:
            for _ in range(MAX_TOOL_ROUNDS):
                chunker, calls, text = SpeechChunker(), [], ""
                messages = setup.history.for_llm(setup.language, self.turn)
                self.note("llm_asked")
                stream = setup.backends.llm.stream(
                    messages, tools=tools or None, max_tokens=setup.max_tokens, temperature=setup.temperature
                )
                async with aclosing(stream):
                    async for item in stream:
                        if isinstance(item, ReasoningDelta):
                            await self.send(events.ReasoningDelta(item.text, self.generation))
                        elif isinstance(item, TextDelta):
                            self.mark("llm_first_token")
                            text += item.text
                            await self.send(events.TextDelta(item.text, self.generation))
                            for piece in chunker.push(item.text):
                                self.note("first_piece")
                                self._pieces.put_nowait(piece)
                        elif isinstance(item, Usage):
                            await self.send(
                                events.LlmUsage(
                                    item.finish_reason, item.input_tokens, item.output_tokens, self.generation
                                )
                            )
                        else:
                            calls.append(item)
                for piece in chunker.flush():
                    self.note("first_piece")
                    self._pieces.put_nowait(piece)
                self.text += text
                self.turn.append(ChatMessage("assistant", text, tool_calls=calls))
                if not calls:
                    break
                for call in calls:
                    result = await self._run_tool(call)
                    self.turn.append(ChatMessage("tool", result, tool_call_id=call.id))
        except LlmError as exc:
            await self.send(events.Error(f"language model failed: {exc}", "llm_error", self.generation))
        except Exception as exc:  # a broken reply ends, the session goes on
            log.exception("reply failed")
            await self.send(events.Error(f"reply failed: {exc}", "server_error", self.generation))
        finally:
            self._pieces.put_nowait(None)

    async def _run_tool(self, call: ToolCall) -> str:
        setup = self.setup
        await self.released.wait()  # a speculative reply that may be thrown away acts on nothing
        if call.name in setup.server_tools:
            job = asyncio.ensure_future(setup.server_tools.call(call.name, call.arguments))
        elif any(spec.name == call.name for spec in setup.client_tools):
            job = asyncio.ensure_future(setup.ask_client(call, self.generation))
        else:
            return f'{{"error": "no tool named {call.name}"}}'
        await self.send(events.ToolStarted(call.id, call.name, call.arguments, self.generation))
        try:
            done, _ = await asyncio.wait({job}, timeout=FILLER_AFTER_S)
            if not done and not self._filler_spoken and setup.tool_filler:
                self._filler_spoken = True
                self._pieces.put_nowait(filler_for(setup.language))
            result = await job
        finally:
            job.cancel()  # an interrupted reply does not keep its tools running
        await self.send(events.ToolFinished(call.id, call.name, result, self.generation))
        return result

    async def _synthesize(self) -> None:
        setup = self.setup
        workers.DUE.set(self.due)
        try:
            while (piece := await self._pieces.get()) is not None:
                speech = speak(
                    setup.backends.speaker,
                    piece,
                    setup.voice,
                    setup.language,
                    setup.speed,
                    setup.output_rate,
                    reference_rate=ECHO_RATE,
                )
                async for rendered in speech:
                    self.mark("tts_first_audio")
                    self.synthesized_s += rendered.duration
                    await self.audio.put(rendered)
        except Exception as exc:  # a failed piece ends the reply, not the session
            await self.send(events.Error(f"speech synthesis failed: {exc}", "tts_error", self.generation))
        finally:
            await self.audio.put(None)
