"""The engine's turn logic on scripted backends (tests/fakes.py): speculation kept and thrown away,
barge-in that pauses then resumes or cuts, stale replies dropped, history cut to the heard words,
server and client tools, language following. Every outcome is decided by the session, none by a
model, so each test asserts exact events and finishes in a fraction of a second."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
import pytest

from tests.fakes import FakeBackends, Microphone
from voxloop.audio.pcm import float_to_pcm16
from voxloop.backends.llm.base import ToolCall, ToolSpec
from voxloop.engine import events
from voxloop.engine import turns as turns_module
from voxloop.engine.session import Session, SessionConfig
from voxloop.engine.tools import ToolRegistry

WAIT_S = 5.0  # a generous bound for one awaited event: the tests take milliseconds
LONG_REPLY = " ".join(f"word{i}" for i in range(40)) + "."  # 0.8 s of reply audio


@dataclass
class Harness:
    session: Session
    backends: FakeBackends
    mic: Microphone
    seen: list[events.Event]

    async def until(self, check: Callable[[], object], what: str = "") -> None:
        """Waits for a positive signal (never for a fixed time)."""
        async with asyncio.timeout(WAIT_S):
            while not check():  # noqa: ASYNC110 (engine state and fake backends, not one event)
                await asyncio.sleep(0.002)
        assert check(), what

    async def event(self, kind: type, where: Callable[[events.Event], bool] = lambda e: True) -> events.Event:
        found: list[events.Event] = []

        def present() -> bool:
            found[:] = [e for e in self.seen if isinstance(e, kind) and where(e)]
            return bool(found)

        await self.until(present, f"no {kind.__name__}")
        return found[0]

    def of(self, kind: type) -> list:
        return [e for e in self.seen if isinstance(e, kind)]

    def history(self) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in self.session.history.messages]


@pytest.fixture
async def harness(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    # The fake microphone pauses only while a test waits: that is not a client gone quiet.
    monkeypatch.setattr(turns_module, "IDLE_GAP_S", 3600.0)
    backends = FakeBackends()
    tools = ToolRegistry()

    @tools.tool("The time of day.")
    def clock() -> str:
        return "noon"

    config = SessionConfig(input_rate=16000, output_rate=16000, speculate_after_s=0.1)
    session = Session(backends, config, tools)  # type: ignore[arg-type]
    session.echo.no_echo_path = True  # a headset: the fake reply audio never comes back
    seen: list[events.Event] = []

    async def read() -> None:
        while True:
            seen.append(await session.next_event())

    reader = asyncio.create_task(read())
    yield Harness(session, backends, Microphone(session, backends.stt), seen)
    reader.cancel()
    await session.close()


async def test_a_spoken_turn_gets_its_events_in_order(harness: Harness) -> None:
    await harness.mic.say("hello there")
    await harness.mic.pause(0.6)
    done = await harness.event(events.ResponseDone)
    assert done == events.ResponseDone(1, "You said: hello there.", interrupted=False)
    await harness.event(events.StatusChanged, lambda e: e.status == "listening" and e.generation == 1)
    order = [type(e).__name__ for e in harness.seen if not isinstance(e, events.AudioOut | events.TextDelta)]
    assert order == [
        "SpeechStarted",
        "StatusChanged",  # listening
        "SpeechStopped",
        "TranscriptFinal",  # user
        "StatusChanged",  # thinking
        "StatusChanged",  # speaking
        "TranscriptFinal",  # assistant
        "TurnMetrics",
        "ResponseDone",
        "StatusChanged",  # listening
    ], order
    statuses = [e.status for e in harness.of(events.StatusChanged)]
    assert statuses == ["listening", "thinking", "speaking", "listening"]
    assert harness.history() == [("user", "hello there"), ("assistant", "You said: hello there.")]
    reply = harness.session.handle(1)
    assert reply is not None and reply.source == "microphone" and reply.done() and not reply.interrupted
    assert reply.heard == reply.text == done.text
    replies = {e.generation for e in harness.seen if isinstance(e, events.AudioOut | events.TranscriptFinal)}
    assert replies == {1}  # every reply event carries its id


async def test_the_next_turn_is_asked_with_the_whole_conversation_before_it(harness: Harness) -> None:
    await harness.mic.say("what is the capital of france")
    await harness.mic.pause(0.6)
    first = await harness.event(events.ResponseDone)
    # Its audio played out: the next words are a new turn, not words over a reply.
    await harness.event(
        events.StatusChanged, lambda e: e.status == "listening" and e.generation == first.generation
    )
    await harness.mic.say("which country was it")
    await harness.mic.pause(0.6)
    # (One ending in "about" can be held as unfinished past WAIT_S: 5 of 12 runs timed out.)
    await harness.until(lambda: len(harness.of(events.ResponseDone)) == 2, "no second reply")
    asked = [(m.role, m.content) for m in harness.backends.llm.requests[-1] if m.role != "system"]
    assert asked == [
        ("user", "what is the capital of france"),
        ("assistant", "You said: what is the capital of france."),
        ("user", "which country was it"),
    ]


async def test_speculation_is_kept_when_the_user_is_done(harness: Harness) -> None:
    llm = harness.backends.llm
    llm.gate = asyncio.Event()
    await harness.mic.say("what time is it")
    await harness.mic.pause(0.2)  # past speculate_after_s, within the 480 ms hangover
    await harness.until(lambda: len(llm.requests) == 1, "no speculative reply")
    assert harness.session.segmenter.speaking  # the turn is not over: the reply is held
    assert not harness.of(events.TranscriptFinal)
    await harness.mic.pause(0.5)  # the hangover ends: the speculative reply is released as is
    await harness.event(events.SpeechStopped)
    llm.gate.set()
    await harness.event(events.ResponseDone)
    assert len(llm.requests) == 1 and harness.backends.stt.calls == 1  # nothing done twice
    assert harness.history()[0] == ("user", "what time is it")


async def test_speculation_is_thrown_away_when_the_user_goes_on(harness: Harness) -> None:
    llm, stt = harness.backends.llm, harness.backends.stt
    llm.gate = asyncio.Event()
    await harness.mic.say("what is the")
    await harness.mic.pause(0.2)
    await harness.until(lambda: len(llm.requests) == 1, "no speculative reply")
    await harness.mic.say("capital of France")  # the user goes on: that reply is dropped
    await harness.until(lambda: llm.closed == 1, "the speculative reply kept running")
    dropped = harness.session.handle(1)
    assert dropped is not None and dropped.done() and dropped.reason == "discarded" and not dropped.heard
    llm.gate.set()
    await harness.mic.pause(0.6)
    done = await harness.event(events.ResponseDone)
    assert done.text == "You said: what is the capital of France."
    users = [e.text for e in harness.of(events.TranscriptFinal) if e.role == "user"]
    assert users == ["what is the capital of France"]
    assert len(harness.of(events.ResponseDone)) == 1 and stt.calls >= 2
    assert done.generation > 1 and not [e for e in harness.seen if getattr(e, "generation", 0) == 1]
    assert harness.history() == [("user", users[0]), ("assistant", done.text)]


async def test_a_filler_over_a_reply_pauses_it_then_it_resumes(harness: Harness) -> None:
    """A false interruption: speech pauses the reply at once; "um" never qualifies, so it goes on."""
    harness.backends.llm.script("tell me a story", LONG_REPLY)
    await harness.session.reply("tell me a story")
    await harness.event(events.AudioOut)
    await harness.mic.say("um", seconds=0.3)
    reply = harness.session.current
    assert reply is not None and not reply.resumed.is_set()  # paused while the words are checked
    await harness.mic.pause(0.6)
    await harness.until(lambda: reply.resumed.is_set(), "the reply never resumed")
    done = await harness.event(events.ResponseDone)
    assert not done.interrupted and done.text == LONG_REPLY
    assert not harness.of(events.Interrupted)
    assert not [e for e in harness.of(events.TranscriptFinal) if e.role == "user" and e.text == "um"]
    assert harness.history() == [("user", "tell me a story"), ("assistant", LONG_REPLY)]


async def test_words_over_a_reply_cut_it_and_the_history_keeps_what_was_heard(harness: Harness) -> None:
    harness.backends.llm.script("tell me a story", LONG_REPLY)
    await harness.session.reply("tell me a story")
    await harness.until(lambda: len(harness.of(events.AudioOut)) >= 10)
    await harness.mic.say("stop please", seconds=0.4)
    await harness.mic.pause(0.2)  # the paused-for words are checked every 0.3 s of audio
    cut = await harness.event(events.Interrupted)
    assert cut == events.Interrupted(1, "barge_in")
    first = await harness.event(events.ResponseDone, lambda e: e.generation == 1)
    assert first.interrupted and first.text and LONG_REPLY.startswith(first.text)
    story = harness.session.handle(1)
    assert story is not None and story.interrupted and story.reason == "barge_in"
    assert story.heard == first.text
    assert len(first.text) < len(LONG_REPLY)
    await harness.mic.pause(0.6)
    second = await harness.event(events.ResponseDone, lambda e: e.generation == 2)
    assert second.text == "You said: stop please."
    assert harness.history() == [
        ("user", "tell me a story"),
        ("assistant", first.text),  # only the words played before the cut
        ("user", "stop please"),
        ("assistant", second.text),
    ]
    statuses = [(e.status, e.generation) for e in harness.of(events.StatusChanged)]
    assert statuses.index(("interrupted", 1)) < statuses.index(("thinking", 2))


async def test_words_in_sound_the_echo_guard_mostly_removed_are_echo(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whisper reads words ("This one.") into what the canceller leaves of the bot's own voice:
    speech whose sound the guard mostly removed neither cuts the reply nor becomes a turn."""
    weighed: list[int] = []
    monkeypatch.setattr(harness.session.echo, "kept", lambda samples: weighed.append(samples) or 0.1)
    harness.backends.llm.script("tell me a story", LONG_REPLY)
    await harness.session.reply("tell me a story")
    await harness.until(lambda: len(harness.of(events.AudioOut)) >= 10)
    await harness.mic.say("this one", seconds=0.4)
    await harness.mic.pause(0.6)
    done = await harness.event(events.ResponseDone)
    assert not done.interrupted and not harness.of(events.Interrupted)
    assert harness.history() == [("user", "tell me a story"), ("assistant", LONG_REPLY)]
    assert weighed and max(weighed) >= 0.4 * 16000  # the whole utterance, not its last packet


