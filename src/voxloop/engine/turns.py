"""Turn-taking: the microphone cut into turns, speculation, partial transcripts and barge-in.

Once the user has been silent for ``speculate_after_s`` the utterance is transcribed and a reply
is prepared (LLM and TTS) while the VAD hangover runs; if the user goes on, that work is thrown
away, otherwise it is released the moment the hangover ends.

Speech during a reply pauses its audio at once; if the speech turns out to hold words that
qualify under ``BargeInRules`` the reply is interrupted (history keeps what was heard), otherwise
it resumes where it stopped. The clock is samples received (``segmenter.position``).

The turn-taker acts on its ``Session`` (the front: replies, transcription, history, events).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from voxloop.backends.scheduler import JobKind, Shed
from voxloop.backends.stt.base import Transcript
from voxloop.engine import events
from voxloop.engine.barge_in import meaningful_words
from voxloop.engine.echo import RATE as VAD_RATE
from voxloop.engine.reply import ReplyHandle
from voxloop.engine.response import Response
from voxloop.engine.segmenter import SpeechEnded, SpeechStarted, UtteranceSegmenter
from voxloop.engine.turn_end import EndOfTurn

if TYPE_CHECKING:
    from voxloop.engine.session import Session

log = logging.getLogger(__name__)

IDLE_TICK_S = 0.1  # how often a client's silence (no audio sent at all) is checked
IDLE_GAP_S = 0.3  # no audio for this long means the client stopped sending, not network jitter


@dataclass
class PendingTurn:
    """A user utterance being turned into a reply; ``committed`` once the user is really done."""

    audio: np.ndarray
    audio_end: int  # segmenter position when it was cut
    speech_end: float  # monotonic time of the last voiced audio
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    reply: ReplyHandle | None = None  # the reply prepared for it, once there is one
    committed_at: float = 0.0  # monotonic time the user was found done (for the per-turn log)
    kept: float = 1.0  # share of its sound the echo guard let through (low: the bot's own echo)

    def commit(self) -> None:
        self.committed_at = time.monotonic()
        self.committed.set()


class TurnTaker:
    def __init__(self, session: Session, segmenter: UtteranceSegmenter) -> None:
        self.session = session
        self.segmenter = segmenter
        self.end_of_turn = EndOfTurn()  # Smart Turn: end sooner, or wait out a mid-sentence pause
        self.pending: PendingTurn | None = None
        self.barge_check: asyncio.Task[None] | None = None
        self.partial: asyncio.Task[None] | None = None
        self.partial_at = 0  # segmenter position of the last partial transcript
        self.barge_checked_at = 0
        self.paused_at = 0  # segmenter position where the current reply was paused
        self.last_voiced_at = time.monotonic()
        self.last_audio_at = time.monotonic()
        self.last_barge_at = -float("inf")

    def stop_listening(self) -> None:
        """The utterance under way is dropped."""
        self.drop_pending()
        self.segmenter.reset()

    async def interrupt_for_barge_in(self, response: Response) -> None:
        self.last_barge_at = time.monotonic()
        await self.session._interrupt(response, "barge_in")

    async def fill_silence(self) -> None:
        """Clients may stop sending audio between utterances (Lokutor's docs advise it): their
        silence counts as silence, so turns still end and the echo guard's clock keeps time."""
        while True:
            await asyncio.sleep(IDLE_TICK_S)
            gap = time.monotonic() - self.last_audio_at
            if gap < IDLE_GAP_S:
                continue
            self.last_audio_at += gap
            samples = int(gap * VAD_RATE)
            self.session.echo.skip(samples)
            if self.segmenter.speaking:
                await self.consume(np.zeros(samples, dtype=np.float32))

    async def consume(self, samples: np.ndarray) -> None:
        now = time.monotonic()
        for event in self.segmenter.push(samples):
            if isinstance(event, SpeechStarted):
                await self._on_speech_started(event)
            elif isinstance(event, SpeechEnded):
                await self._on_speech_ended(event)
        if self.end_of_turn.update(self.segmenter) and (ended := self.segmenter.end_now()) is not None:
            await self._on_speech_ended(ended)  # the user sounds finished: no need to wait out the hangover
        if not self.segmenter.speaking:
            return
        silence = self.segmenter.trailing_silence_s
        if silence == 0.0:
            self.last_voiced_at = now
            if self.pending is not None and not self.pending.committed.is_set():
                self.drop_pending()  # the user went on: throw the speculative reply away
        elif silence >= self.session.config.speculate_after_s and self.pending is None:
            self._start_turn(self.segmenter.utterance_audio(), committed=False)
        self.watch_barge_in()
        self._maybe_partial()

    async def _on_speech_started(self, event: SpeechStarted) -> None:
        await self.session.emit(events.SpeechStarted(event.at_sample / VAD_RATE))
        if self.session.current is not None and self.session.config.barge_in.enabled:
            self.pause(self.session.current)  # words will confirm the barge-in
        else:
            await self.session.emit(events.StatusChanged("listening", self.session.generation))

    async def _on_speech_ended(self, event: SpeechEnded) -> None:
        await self.session.emit(events.SpeechStopped(event.at_sample / VAD_RATE))
        pending = self.pending
        if pending is not None and not pending.committed.is_set() and pending.audio_end >= event.at_sample:
            pending.commit()  # speculation covered everything the user said
            return
        audio = event.audio
        if pending is not None and pending.committed.is_set():
            audio = np.concatenate([pending.audio, audio])  # one thought in two breaths: answer both
        self.drop_pending()
        self._start_turn(audio, committed=True)

    def _start_turn(self, audio: np.ndarray, committed: bool) -> None:
        pending = PendingTurn(audio, self.segmenter.position, self.last_voiced_at)
        pending.kept = self.session.echo.kept(len(audio))
        if committed:
            pending.commit()
        pending.task = self.session._spawn(self._turn(pending))
        self.pending = pending

    def drop_pending(self) -> None:
        if self.pending is not None and self.pending.task is not None:
            self.pending.task.cancel()
        self.pending = None

    async def _turn(self, pending: PendingTurn) -> None:
        response: Response | None = None
        speculative = not pending.committed.is_set()
        try:
            transcript = await self._transcribe_turn(pending)
            text = transcript.text
            self.end_of_turn.heard(pending.audio_end, text)  # mid-sentence words hold the turn open
            stt_done = time.monotonic() - pending.speech_end
            # Any reply still playing (paused or not: a late transcript may come after the barge-in
            # window let it resume) is cut only by words that pass the barge-in rules.
            over_reply = self.session.current is not None and self.session.config.barge_in.enabled
            words = self.has_words(text, pending.kept)
            if not words or (over_reply and not self.may_barge(transcript, pending.kept)):
                await pending.committed.wait()
                config = self.session.config
                if over_reply and config.auto_reply and words and not config.barge_in.backchannel(text):
                    self.session.next_turn = (
                        text.strip()
                    )  # words, not an interruption: answered after the reply
                if self.session.current is not None and not self.segmenter.speaking:
                    self.session.current.resumed.set()  # a cough, a slam or an "um": the reply goes on
                return
            if over_reply and self.session.current is not None:
                await self.interrupt_for_barge_in(self.session.current)  # words over the reply
            self.session._heard_language(transcript.language)
            if not self.session.config.auto_reply:
                await pending.committed.wait()
                message = self.session.add_message("user", text.strip())
                await self.session.emit(
                    events.TranscriptFinal(
                        "user", message.content, self.session.generation, "", transcript.language, message.id
                    )
                )
                return
            reply = pending.reply = self.session._new_reply(text.strip(), "microphone", pending.speech_end)
            response = reply.response
            response.user_language = transcript.language
            response.timings["stt_final"] = stt_done
            response.trace["speculative"] = float(speculative)  # logged x1000: 1000 = speculated
            await pending.committed.wait()
            response.trace["committed"] = pending.committed_at - pending.speech_end
            if self.pending is pending:
                self.pending = None  # released replies belong to the session, not the turn
            await self.session._release(response)
            response = None
        except asyncio.CancelledError:
            if response is not None:
                await response.cancel()
                self.session._discard(response)
            raise
        except Exception as exc:
            log.exception("turn failed")
            if self.session.current is not None and not self.segmenter.speaking:
                self.session.current.resumed.set()
            await self.session.emit(events.Error(f"turn failed: {exc}"))
        finally:
            if self.pending is pending:
                self.pending = None

    def _maybe_partial(self) -> None:
        if not self.session.config.partials or self.partial is not None or self.pending is not None:
            return  # a turn under way transcribes the same audio anyway
        position = self.segmenter.position
        if position - self.partial_at < self.session.config.partial_every_s * VAD_RATE:
            return
        self.partial_at = position
        self.partial = self.session._spawn(self._send_partial(self.segmenter.utterance_audio()))

    async def _transcribe_turn(self, pending: PendingTurn) -> Transcript:
        if pending.committed.is_set():
            return await self.session.transcribe(pending.audio)
        try:
            return await self.session.transcribe(pending.audio, kind=JobKind.STT_SPECULATIVE)
        except Shed:  # the speech lane is behind: transcribe once, when the user has finished
            await pending.committed.wait()
            return await self.session.transcribe(pending.audio)

    async def _send_partial(self, audio: np.ndarray) -> None:
        try:
            transcript = await self.session.transcribe(audio, kind=JobKind.STT_PARTIAL)
            text = transcript.text.strip()
            if text and self.segmenter.speaking:
                await self.session.emit(events.TranscriptPartial(text, transcript.confidence))
        except Shed:
            pass  # the speech lane is behind: no partial this time
        finally:
            self.partial = None

    def has_words(self, text: str, kept: float = 1.0) -> bool:
        """Whether ``text`` holds the user's words: enough of them, and not the bot's echo (``kept``:
        the share of the utterance's sound the echo guard let through)."""
        enough = (
            len(meaningful_words(text, self.session.config.filler_words)) >= self.session.config.min_words
        )
        return enough and not self.session.player.spoken.echoes(text, time.monotonic(), kept)

    def may_barge(self, transcript: Transcript, kept: float = 1.0) -> bool:
        rules = self.session.config.barge_in
        cooled = time.monotonic() - self.last_barge_at >= rules.cooldown_s
        echo = self.session.player.spoken.echoes(transcript.text, time.monotonic(), kept)
        return rules.enabled and cooled and rules.qualifies(transcript) and not echo

    def pause(self, response: Response) -> None:
        response.resumed.clear()
        self.paused_at = self.barge_checked_at = self.segmenter.position

    def watch_barge_in(self) -> None:
        current = self.session.current
        if current is None or current.resumed.is_set() or self.barge_check is not None:
            return
        position, rules = self.segmenter.position, self.session.config.barge_in
        if position - self.paused_at > rules.window_s * VAD_RATE:
            current.resumed.set()  # long speech with no qualifying words: not an interruption
            return
        if position - self.barge_checked_at < rules.check_every_s * VAD_RATE:
            return
        self.barge_checked_at = position
        audio = self.segmenter.utterance_audio()
        kept = self.session.echo.kept(len(audio))
        self.barge_check = self.session._spawn(self._check_barge_in(current, audio, kept))

    async def _check_barge_in(self, response: Response, audio: np.ndarray, kept: float) -> None:
        try:
            transcript = await self.session.transcribe(audio)
            if self.may_barge(transcript, kept) and self.session.current is response:
                await self.interrupt_for_barge_in(response)
        finally:
            self.barge_check = None
