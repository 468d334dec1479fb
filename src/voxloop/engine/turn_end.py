"""End of turn from the sound of the user's speech, not from silence alone.

Once the user has paused for ``early_end_after_ms`` the utterance so far goes to Smart Turn
(backends/turn) on its own worker. Sure it is complete: the turn ends now, ~200 ms into the
pause instead of after the whole hangover, and the reply speculatively prepared since 100 ms is
released at once. Sure it is not (the user stopped mid-sentence, "I'd like to book a table ..."):
the pause is waited out up to ``max_hangover_ms``. Unsure, or no model installed: the VAD
hangover decides, as before. Every new pause is asked again.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from voxloop.backends import workers
from voxloop.backends.turn import smart_turn
from voxloop.engine.segmenter import UtteranceSegmenter

log = logging.getLogger(__name__)


def _complete(audio: np.ndarray) -> float | None:
    model = smart_turn.shared()  # loaded on first use, on the worker
    return None if model is None else model.complete(audio)


class EndOfTurn:
    def __init__(self) -> None:
        self._pause: int | None = None  # voiced_until of the pause asked about
        self._answer: asyncio.Future[float | None] | None = None

    def update(self, segmenter: UtteranceSegmenter) -> bool:
        """Called after each chunk of audio; True when the utterance should end now."""
        config = segmenter.config
        if not config.smart_turn or not segmenter.speaking or segmenter.trailing_silence_s == 0.0:
            self._pause, self._answer = None, None  # speaking (or done): any answer is stale
            return False
        pause = segmenter.voiced_until
        if self._pause != pause and segmenter.trailing_silence_s * 1000 >= config.early_end_after_ms:
            self._pause = pause
            audio = segmenter.utterance_audio()
            self._answer = asyncio.ensure_future(workers.run_in(smart_turn.WORKER, _complete, audio))
            self._answer.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved
        if self._answer is None or not self._answer.done():
            return False
        answer, self._answer = self._answer, None
        if answer.cancelled() or answer.exception() is not None:
            log.warning("end-of-turn model failed: %s", None if answer.cancelled() else answer.exception())
            return False
        probability = answer.result()
        if probability is None:
            return False
        if probability >= config.early_end_probability:
            return True
        if probability < config.mid_sentence_probability:
            segmenter.hold(config.max_hangover_ms)
        return False