async def test_words_below_the_barge_in_rules_do_not_cut(harness: Harness) -> None:
    harness.session.config.barge_in.min_words = 3
    harness.backends.llm.script("tell me a story", LONG_REPLY)
    await harness.session.reply("tell me a story")
    await harness.event(events.AudioOut)
    await harness.mic.say("wait", seconds=0.3)  # a word, but fewer than three
    await harness.mic.pause(0.6)
    done = await harness.event(events.ResponseDone)
    assert not done.interrupted and not harness.of(events.Interrupted)


async def test_interrupting_a_reply_handle_keeps_the_heard_words(harness: Harness) -> None:
    harness.backends.llm.script("tell me a story", LONG_REPLY)
    reply = await harness.session.reply("tell me a story")
    assert reply.source == "text" and harness.session.handle(reply.id) is reply and not reply.done()
    await harness.until(lambda: len(harness.of(events.AudioOut)) >= 12)
    heard_before = reply.heard
    assert heard_before and LONG_REPLY.startswith(heard_before)  # what was heard so far, while playing
    await reply.interrupt()
    await reply.wait()
    assert reply.interrupted and reply.reason == "client"
    done = await harness.event(events.ResponseDone)
    assert reply.heard == done.text and done.text.startswith(heard_before)
    assert harness.of(events.Interrupted) == [events.Interrupted(1, "client")]
    heard = done.text.split()
    assert done.interrupted and heard == LONG_REPLY.split()[: len(heard)] and len(heard) < 40
    assistant = [e for e in harness.of(events.TranscriptFinal) if e.role == "assistant"]
    assert [e.text for e in assistant] == [done.text] and assistant[0].interrupted
    assert harness.history()[-1] == ("assistant", done.text)


