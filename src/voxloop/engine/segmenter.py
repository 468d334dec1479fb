"""Cuts a 16 kHz audio stream into utterances with the VAD: pre-roll, minimum speech, hangover.

The hangover is the fallback: ``engine/turn_end.py`` may end an utterance sooner (``end_now``)
when the user sounds finished, or ``hold`` it open longer when they sound mid-sentence.

The clock is samples received, never wall time, so streams can be fed faster than real time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from voxloop.backends.vad.base import VadStream


@dataclass(frozen=True)
class SegmenterConfig:
    threshold: float = 0.5  # probability at which a frame counts as speech
    release: float = 0.35  # below this a frame counts as silence (hysteresis)
    min_speech_ms: int = 96  # voiced time before an utterance is declared started
    hangover_ms: int = 480  # trailing silence that ends an utterance
    pre_roll_ms: int = 320  # audio kept from before the detected start
    max_utterance_s: float = 30.0  # longer speech is cut into utterances of this length
    smart_turn: bool = True  # ask the end-of-turn model (Smart Turn) during the user's pauses
    early_end_after_ms: int = 200  # silence after which the model is asked
    early_end_probability: float = 0.85  # at least this sure the turn is complete: end it now
    mid_sentence_probability: float = 0.5  # below this the user is mid-sentence: wait longer
    max_hangover_ms: int = 1500  # the longest a mid-sentence pause is waited out


@dataclass(frozen=True)
class SpeechStarted:
    at_sample: int  # stream position of the first voiced frame


@dataclass(frozen=True)
class SpeechEnded:
    audio: np.ndarray  # the whole utterance, pre-roll included
    at_sample: int  # stream position of the end of the last voiced frame


SegmenterEvent = SpeechStarted | SpeechEnded


class UtteranceSegmenter:
    def __init__(
        self,
        vad: VadStream,
        frame_samples: int,
        config: SegmenterConfig | None = None,
        sample_rate: int = 16000,
    ) -> None:
        self.vad, self.frame_samples, self.sample_rate = vad, frame_samples, sample_rate
        self.config = config or SegmenterConfig()
        frames = lambda ms: max(1, round(ms * sample_rate / 1000 / frame_samples))  # noqa: E731
        self._min_speech_frames = frames(self.config.min_speech_ms)
        self._base_hangover = self._hangover_frames = frames(self.config.hangover_ms)
        self._frames = frames
        self._max_frames = frames(self.config.max_utterance_s * 1000)
        self._pending = np.zeros(0, dtype=np.float32)
        self._recent: deque[np.ndarray] = deque(
            maxlen=frames(self.config.pre_roll_ms) + self._min_speech_frames
        )
        self._utterance: list[np.ndarray] = []
        self._voiced_run = 0
        self._silent_run = 0
        self.position = 0  # samples consumed so far
        self.speaking = False

    def push(self, samples: np.ndarray) -> list[SegmenterEvent]:
        self._pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        events: list[SegmenterEvent] = []
        n = self.frame_samples
        while len(self._pending) >= n:
            frame, self._pending = self._pending[:n], self._pending[n:]
            event = self._step(frame)
            if event is not None:
                events.append(event)
        return events

    @property
    def trailing_silence_s(self) -> float:
        """Silence since the last voiced frame of the current utterance."""
        return self._silent_run * self.frame_samples / self.sample_rate if self.speaking else 0.0

    @property
    def voiced_until(self) -> int:
        """Stream position of the end of the last voiced frame (while speaking)."""
        return self.position - self._silent_run * self.frame_samples

    def hold(self, hangover_ms: int) -> None:
        """This pause ends the utterance only after ``hangover_ms`` of silence (until speech resumes)."""
        self._hangover_frames = max(self._hangover_frames, self._frames(hangover_ms))

    def end_now(self) -> SpeechEnded | None:
        """End the current utterance at its last voiced frame (the user sounds finished)."""
        return self._end(self.voiced_until) if self.speaking else None

    def utterance_audio(self) -> np.ndarray:
        """The utterance so far (empty when nobody is speaking)."""
        return np.concatenate(self._utterance) if self._utterance else np.zeros(0, dtype=np.float32)

    def finish(self) -> SpeechEnded | None:
        """Force the end of the current utterance (client said it is done)."""
        if not self.speaking:
            return None
        return self._end(self.position)

    def reset(self) -> None:
        self.vad.reset()
        self._recent.clear()
        self._utterance = []
        self._voiced_run = self._silent_run = 0
        self.speaking = False

    def _step(self, frame: np.ndarray) -> SegmenterEvent | None:
        probability = self.vad.probability(frame)
        self.position += len(frame)
        if not self.speaking:
            self._recent.append(frame)
            self._voiced_run = self._voiced_run + 1 if probability >= self.config.threshold else 0
            if self._voiced_run < self._min_speech_frames:
                return None
            self.speaking = True
            self._silent_run = 0
            self._utterance = list(self._recent)
            self._recent.clear()
            return SpeechStarted(at_sample=self.position - self._voiced_run * len(frame))
        self._utterance.append(frame)
        if probability < self.config.release:
            self._silent_run += 1
            if self._silent_run >= self._hangover_frames:
                return self._end(self.position - self._silent_run * len(frame))
        elif probability >= self.config.threshold:
            self._silent_run = 0
            self._hangover_frames = self._base_hangover  # a new pause gets a new decision
        if len(self._utterance) >= self._max_frames:
            return self._end(self.position)
        return None

    def _end(self, at_sample: int) -> SpeechEnded:
        audio = self.utterance_audio()
        self._utterance = []
        self._voiced_run = self._silent_run = 0
        self._hangover_frames = self._base_hangover
        self.speaking = False
        return SpeechEnded(audio=audio, at_sample=at_sample)
