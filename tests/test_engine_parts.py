"""Engine pieces on their own: segmenter (real Silero VAD), speech chunker, playout bookkeeping,
echo guard, history and tool declarations."""

from __future__ import annotations

import numpy as np
import pytest

from tests.speech import espeak_16k
from voxloop.backends.llm.base import ChatMessage, ToolCall
from voxloop.backends.vad.silero import SileroVad
from voxloop.engine.chunker import SpeechChunker
from voxloop.engine.echo import EchoGuard
from voxloop.engine.history import History
from voxloop.engine.playout import LEAD_S, Playout
from voxloop.engine.segmenter import SegmenterConfig, SpeechEnded, SpeechStarted, UtteranceSegmenter
from voxloop.engine.tools import ToolRegistry, parse_client_tools

RATE = 16000


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def feed(segmenter: UtteranceSegmenter, audio: np.ndarray, step: int = 320) -> list:
    found = []
    for start in range(0, len(audio), step):
        found.extend(segmenter.push(audio[start : start + step]))
    return found


def test_segmenter_keeps_pre_roll_and_ends_after_hangover(vad: SileroVad) -> None:
    speech = espeak_16k("hello there, this is a test")
    lead = np.zeros(RATE, np.float32)
    audio = np.concatenate([lead, speech, np.zeros(RATE, np.float32)])
    config = SegmenterConfig(pre_roll_ms=320, hangover_ms=480)
    segmenter = UtteranceSegmenter(vad.new_stream(), vad.frame_samples, config)
    found = feed(segmenter, audio)
    assert [type(e) for e in found] == [SpeechStarted, SpeechEnded]
    started, ended = found
    onset = int(np.argmax(np.abs(speech) > 0.01)) + len(lead)
    assert abs(started.at_sample - onset) < 0.15 * RATE
    # the utterance reaches back at least the pre-roll before the detected start
    assert len(ended.audio) >= (ended.at_sample - started.at_sample) + 0.3 * RATE
    assert ended.at_sample < len(lead) + len(speech) + 0.1 * RATE


def test_segmenter_ignores_silence_and_noise(vad: SileroVad) -> None:
    rng = np.random.default_rng(1)
    noise = (0.05 * rng.standard_normal(3 * RATE)).astype(np.float32)
    segmenter = UtteranceSegmenter(vad.new_stream(), vad.frame_samples)
    assert feed(segmenter, np.concatenate([np.zeros(RATE, np.float32), noise])) == []


def test_segmenter_works_faster_than_real_time_in_one_push(vad: SileroVad) -> None:
    audio = np.concatenate([espeak_16k("one two three"), np.zeros(RATE, np.float32)])
    segmenter = UtteranceSegmenter(vad.new_stream(), vad.frame_samples)
    found = segmenter.push(audio)
    assert isinstance(found[-1], SpeechEnded) and segmenter.position == len(audio) // 512 * 512


def test_chunker_speaks_a_clause_first_then_sentences() -> None:
    chunker = SpeechChunker()
    pieces = []
    for token in "Sure, **Paris** is the capital of France. It has the Eiffel Tower. And".split(" "):
        pieces += chunker.push(token + " ")
    pieces += chunker.flush()
    assert pieces == ["Sure, Paris is the capital of France.", "It has the Eiffel Tower.", "And"]
    early = SpeechChunker()
    assert early.push("Well, let me think about that, because it is a hard question ") == [
        "Well, let me think about that,"
    ]


def test_playout_paces_and_knows_what_was_heard() -> None:
    playout = Playout(sample_rate=1000)
    playout.add_text(0.0, 1.0, "one two three four")
    playout.add_text(1.0, 2.0, "five six")
    now = 100.0
    assert playout.sent(1000, now) == now  # plays on arrival
    assert playout.wait_before_next(now) == pytest.approx(1.0 - LEAD_S)
    playout.sent(1000, now)  # queued behind the first second
    assert playout.heard_text(now + 0.5) == "one two"
    assert playout.heard_text(now + 1.5) == "one two three four five"
    assert playout.heard_text(now + 5) == "one two three four five six"


def test_echo_guard_removes_delayed_reply_but_keeps_the_user() -> None:
    bot = espeak_16k("I am the assistant talking about the weather in Paris today and tomorrow.")
    user = espeak_16k("stop please", "en-us+f3")
    total = len(bot) + RATE
    delay = int(0.25 * RATE)
    mic = (1e-3 * np.random.default_rng(2).standard_normal(total)).astype(np.float32)  # room noise
    mic[delay : delay + len(bot)] += 0.5 * bot[: total - delay]
    user_at = len(bot) // 2
    mic[user_at : user_at + len(user)] += user
    guard, cleaned, written = EchoGuard(), [], 0
    for start in range(0, total, 512):
        while written < len(bot) and written <= start + 3200:  # reference written 200 ms ahead
            guard.add_reference(
                bot[written : written + 640], (written - start) / RATE, contiguous=written > 0
            )
            written += 640
        cleaned.append(guard.process(mic[start : start + 512]))
    out = np.concatenate(cleaned)
    echo_only = slice(delay + RATE, user_at)
    reduction = 10 * np.log10(np.mean(mic[echo_only] ** 2) / np.mean(out[echo_only] ** 2))
    assert reduction > 20, reduction
    kept = np.mean(out[user_at : user_at + len(user)] ** 2) / np.mean(user**2)
    assert 0.7 < kept < 1.5


def test_history_is_bounded_drops_in_halves_and_never_starts_with_a_tool_result() -> None:
    history = History("Be brief.", max_messages=4)
    for i in range(3):
        history.insert([ChatMessage("user", f"q{i}"), ChatMessage("assistant", f"a{i}")])
    messages = history.for_llm("en")
    assert messages[0].role == "system" and "Be brief." in messages[0].content
    assert [m.content for m in messages[1:]] == ["q2", "a2"]  # 6 > 4: the oldest dropped down to 2
    prefix = [m.content for m in history.for_llm("en")]
    history.insert([ChatMessage("user", "q3"), ChatMessage("assistant", "a3")])
    assert [m.content for m in history.for_llm("en")][: len(prefix)] == prefix  # stable prefix: cache hit
    call = ToolCall("c1", "lookup", {})
    history.insert(
        [
            ChatMessage("user", "q4"),
            ChatMessage("assistant", "", tool_calls=[call]),
            ChatMessage("tool", "{}", tool_call_id="c1"),
            ChatMessage("assistant", "a4"),
        ]
    )
    assert history.messages[0].role == "user"  # a turn is trimmed whole, never to an orphan result
    assert history.for_llm("en", [ChatMessage("user", "x")])[-1].content == "x"
    assert "Spanish" in history.for_llm("es")[0].content


async def test_tools_registry_and_client_declarations() -> None:
    registry = ToolRegistry()

    @registry.tool("Add two numbers.", {"type": "object", "properties": {"a": {}, "b": {}}})
    def add(a: int, b: int) -> int:
        return a + b

    assert await registry.call("add", {"a": 2, "b": 3}) == "5"
    assert "error" in await registry.call("add", {"a": 2})
    flat, nested = parse_client_tools(
        [{"name": "flat", "description": "d"}, {"type": "function", "function": {"name": "nested"}}]
    )
    assert (flat.name, nested.name) == ("flat", "nested")
    with pytest.raises(ValueError):
        parse_client_tools([{"description": "no name"}])