async def test_a_newer_reply_drops_the_stale_one(harness: Harness) -> None:
    harness.backends.llm.script("tell me a story", LONG_REPLY)
    first = (await harness.session.reply("tell me a story")).id
    await harness.event(events.AudioOut)
    second = (await harness.session.reply("just say OK")).id
    await harness.event(events.ResponseDone, lambda e: e.generation == second)
    cut_at = harness.seen.index(events.Interrupted(first, "new_input"))
    assert not [e for e in harness.seen[cut_at:] if isinstance(e, events.AudioOut) and e.generation == first]
    assert [e.generation for e in harness.of(events.ResponseDone)] == [first, second]
    assert harness.history()[-2:] == [("user", "just say OK"), ("assistant", "You said: just say OK.")]


async def test_a_server_tool_runs_and_its_result_is_answered(harness: Harness) -> None:
    call = ToolCall("call_1", "clock", {})
    harness.backends.llm.script("what time is it", "", call, after_tools="It is noon.")
    await harness.session.reply("what time is it")
    done = await harness.event(events.ResponseDone)
    assert done.text == "It is noon."
    assert harness.of(events.ToolStarted) == [events.ToolStarted("call_1", "clock", {}, 1)]
    assert harness.of(events.ToolFinished) == [events.ToolFinished("call_1", "clock", "noon", 1)]
    roles = [(m.role, m.content, m.tool_call_id) for m in harness.session.history.messages]
    assert roles == [
        ("user", "what time is it", None),
        ("assistant", "", None),  # the call
        ("tool", "noon", "call_1"),
        ("assistant", "It is noon.", None),
    ]
    assert harness.session.history.messages[1].tool_calls == [call]


