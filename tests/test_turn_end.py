"""End of turn from the audio: Smart Turn on clear human cases, and how its answers move the
segmenter (scripted VAD and answers), and the Realtime semantic_vad mapping."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.speech import load_16k, pocketsphinx_samples
from voxloop.backends.turn import smart_turn
from voxloop.engine import turn_end
from voxloop.engine.segmenter import SegmenterConfig, SpeechEnded, UtteranceSegmenter
from voxloop.protocols.realtime.config import RealtimeConfig, apply_update, semantic_turn
from voxloop.protocols.realtime.wire import RealtimeError

FRAME = 512  # 32 ms, as Silero's frames


class ScriptedVad:
    """Speech while the frame is loud: the engine logic, not the VAD, is under test here."""

    def probability(self, frame: np.ndarray) -> float:
        return 1.0 if float(np.abs(frame).max()) > 0.1 else 0.0

    def reset(self) -> None: ...

    def close(self) -> None: ...


def sentence(prefix: str) -> np.ndarray:
    path = next(path for path, text in pocketsphinx_samples() if text.startswith(prefix))
    return load_16k(path)


@pytest.mark.skipif(smart_turn.shared() is None, reason="pipecat-ai's Smart Turn model missing")
@pytest.mark.parametrize("prefix", ["and mister john dashwood", "had he married a more"])
def test_smart_turn_hears_a_finished_sentence_and_one_cut_mid_way(prefix: str) -> None:
    model = smart_turn.shared()
    assert model is not None
    audio = sentence(prefix)
    pause = np.zeros(3200, np.float32)  # the 200 ms the engine waits before asking
    assert model.complete(np.concatenate([audio, pause])) > 0.85
    assert model.complete(np.concatenate([audio[: mid_sentence_gap(audio)], pause])) < 0.5


def mid_sentence_gap(audio: np.ndarray) -> int:
    """The quietest point of the sentence's middle third: a pause between two words."""
    energy = np.convolve(audio**2, np.ones(800) / 800, mode="same")
    low, high = len(audio) * 35 // 100, len(audio) * 65 // 100
    return low + int(np.argmin(energy[low:high]))


def test_log_mel_is_whispers_shape_and_range() -> None:
    features = smart_turn.log_mel(np.sin(np.arange(16000) / 5).astype(np.float32))
    assert features.shape == (80, 800) and features.dtype == np.float32
    assert -1.5 < features.min() and features.max() < 2.5


async def feed_until_end(
    answers: list[float],
    monkeypatch: pytest.MonkeyPatch,
    words: str = "What time is it?",
    silence_s: float = 3.0,
) -> tuple[float | None, list[float]]:
    """~0.5 s of loud audio then silence; the speculative transcript (``words``) arrives 300 ms
    into it. Returns the silence (s) after which the utterance ended and the model's inputs."""
    asked: list[float] = []

    def scripted(audio: np.ndarray) -> float:
        asked.append(len(audio) / 16000)
        return answers[min(len(asked), len(answers)) - 1]

    monkeypatch.setattr(turn_end, "_complete", scripted)
    segmenter = UtteranceSegmenter(ScriptedVad(), FRAME, SegmenterConfig())
    detector = turn_end.EndOfTurn()
    segmenter.push(np.full(16 * FRAME, 0.5, np.float32))
    for step in range(int(silence_s * 16000 / FRAME)):
        ended = [e for e in segmenter.push(np.zeros(FRAME, np.float32)) if isinstance(e, SpeechEnded)]
        if step == 9:
            detector.heard(18 * FRAME, words)  # speculation started at ~100 ms of silence
        if not ended and detector.update(segmenter):
            ended = [segmenter.end_now()]
        if ended:
            assert ended[0] is not None and ended[0].at_sample == 16 * FRAME  # the last voiced sample
            return (step + 1) * FRAME / 16000, asked
        await asyncio.sleep(0.01)  # real time enough for the worker to answer
    return None, asked


async def test_a_confident_model_ends_the_turn_at_200_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    ended_after, asked = await feed_until_end([0.97], monkeypatch)
    assert ended_after is not None and 0.2 <= ended_after < 0.48 and len(asked) == 1


async def test_words_that_stop_mid_sentence_hold_the_turn_open(monkeypatch: pytest.MonkeyPatch) -> None:
    ended_after, _ = await feed_until_end([0.97], monkeypatch, words="Please remind me to")
    assert ended_after is not None and 1.4 <= ended_after <= 1.6


def test_unfinished_words() -> None:
    for text in ("Please remind me to", "My favourite colour is", "Can you tell me the...", "I want a,"):
        assert turn_end.sounds_unfinished(text), text
    for text in ("What time is it?", "Book a table for two.", "Thanks", ""):
        assert not turn_end.sounds_unfinished(text), text


async def test_mid_sentence_waits_past_the_hangover_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    ended_after, _ = await feed_until_end([0.05], monkeypatch)
    assert ended_after is not None and 1.4 <= ended_after <= 1.6  # max_hangover_ms, not 480 ms


async def test_an_unsure_model_leaves_the_hangover_to_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    ended_after, _ = await feed_until_end([0.7], monkeypatch)
    assert ended_after is not None and 0.45 <= ended_after <= 0.55


def test_semantic_vad_eagerness_maps_onto_the_turn_model() -> None:
    config = apply_update(RealtimeConfig(), {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}})
    assert config.turn_detection is not None
    low = semantic_turn(config.turn_detection)
    high = semantic_turn({"type": "semantic_vad", "eagerness": "high"})
    assert low["smart_turn"] and high["smart_turn"]
    assert low["early_end_probability"] > high["early_end_probability"]
    assert low["max_hangover_ms"] > high["max_hangover_ms"]
    assert semantic_turn({"type": "server_vad"}) == {"smart_turn": False}
    with pytest.raises(RealtimeError):
        apply_update(RealtimeConfig(), {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}})
