"""Synthesis as an async stream of wire-ready PCM16 at the client's rate, sentence by sentence."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import numpy as np

from voxloop.audio.pcm import StreamResampler, float_to_pcm16
from voxloop.backends import workers
from voxloop.backends.scheduler import JobKind
from voxloop.backends.tts.base import Voice
from voxloop.backends.tts.voices import Speaker


@dataclass
class RenderedSpeech:
    pcm: bytes  # S16LE mono at ``sample_rate``
    sample_rate: int
    text: str
    audio: np.ndarray  # float32 at ``sample_rate``, for visemes and metering
    reference: np.ndarray  # the same at ``reference_rate`` (the echo guard's), empty if none asked

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


async def speak(
    speaker: Speaker,
    text: str,
    voice: Voice,
    language: str,
    speed: float,
    sample_rate: int,
    reference_rate: int | None = None,
) -> AsyncIterator[RenderedSpeech]:
    """Runs synthesis on the voice worker; closing the iterator stops it after the current sentence."""

    def render() -> Iterator[RenderedSpeech]:
        # Resamplers that last the whole stream: Piper's first sentence comes in spans that
        # join mid-word, where resampling each on its own would click. What one still holds at the
        # end (~20 ms) is the last piece's trailing silence, and is left out.
        to_output: StreamResampler | None = None
        to_reference: StreamResampler | None = None
        for chunk in speaker.synthesize(text, voice, language, speed):
            if to_output is None:  # every chunk of one voice has the same rate
                to_output = StreamResampler(chunk.sample_rate, sample_rate)
                to_reference = StreamResampler(chunk.sample_rate, reference_rate) if reference_rate else None
            audio = to_output.process(chunk.audio)
            reference = to_reference.process(chunk.audio) if to_reference else audio[:0]
            yield RenderedSpeech(float_to_pcm16(audio), sample_rate, chunk.text, audio, reference)

    async for rendered in workers.iterate_in(workers.VOICE, render, JobKind.TTS):
        yield rendered


def frames(pcm: bytes, sample_rate: int, frame_ms: int = 40) -> list[bytes]:
    size = 2 * sample_rate * frame_ms // 1000
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]
