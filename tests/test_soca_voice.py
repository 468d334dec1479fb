"""The Soca voice WebSocket (seed 003) on a real server with real models, through a real WebSocket
client: the start handshake, partial and final transcripts, sentence MP3s that speak their text,
the barge-in gate with its seq rules and cooldown, and resuming a conversation after a reconnect."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.server import RunningServer
from tests.soca_client import SocaClient, summary
from tests.speech import espeak_16k, word_error_rate
from voxloop.audio.codec import decode_audio
from voxloop.audio.pcm import float_to_pcm16

PATHS = ("/v1/voice-ws", "/chat/agent/voice-ws")
SHORT = "You are a helpful assistant. Answer in two short sentences."
STORY = "You are a storyteller. Tell long, detailed stories of at least ten sentences."


def start_message(server: RunningServer, **fields: object) -> dict:
    session_id = f"sess_{uuid.uuid4().hex[:12]}"
    return {
        "type": "start",
        "token": server.api_key,
        "session_id": session_id,
        "agent_id": None,
        "lang": "en",
        "sr": 16000,
        **fields,
    }


@pytest.fixture
def clients(server: RunningServer) -> Iterator[list[SocaClient]]:
    opened: list[SocaClient] = []
    yield opened
    for client in opened:
        client.close()


def open_client(
    server: RunningServer, clients: list[SocaClient], start: dict, path: str = PATHS[0]
) -> SocaClient:
    client = SocaClient(f"{server.ws}{path}", start)
    clients.append(client)
    assert client.ready["type"] == "ready", client.ready
    return client


def refused(server: RunningServer, first: str | bytes, path: str = PATHS[0]) -> tuple[dict, int | None]:
    """What the server answers to a first message, and how it closes."""
    with connect(f"{server.ws}{path}") as ws:
        ws.send(first)
        reply = json.loads(ws.recv(timeout=10))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        return reply, ws.close_code


def timeline(client: SocaClient, since: float) -> list[tuple[float, dict]]:
    return [(round(r.at - since, 2), summary([r.message])[0]) for r in client.log if r.at >= since]


def wait_count(client: SocaClient, kind: str, count: int, since: float, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(found := client.messages(since, kind)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(found) >= count, summary(client.messages(since))
    return found


def transcribe(server: RunningServer, audio_16k: np.ndarray) -> str:
    response = httpx.post(
        f"{server.http}/stt/transcribe",
        headers={"X-API-Key": server.api_key},
        json={
            "audio": base64.b64encode(float_to_pcm16(audio_16k)).decode(),
            "format": "pcm16",
            "sample_rate": 16000,
            "language": "en",
        },
        timeout=60,
    )
    return response.json()["text"]


def test_start_handshake_its_errors_and_bad_frames(server: RunningServer, clients: list[SocaClient]) -> None:
    good = start_message(server)
    for first in (json.dumps({"type": "audio"}), b"\x00\x01" * 320, "not json", json.dumps(["start"])):
        reply, code = refused(server, first)
        assert reply == {"type": "error", "message": "must start with type=start"}, (first, reply)
        assert code == 1008
    for token in ("wrong-key", None, 42):
        reply, code = refused(server, json.dumps({**good, "token": token}), PATHS[1])
        assert reply == {"type": "error", "message": "Invalid or expired token"} and code == 1008
    reply, code = refused(server, json.dumps({**good, "session_id": "../../etc/passwd"}))
    assert reply["type"] == "error" and "session_id" in reply["message"] and code == 1008
    reply, code = refused(server, json.dumps({**good, "sr": 7}))
    assert reply["type"] == "error" and "sample_rate" in reply["message"] and code == 1008
    assert "Traceback" not in server.log()

    for path in PATHS:
        client = open_client(server, clients, start_message(server), path)
        assert client.ready["seq"] == 0 and client.ready["resumed"] is False
        since = time.monotonic()
        client.ws.send(b"\x00" * 200_000)  # over 6 s at 16 kHz: absurd for a 20-50 ms frame
        client.ws.send(b"\x00" * 641)  # half a sample
        client.ws.send(json.dumps({"type": "dance"}))
        client.ws.send("{{{")
        errors = wait_count(client, "error", 4, since)
        messages = [m["message"] for m in client.messages(since, "error")]
        assert "200000 bytes" in messages[0] and "641 bytes" in messages[1], messages
        assert all(isinstance(m["seq"], int) for m in errors)
        client.ws.send(b"\x00" * 1280)  # the session survives: audio is still taken
        client.ws.send(json.dumps({"type": "stop"}))
        assert client.wait_closed() == 1000


def test_a_spoken_question_gets_partials_a_final_and_sentence_mp3s(
    server: RunningServer, clients: list[SocaClient]
) -> None:
    client = open_client(server, clients, start_message(server, prompt=SHORT))
    question = "Hello there. What is the capital of France, and what is it famous for?"
    ended = client.say(espeak_16k(question))
    answer = client.final_answer(since=ended - 10)
    messages = client.messages()
    partials = [m for m in messages if m["type"] == "stt.partial"]
    finals = [m for m in messages if m["type"] == "stt.final"]
    assert partials and len(finals) == 1, summary(messages)  # one question, no echo of the reply heard
    assert messages.index(partials[0]) < messages.index(finals[0])
    assert word_error_rate(question, finals[0]["text"]) < 0.35, finals[0]
    seq = finals[0]["seq"]
    assert seq == 1 and answer["seq"] == seq and not client.stale

    sentences = [m for m in messages if m.get("stepType") == "sentence"]
    assert sentences and messages.index(sentences[-1]) < messages.index(answer), summary(messages)
    assert [s["idx"] for s in sentences] == sorted({s["idx"] for s in sentences})
    assert all(s["seq"] == seq and s["format"] == "mp3" and s["sr"] == 22050 for s in sentences)
    assert word_error_rate(answer["text"], " ".join(s["text"] for s in sentences)) < 0.1
    assert "paris" in answer["text"].lower(), answer
    heard_all = []
    for sentence in sentences:
        mp3 = base64.b64decode(sentence["audio"])
        audio = decode_audio(mp3, "mp3", rate=16000)  # each sentence is an MP3 of its own
        assert len(audio) / 16000 > 0.2 * len(sentence["text"].split()), sentence["text"]
        heard_all.append(transcribe(server, audio))
    spoken = " ".join(s["text"] for s in sentences)
    assert word_error_rate(spoken, " ".join(heard_all)) < 0.3, (spoken, heard_all)


def test_fillers_do_not_barge_words_do_and_the_cooldown_holds(
    server: RunningServer, clients: list[SocaClient]
) -> None:
    # A long cooldown, so the second interruption below falls inside it, and a window longer than
    # the utterances, so the gate (not a loaded CPU's slow partial transcripts) decides.
    gate = {"barge_cooldown": 600, "speech_start_window": 6}
    client = open_client(server, clients, start_message(server, prompt=STORY, barge=gate))
    client.say(espeak_16k("Tell me a long story about a dragon and a knight."))
    first = client.wait_for(lambda m: m.get("stepType") == "sentence", timeout=120)
    reply_seq = first["seq"]

    um = client.say(espeak_16k("um"), silence_s=0.0)
    later = client.wait_for(lambda m: m.get("stepType") == "sentence", timeout=30, since=um + 0.5)
    assert later["seq"] == reply_seq and not client.messages(kind="barge"), summary(client.messages(um))

    interrupt_at = time.monotonic()
    spoken = "Stop the story please. Tell me a long story about the moon instead."
    client.say(espeak_16k(spoken))
    barge = client.wait_for(lambda m: m["type"] == "barge", timeout=30, since=interrupt_at)
    assert barge == {"type": "barge", "seq": reply_seq + 1, "reason": "content_partial"}
    barged_at = client.received_at(barge)
    final = client.wait_for(lambda m: m["type"] == "stt.final", timeout=60, since=barged_at)
    assert final["seq"] == barge["seq"] and word_error_rate(spoken, final["text"]) < 0.5, final
    new_reply = client.wait_for(lambda m: m.get("stepType") == "sentence", timeout=120, since=barged_at)
    assert new_reply["seq"] == barge["seq"]
    assert all(m["seq"] >= barge["seq"] for m in client.messages(barged_at)), summary(
        client.messages(barged_at)
    )

    speaking_from = time.monotonic()  # the last turn's stt.final and first sentence are behind us
    second = client.say(espeak_16k("Wait, tell me about the sun."))
    # The reply goes on: more of its sentences, or its final answer if it was nearly done. The words
    # paused it (pieces go out at most a second ahead), and within the 6 s window only the gate's
    # verdict on the finished turn resumes it: a sentence now means the gate has judged the words.
    still = client.wait_for(
        lambda m: m.get("stepType") in ("sentence", "final_answer"), timeout=60, since=second + 1
    )
    after = client.messages(speaking_from)
    assert len(client.messages(kind="barge")) == 1, timeline(client, barged_at)
    assert still["seq"] == barge["seq"] and not client.stale
    # Words that do not barge in are not thrown away: they become the next turn once the reply
    # has ended, under a new seq, with no barge message.
    if finals := [i for i, m in enumerate(after) if m["type"] == "stt.final"]:
        ends = [i for i, m in enumerate(after) if m.get("stepType") == "final_answer"]
        assert ends and ends[0] < finals[0], timeline(client, barged_at)
        assert after[ends[0]]["seq"] == barge["seq"] < after[finals[0]]["seq"], timeline(client, barged_at)


def test_reconnecting_with_the_session_id_resumes_the_conversation(
    server: RunningServer, clients: list[SocaClient]
) -> None:
    start = start_message(server, prompt=SHORT)
    first = open_client(server, clients, start)
    ended = first.say(espeak_16k("Please remember this: my name is Alice."))
    first.final_answer(since=ended - 10)
    last_seq = first.current_seq
    first.close()

    # Whether or not the server has noticed the close yet, the new connection waits for the old
    # one to save the conversation and leave.
    again = open_client(server, clients, start, PATHS[1])
    assert again.ready["resumed"] is True and again.ready["seq"] == last_seq
    ended = again.say(espeak_16k("What is my name?"))
    answer = again.final_answer(since=ended - 10)
    assert "alice" in answer["text"].lower(), answer
    assert answer["seq"] > last_seq  # seq goes on across the reconnect

    # The same session_id connecting while this one is open takes it over; the old socket is told.
    taker = open_client(server, clients, start)
    assert taker.ready["resumed"] is True
    moved = again.wait_for(lambda m: m["type"] == "error", timeout=10)
    assert "newer connection" in moved["message"]
