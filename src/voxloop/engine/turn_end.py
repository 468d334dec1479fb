"""End of turn from the sound of the user's speech and their words, not from silence alone.

Once the user has paused for ``early_end_after_ms`` the utterance so far goes to Smart Turn
(backends/turn) on its own worker; the transcript of the speculative turn (started at 100 ms of
silence) arrives meanwhile. Both say complete: the turn ends now, instead of after the whole
hangover, and the speculative reply is released at once (waiting for the transcript costs
nothing: the reply needs it anyway). Either says the user stopped mid-sentence (Smart Turn's
probability is low, or the words end on "to", "the", "and", ... as in "Please remind me to ..."):
the pause is waited out up to ``max_hangover_ms``. Otherwise, or without the model, the VAD
hangover decides, as before. Every new pause is judged again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import numpy as np

from voxloop.backends.scheduler import BUSY, RUN_TIME
from voxloop.backends.turn import smart_turn
from voxloop.engine.segmenter import UtteranceSegmenter

log = logging.getLogger(__name__)

# Words an English sentence does not end on: articles, prepositions, conjunctions, auxiliaries,
# possessives. Whisper also writes "..." or a comma where the speaker trailed off.
UNFINISHED_ENDINGS = frozenset(
    "a an the to of in on at for from with by about into and or but so because if than that which who "
    "whose my your his her our their its is are was were am be been being do does did have has had "
    "can could will would should shall may might must i i'm i'd you we they he she it's like want "
    "very really more most some any this these those what where when how why".split()
)


def sounds_unfinished(text: str) -> bool:
    stripped = text.strip()
    if not stripped or stripped.endswith(("...", "…", ",", "-")):
        return bool(stripped)
    words = re.sub(r"[^\w\s']", " ", stripped.lower()).split()
    return bool(words) and words[-1] in UNFINISHED_ENDINGS


def _complete(audio: np.ndarray) -> float | None:
    started = time.perf_counter()
    model = smart_turn.shared()  # loaded on first use, on the worker
    probability = None if model is None else model.complete(audio)
    ran = time.perf_counter() - started
    RUN_TIME.labels("smart_turn").observe(ran)
    BUSY.labels("turn").inc(ran)
    return probability


class EndOfTurn:
    def __init__(self) -> None:
        self._pause: int | None = None  # voiced_until of the pause being judged
        self._answer: asyncio.Future[float | None] | None = None
        self._probability: float | None = None
        self._words: tuple[int, str] | None = None  # (speculation position, its transcript)

    def heard(self, audio_end: int, text: str) -> None:
        """The transcript of the utterance up to ``audio_end`` (a speculative turn's)."""
        self._words = (audio_end, text)

    def update(self, segmenter: UtteranceSegmenter) -> bool:
        """Called after each chunk of audio; True when the utterance should end now."""
        config = segmenter.config
        if not config.smart_turn or not segmenter.speaking or segmenter.trailing_silence_s == 0.0:
            self._pause = self._answer = self._probability = None  # speaking (or done): judge afresh
            return False
        pause = segmenter.voiced_until
        if self._pause != pause and segmenter.trailing_silence_s * 1000 >= config.early_end_after_ms:
            self._pause, self._probability = pause, None
            audio = segmenter.utterance_audio()
            # Its own thread, not a scheduler lane: the answer decides when a waiting user is answered.
            self._answer = asyncio.get_running_loop().run_in_executor(smart_turn.WORKER, _complete, audio)
            self._answer.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved
        if self._answer is not None and self._answer.done():
            answer, self._answer = self._answer, None
            if not answer.cancelled() and answer.exception() is None:
                self._probability = answer.result()
            else:
                log.warning(
                    "end-of-turn model failed: %s", answer.exception() if not answer.cancelled() else ""
                )
        words = self._words[1] if self._words is not None and self._words[0] >= pause else None
        probability = self._probability
        if (words is not None and sounds_unfinished(words)) or (
            probability is not None and probability < config.mid_sentence_probability
        ):
            segmenter.hold(config.max_hangover_ms)
            return False
        return probability is not None and probability >= config.early_end_probability and words is not None