async def test_a_client_tool_waits_for_the_client_result(harness: Harness) -> None:
    harness.session.configure(client_tools=[ToolSpec("lamp", "Switches the lamp.")])
    call = ToolCall("call_7", "lamp", {"on": True})
    harness.backends.llm.script("lights on", "", call, after_tools="The lamp is on.")
    await harness.session.reply("lights on")
    asked = await harness.event(events.ToolCallRequested)
    assert asked == events.ToolCallRequested("call_7", "lamp", {"on": True}, 1)
    assert harness.session.waiting_reply("call_7") is harness.session.handle(1)
    assert not harness.of(events.ResponseDone)  # the reply waits for the client's answer
    await harness.session.submit_tool_result("call_7", json.dumps({"on": True}))
    done = await harness.event(events.ResponseDone)
    assert done.text == "The lamp is on."
    assert ("tool", '{"on": true}') in harness.history()
    with pytest.raises(ValueError):
        await harness.session.submit_tool_result("call_7", "{}")  # answered once only
    assert harness.session.waiting_reply("call_7") is None


async def test_a_manual_reply_answers_the_history(harness: Harness) -> None:
    harness.session.add_message("user", "remember green")
    reply = await harness.session.reply(None, tag="wire state")
    assert reply.source == "manual" and reply.tag == "wire state"
    done = await harness.event(events.ResponseDone)
    assert done == events.ResponseDone(reply.id, "You said: remember green.", False)
    assert not [e for e in harness.of(events.TranscriptFinal) if e.role == "user"]
    assert harness.history() == [("user", "remember green"), ("assistant", done.text)]


async def test_fillers_alone_start_no_turn(harness: Harness) -> None:
    await harness.mic.say("um")
    await harness.mic.pause(0.6)
    await harness.event(events.SpeechStopped)
    await harness.until(lambda: harness.session.pending is None, "the filler turn never ended")
    assert not harness.of(events.TranscriptFinal) and not harness.backends.llm.requests


async def test_the_reply_follows_the_language_the_user_speaks(harness: Harness) -> None:
    harness.session.configure(detect_language=True)
    await harness.mic.say("hola qué tal", language="es")
    await harness.mic.pause(0.6)
    done = await harness.event(events.ResponseDone)
    assert harness.session.config.language == "es" and harness.session.voice.languages == ("es",)
    user = next(e for e in harness.of(events.TranscriptFinal) if e.role == "user")
    assistant = next(e for e in harness.of(events.TranscriptFinal) if e.role == "assistant")
    assert user.language == "es" and assistant.language == "es" and done.text == "You said: hola qué tal."
    assert "Spanish" in harness.backends.llm.requests[-1][0].content  # the system prompt asks for Spanish


async def test_an_audio_turn_gets_the_word_check_and_language_following(harness: Harness) -> None:
    session, stt = harness.session, harness.backends.stt
    session.configure(detect_language=True)
    level = stt.level_for("hola amigo", "es")
    clip = float_to_pcm16(np.full(12000, level, np.float32))  # half a second at 24 kHz
    heard = await session.audio_turn(clip, 24000)
    assert heard is not None and heard.text == "hola amigo" and heard.language == "es"
    assert session.config.language == "es"  # followed, as a spoken turn is
    filler = float_to_pcm16(np.full(8000, stt.level_for("um"), np.float32))
    assert await session.audio_turn(filler, 16000) is None  # no words: no turn
    reply = await session.reply(heard.text, language=heard.language)
    await reply.wait()
    user = next(e for e in harness.of(events.TranscriptFinal) if e.role == "user")
    assert user == events.TranscriptFinal("user", "hola amigo", reply.id, language="es")


async def test_heard_text_follows_a_client_reported_play_position(harness: Harness) -> None:
    reply = await harness.session.reply("say something")
    await reply.wait()
    playout = reply.response.playout
    assert playout.heard_text(played_s=0.0) == ""
    assert playout.heard_text(played_s=playout.sent_s) == reply.text == "You said: say something."
    assert playout.heard_text(played_s=playout.sent_s / 2) == "You said:"  # half the audio: 2 of 4 words


async def test_partials_come_while_the_user_speaks(harness: Harness) -> None:
    harness.session.configure(partials=True, partial_every_s=0.2)
    await harness.mic.say("a long question", seconds=1.0)
    partial = await harness.event(events.TranscriptPartial)
    assert partial.text == "a long question"
    assert not harness.of(events.TranscriptFinal)  # the user is still speaking
    await harness.mic.pause(0.6)
    await harness.event(events.ResponseDone)
    first_final = next(i for i, e in enumerate(harness.seen) if isinstance(e, events.TranscriptFinal))
    assert harness.seen.index(partial) < first_final
