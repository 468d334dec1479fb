"""Plays released replies: reply audio leaves at the pace the client plays it.

The player writes every frame it sends into the echo guard's reference (at the moment the client
will play it) and into the reply's playout, the one record of what the user has heard. It stops at
once while a barge-in is checked (``Response.resumed``) or the client holds the output.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from voxloop.backends.tts.stream import frames
from voxloop.backends.tts.visemes import visemes_for
from voxloop.engine import events
from voxloop.engine.barge_in import SpokenWords
from voxloop.engine.echo import RATE as ECHO_RATE
from voxloop.engine.echo import EchoGuard
from voxloop.engine.response import Response


class Player:
    def __init__(
        self, emit: Callable[[events.Event], Awaitable[None]], echo: EchoGuard, visemes: Callable[[], bool]
    ) -> None:
        self.emit, self.echo, self.visemes = emit, echo, visemes
        self.spoken = SpokenWords()  # the bot's words as played: their echo is not the user
        self.output_open = asyncio.Event()  # cleared while the client holds reply audio
        self.output_open.set()

    def hold(self) -> None:
        self.output_open.clear()

    def release(self) -> None:
        self.output_open.set()

    async def play(self, response: Response) -> None:
        """Sends the reply's audio; returns once the client has played all of it."""
        setup, playout, first = response.setup, response.playout, True
        rate, index = setup.output_rate, -1
        while (speech := await response.audio.get()) is not None:
            index += 1
            start = playout.sent_s
            playout.add_text(start, start + speech.duration, speech.text)
            if self.visemes():
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
                if reference_at == 0:
                    self.spoken.played(speech.text, starts_at, speech.duration)
                count = round(len(frame) // 2 * ECHO_RATE / rate)
                piece = speech.reference[reference_at : reference_at + count]
                self.echo.add_reference(piece, starts_at - now, contiguous)
                reference_at += count
                await self.emit(
                    events.AudioOut(frame, response.generation, speech.text, index, speech.duration)
                )
        await asyncio.sleep(max(0.0, playout.ends_at - time.monotonic()))

    async def _may_play(self, response: Response) -> None:
        await response.resumed.wait()  # not paused for a barge-in check
        await self.output_open.wait()  # nor held by the client
