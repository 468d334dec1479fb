"""Parts of the Soca adapter on their own: the start message, the resume store, the outbox that a
barge-in purges, and the server settings behind the barge-in gate."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes import FakeBackends
from voxloop.backends.llm.base import ChatMessage
from voxloop.config import Settings
from voxloop.engine.session import Session, SessionConfig
from voxloop.protocols.soca.start import SOCA_BARGE_IN, barge_rules, parse_start
from voxloop.protocols.soca.voice import Outbox, Outgoing, SocaVoice
from voxloop.service.resume import ResumeStore, Saved, owner_of

SETTINGS = Settings(_env_file=None)


def start(**fields: object) -> dict:
    return {"type": "start", "token": "k", "session_id": "sess_1", "agent_id": None, "lang": "en", **fields}


def test_start_message_defaults_follow_the_soca_docs() -> None:
    parsed = parse_start(start(), SETTINGS)
    assert (parsed.token, parsed.session_id, parsed.sr, parsed.lang) == ("k", "sess_1", 16000, "en")
    assert parsed.partials
    rules = parsed.barge  # the engine's barge-in rules, set by the Soca gate's documented values
    assert (rules.min_chars, rules.min_words, rules.min_confidence) == (10, 2, 0.30)
    assert (rules.window_s, rules.cooldown_s) == (1.5, 0.8) and rules.enabled
    assert rules.filler_words == {"uh", "um", "hmm", "eh", "ah", "ya", "yah"}
    assert rules == SOCA_BARGE_IN


def test_start_message_aliases_and_overrides() -> None:
    barge = {"MIN_PARTIAL_WORDS": 3, "barge_cooldown": 2}
    parsed = parse_start(start(token=None, private_key="p", lang="en-US", sr=48000, barge=barge), SETTINGS)
    assert (parsed.token, parsed.lang, parsed.sr) == ("p", "en", 48000)
    assert parse_start(start(private_key="p"), SETTINGS).token == "k"  # token wins when both come
    assert parse_start(start(token=None), SETTINGS).token is None  # an open server accepts none
    rules = parsed.barge
    assert (rules.min_words, rules.cooldown_s, rules.min_chars) == (3, 2, 10)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"type": "hello"}, "must start with type=start"),
        ({"session_id": ""}, "session_id"),
        ({"session_id": "x" * 129}, "session_id"),
        ({"session_id": "a b"}, "session_id"),
        ({"session_id": 5}, "session_id"),
        ({"agent_id": ["x"]}, "agent_id"),
        ({"sr": 12345}, "sample_rate"),
        ({"sr": True}, "sample_rate"),
        ({"lang": 7}, "lang"),
        ({"prompt": ""}, "prompt"),
        ({"partials": "yes"}, "partials"),
        ({"barge": {"min_confidence": 2}}, "min_confidence"),
        ({"barge": {"min_partial_words": 1.5}}, "min_partial_words"),
        ({"barge": {"filler_words": "um"}}, "filler_words"),
        ({"barge": {"loudness": 1}}, "unknown barge setting"),
        ({"barge": []}, "'barge' must be an object"),
        ({"token": 5}, "Invalid or expired token"),
    ],
)
def test_bad_start_messages_are_refused_with_a_reason(fields: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_start(start(**fields), SETTINGS)
    with pytest.raises(ValueError, match="must start with type=start"):
        parse_start(["start"], SETTINGS)


def test_server_settings_set_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXLOOP_SOCA_MIN_PARTIAL_CHARS", "4")
    monkeypatch.setenv("VOXLOOP_SOCA_BARGE_COOLDOWN_S", "3.5")
    monkeypatch.setenv("VOXLOOP_SOCA_FILLER_WORDS", "um, erm")
    rules = barge_rules(Settings())
    assert (rules.min_chars, rules.cooldown_s, rules.filler_words) == (4, 3.5, {"um", "erm"})
    assert parse_start(start(), Settings()).barge == rules


async def test_resume_store_expires_bounds_and_keeps_owners_apart() -> None:
    store = ResumeStore(grace_s=120, capacity=2)
    alice, mallory = owner_of("alice-key"), owner_of("mallory-key")
    await store.save("a", Saved(alice, [ChatMessage("user", "hi")], seq=3), now=0)
    assert await store.owner("a", now=1) == alice
    assert await store.take("a", mallory, now=1) is None  # another key cannot resume it
    saved = await store.take("a", alice, now=1)
    assert saved is not None and saved.seq == 3 and saved.messages[0].content == "hi"
    assert await store.take("a", alice, now=1) is None  # taken once
    await store.save("a", Saved(alice), now=10)
    assert await store.take("a", alice, now=131) is None  # expired after the grace period
    for index, session_id in enumerate("bcd"):
        await store.save(session_id, Saved(alice), now=20 + index)
    assert len(store) == 2 and await store.owner("b", now=23) is None  # the oldest went first
    await ResumeStore(grace_s=0, capacity=5).save("x", Saved(alice))  # resuming switched off: no error


def test_outbox_drops_older_seqs_and_bounds_its_size() -> None:
    async def scenario() -> list[int]:
        outbox = Outbox(size=3)
        for seq in (1, 1, 2):
            await outbox.put(Outgoing(seq, {}))
        blocked = asyncio.create_task(outbox.put(Outgoing(3, {})))
        await asyncio.sleep(0.05)
        assert not blocked.done()  # full: the producer waits for the socket
        await outbox.drop_older(2)
        await asyncio.wait_for(blocked, 1)
        return [(await outbox.get()).seq for _ in range(2)]

    assert asyncio.run(scenario()) == [2, 3]


async def test_each_reply_gets_the_next_seq_on_its_handle_and_a_barge_announces_it() -> None:
    session = Session(FakeBackends(), SessionConfig(input_rate=16000, output_rate=16000))  # type: ignore[arg-type]
    voice = SocaVoice(None, session, parse_start(start(), SETTINGS))  # type: ignore[arg-type]
    try:
        first = await session.reply("tell me a story")
        assert voice.seq_of(first.id) == voice.seq_of(first.id) == 1 and first.tag == 1
        await voice.barge(first.id, "barge_in")  # the user's words cut it: seq 2 is announced
        assert (voice.seq, voice.floor) == (2, 2)
        barge = [item.message for item in voice.outbox.items if item.message["type"] == "barge"]
        assert barge == [{"type": "barge", "reason": "content_partial"}]
        second = await session.reply("something else")
        assert voice.seq_of(second.id) == 2  # the reply takes the seq the barge announced
        assert voice.seq_of(first.id) < voice.floor  # a late event of the cut reply is stale
        await voice.barge(first.id, "barge_in")  # a superseded reply announces nothing
        assert voice.seq == 2
        await second.wait()
        third = await session.reply("and now")
        assert voice.seq_of(third.id) == 3
    finally:
        await session.close()
