"""/v1/realtime with the official ``openai`` SDK (GA ``client.realtime`` and beta ``client.beta.realtime``)
pointed at a real voxloop server: spoken questions, manual turns, tools, cancel and truncate, auth and
bad events. Only the base URL and the key differ from what an app would use against OpenAI."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import numpy as np
import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.server import RunningServer
from tests.speech import espeak_wav, mentions, normalize_words, word_error_rate
from voxloop.audio.codec import ulaw_decode
from voxloop.audio.pcm import float_to_pcm16, resample

RATE = 24000
STORY = "Tell me a story about a dragon in three sentences."
MODEL = "gpt-realtime"
INSTRUCTIONS = "You are a helpful assistant. Answer in one short sentence."
WEATHER_INSTRUCTIONS = "You are a weather assistant. Always call get_weather to answer weather questions."
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def client(
    server: RunningServer, key: str | None = None, websocket_base_url: str | None = None
) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=f"{server.http}/v1", api_key=key or server.api_key, websocket_base_url=websocket_base_url
    )


def speech_24k(text: str, silence_s: float = 1.2) -> bytes:
    audio, rate = espeak_wav(text)
    audio = np.concatenate([resample(audio, rate, RATE), np.zeros(int(silence_s * RATE), np.float32)])
    return float_to_pcm16(audio)


async def append(connection: Any, pcm: bytes, chunk_s: float = 0.1, pace: float = 4.0) -> None:
    """Microphone audio in 100 ms chunks at ``pace`` times real time."""
    step = int(chunk_s * RATE) * 2
    for start in range(0, len(pcm), step):
        await connection.input_audio_buffer.append(audio=base64.b64encode(pcm[start : start + step]).decode())
        await asyncio.sleep(chunk_s / pace)


async def collect(connection: Any, until: str, wait_s: float = 120.0) -> list[Any]:
    """Server events up to and including the first of type ``until``."""
    received: list[Any] = []

    async def read() -> None:
        async for event in connection:
            received.append(event)
            if event.type == until:
                return

    await asyncio.wait_for(read(), wait_s)
    return received


def of_type(received: list[Any], kind: str) -> list[Any]:
    return [event for event in received if event.type == kind]


def transcribe(server: RunningServer, pcm: bytes, rate: int = RATE) -> str:
    response = httpx.post(
        f"{server.http}/stt/transcribe",
        headers={"X-API-Key": server.api_key},
        json={
            "audio": base64.b64encode(pcm).decode(),
            "format": "pcm16",
            "sample_rate": rate,
            "language": "en",
        },
        timeout=60,
    )
    return response.json()["text"]


def assert_in_order(received: list[Any], kinds: list[str]) -> None:
    types = [event.type for event in received]
    positions = [types.index(kind) for kind in kinds]
    assert positions == sorted(positions), list(zip(kinds, positions, strict=True))


async def test_spoken_question_gets_spoken_answer_with_transcripts(server: RunningServer) -> None:
    async with client(server).realtime.connect(model=MODEL) as connection:
        created = await collect(connection, "session.created", 30)
        assert created[-1].session.type == "realtime"
        await connection.session.update(
            session={
                "type": "realtime",
                "instructions": INSTRUCTIONS,
                "temperature": 0,  # greedy: sampling once answered "London is the capital of France."
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "whisper-1"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    },
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
                },
            }
        )
        await collect(connection, "session.updated", 30)
        question = "What is the capital of France?"
        await append(connection, speech_24k(question))
        received = await collect(connection, "response.done")
    assert_in_order(
        received,
        [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.input_audio_transcription.completed",
            "response.created",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_audio_transcript.delta",
            "response.output_audio.delta",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.done",
        ],
    )
    user = of_type(received, "conversation.item.input_audio_transcription.completed")[0]
    assert word_error_rate(question, user.transcript) <= 0.2, user.transcript
    done = of_type(received, "response.done")[0].response
    assert done.status == "completed" and done.usage.output_tokens > 0
    transcript = of_type(received, "response.output_audio_transcript.done")[0].transcript
    assert "paris" in transcript.lower(), transcript
    deltas = "".join(event.delta for event in of_type(received, "response.output_audio_transcript.delta"))
    assert normalize_words(deltas) == normalize_words(transcript)
    audio = b"".join(
        base64.b64decode(event.delta) for event in of_type(received, "response.output_audio.delta")
    )
    assert len(audio) / 2 / RATE > 0.5
    heard = transcribe(server, audio)
    assert word_error_rate(transcript, heard) <= 0.35, (transcript, heard)
    item = done.output[0]
    assert item.type == "message" and item.role == "assistant" and item.content[0].transcript == transcript


async def test_manual_turns_commit_then_response_create(server: RunningServer) -> None:
    async with client(server).realtime.connect(model=MODEL) as connection:
        await connection.session.update(
            session={
                "type": "realtime",
                "instructions": INSTRUCTIONS,
                "temperature": 0,  # greedy: the 0.5B model's facts then do not vary run to run
                "audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}},
            }
        )
        updated = await collect(connection, "session.updated", 30)
        assert updated[-1].session.audio.input.turn_detection is None
        question = "What is the capital of Italy?"
        await append(connection, speech_24k(question), pace=20)
        await connection.input_audio_buffer.commit()
        committed = await collect(connection, "conversation.item.input_audio_transcription.completed", 60)
        assert of_type(committed, "input_audio_buffer.committed")
        assert not of_type(committed, "input_audio_buffer.speech_started"), (
            "the server VAD ran in manual mode"
        )
        transcript = committed[-1].transcript
        assert word_error_rate(question, transcript) <= 0.2, transcript
        await connection.response.create()
        received = await collect(connection, "response.done")
        answer = of_type(received, "response.output_audio_transcript.done")[0].transcript
        assert "rome" in answer.lower(), answer
        # a typed user turn, then another response: the context holds the first exchange
        await connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "And of Spain?"}],
            }
        )
        await connection.response.create()
        received = await collect(connection, "response.done")
        answer = of_type(received, "response.output_audio_transcript.done")[0].transcript
        assert "madrid" in answer.lower(), answer
        # an empty buffer cannot be committed: an error event, and the socket stays
        await connection.input_audio_buffer.commit()
        error = (await collect(connection, "error", 30))[-1].error
        assert error.code == "input_audio_buffer_commit_empty"


async def ask_weather(connection: Any) -> list[Any] | None:
    """One typed question that should make the model call get_weather; the events, or None."""
    await connection.conversation.item.create(
        item={
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is the weather in Paris? Use the get_weather tool."}
            ],
        }
    )
    await connection.response.create()
    received = await collect(connection, "response.done")
    return received if of_type(received, "response.function_call_arguments.done") else None


async def test_function_call_round_trip(server: RunningServer) -> None:
    async with client(server).realtime.connect(model=MODEL) as connection:
        await connection.session.update(
            session={
                "type": "realtime",
                "instructions": WEATHER_INSTRUCTIONS,
                "audio": {"input": {"turn_detection": None}},
                "tools": [WEATHER_TOOL],
                "tool_choice": "auto",
                "temperature": 0,  # sampled at 0.8, the 0.5B model once left the tool result unanswered
            }
        )
        await collect(connection, "session.updated", 30)
        received = None
        for _ in range(3):  # Qwen 0.5B sometimes answers without the tool: ask again
            if (received := await ask_weather(connection)) is not None:
                break
        assert received is not None, "the model never called get_weather"
        call = of_type(received, "response.function_call_arguments.done")[0]
        assert call.name == "get_weather" and "paris" in json.loads(call.arguments).get("city", "").lower()
        first = of_type(received, "response.done")[0].response
        assert first.status == "completed" and first.output[-1].type == "function_call"
        assert first.output[-1].call_id == call.call_id
        await connection.conversation.item.create(
            item={"type": "function_call_output", "call_id": call.call_id, "output": "Sunny and 31 degrees."}
        )
        await connection.response.create()
        received = await collect(connection, "response.done")
        second = of_type(received, "response.done")[0].response
        assert second.id != first.id and second.status == "completed"
        transcripts = of_type(received, "response.output_audio_transcript.done")
        assert transcripts, second.output  # an answer in words, not another call
        answer = transcripts[0].transcript.lower()
        assert mentions(answer, "sunny", "thirty one", "thirty"), answer


async def test_cancel_then_truncate_removes_the_unheard_words(server: RunningServer) -> None:
    async with client(server).realtime.connect(model=MODEL) as connection:
        await connection.session.update(
            session={
                "type": "realtime",
                "instructions": "You are a storyteller.",
                "audio": {"input": {"turn_detection": None}},
                "temperature": 0,  # sampled, a story once ended before 2 s of audio (and nothing to cancel)
            }
        )
        await collect(connection, "session.updated", 30)
        await connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": STORY}]}
        )
        await connection.response.create()
        received, audio_s = [], 0.0

        async def two_seconds_of_audio() -> None:
            nonlocal audio_s
            async for event in connection:
                received.append(event)
                assert event.type != "response.done", "the story ended before 2 s of its audio"
                if event.type == "response.output_audio.delta":
                    audio_s += len(base64.b64decode(event.delta)) / 2 / RATE
                    if audio_s >= 2.0:
                        return

        await asyncio.wait_for(two_seconds_of_audio(), 120)
        await connection.response.cancel()
        received += await collect(connection, "response.done")
        done = of_type(received, "response.done")[-1].response
        assert done.status == "cancelled" and done.status_details.reason == "client_cancelled"
        item = done.output[0]
        spoken = item.content[0].transcript
        assert len(spoken.split()) >= 4, spoken
        # the client played only the first 1.2 s of it: the rest leaves the conversation
        await connection.conversation.item.truncate(item_id=item.id, content_index=0, audio_end_ms=1200)
        truncated = (await collect(connection, "conversation.item.truncated", 30))[-1]
        assert truncated.item_id == item.id and truncated.audio_end_ms == 1200
        await connection.send({"type": "conversation.item.retrieve", "item_id": item.id})
        kept = (await collect(connection, "conversation.item.retrieved", 30))[-1].item.content[0].transcript
        kept_words, spoken_words = normalize_words(kept or ""), normalize_words(spoken)
        assert len(kept_words) < len(spoken_words) and spoken_words[: len(kept_words)] == kept_words, (
            kept,
            spoken,
        )
        # truncating past the audio is an error event, not a dropped socket
        await connection.conversation.item.truncate(item_id=item.id, content_index=0, audio_end_ms=600_000)
        assert (await collect(connection, "error", 30))[-1].error.param == "audio_end_ms"
        await connection.conversation.item.delete(item_id=item.id)
        assert (await collect(connection, "conversation.item.deleted", 30))[-1].item_id == item.id


async def spoken_session(connection: Any, interrupt_response: bool) -> None:
    await collect(connection, "session.created", 30)
    turn = {"type": "server_vad", "silence_duration_ms": 500, "interrupt_response": interrupt_response}
    await connection.session.update(
        session={
            "type": "realtime",
            "instructions": INSTRUCTIONS,
            "audio": {"input": {"turn_detection": turn, "transcription": {"model": "whisper-1"}}},
        }
    )
    await collect(connection, "session.updated", 30)


@pytest.mark.parametrize("interrupt_response", [True, False])
async def test_speech_over_a_reply_barges_in_only_with_interrupt_response(
    server: RunningServer, interrupt_response: bool
) -> None:
    async with client(server).realtime.connect(model=MODEL) as connection:
        await spoken_session(connection, interrupt_response)
        await append(connection, speech_24k(STORY))
        first = await collect(connection, "response.output_audio.delta")
        story_id = of_type(first, "response.created")[-1].response.id
        await append(connection, speech_24k("Stop. What is two plus two?"), pace=1.0)
        received = await collect(connection, "response.done")
        story = received[-1].response
        assert story.id == story_id
        assert of_type(received, "input_audio_buffer.speech_started")
        if interrupt_response:
            assert story.status == "cancelled" and story.status_details.reason == "turn_detected"
        else:
            assert story.status == "completed"  # the story played to its end
        answer = await collect(connection, "response.done")  # then the question is answered
        assert answer[-1].response.id != story_id and answer[-1].response.status == "completed"
        asked = of_type(received + answer, "conversation.item.input_audio_transcription.completed")
        assert asked and "two" in normalize_words(asked[-1].transcript)  # "2" or "two" alike


async def test_beta_client_gets_beta_event_names_and_g711(server: RunningServer) -> None:
    # the beta client always dials wss:// from base_url; websocket_base_url is its option for plain ws://
    beta = client(server, websocket_base_url=f"{server.ws}/v1").beta.realtime
    async with beta.connect(model="gpt-4o-realtime-preview") as connection:
        created = await collect(connection, "session.created", 30)
        assert created[-1].session.input_audio_format == "pcm16"
        await connection.session.update(
            session={
                "instructions": INSTRUCTIONS,
                "modalities": ["text", "audio"],
                "turn_detection": None,
                "output_audio_format": "g711_ulaw",
                "voice": "alloy",
                "temperature": 0,  # greedy: sampled, the 0.5B model once said "The sky is white."
            }
        )
        await collect(connection, "session.updated", 30)
        await connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What color is the sky on a clear day?"}],
            }
        )
        await connection.response.create()
        received = await collect(connection, "response.done")
    types = {event.type for event in received}
    assert {
        "conversation.item.created",
        "response.audio.delta",
        "response.audio_transcript.delta",
        "response.audio_transcript.done",
        "response.audio.done",
    } <= types
    assert not {"response.output_audio.delta", "conversation.item.added"} & types
    ulaw = b"".join(base64.b64decode(event.delta) for event in of_type(received, "response.audio.delta"))
    transcript = of_type(received, "response.audio_transcript.done")[0].transcript
    heard = transcribe(server, ulaw_decode(ulaw), rate=8000)
    assert "blue" in transcript.lower() and word_error_rate(transcript, heard) <= 0.5, (transcript, heard)


async def raw(server: RunningServer, **options: Any) -> Any:
    return connect(f"{server.ws}/v1/realtime?model={MODEL}", **options)


async def test_browser_subprotocol_key_and_refusals(server: RunningServer) -> None:
    protocols = ["realtime", f"openai-insecure-api-key.{server.api_key}"]
    async with await raw(server, subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "session.created"
    async with await raw(server, subprotocols=["realtime", "openai-insecure-api-key.wrong"]) as ws:  # type: ignore[arg-type]
        refusal = json.loads(await ws.recv())
        assert refusal["type"] == "error" and refusal["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    async with client(server, key="wrong-key").realtime.connect(model=MODEL) as connection:
        event = (await collect(connection, "error", 30))[-1]
        assert event.error.code == "invalid_api_key"


def event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


BAD_EVENTS = [
    ("{oops", "invalid_json", None),
    ("[" * 100_000, "invalid_json", None),
    (json.dumps(["list"]), "invalid_event", None),
    (event("dance", event_id="e1"), "invalid_value", "e1"),
    (event("session.update", event_id="e2", session={"voice": 3}), "invalid_type", "e2"),
    (
        event("session.update", session={"audio": {"input": {"format": {"type": "audio/mp3"}}}}),
        "invalid_value",
        None,
    ),
    (event("input_audio_buffer.append", event_id="e3", audio="***"), "invalid_value", "e3"),
    (event("input_audio_buffer.append", audio=base64.b64encode(b"abc").decode()), "invalid_value", None),
    (event("conversation.item.create", item={"type": "message", "role": "robot"}), "invalid_value", None),
    (
        event(
            "conversation.item.create", item={"type": "function_call_output", "call_id": "no", "output": "x"}
        ),
        "invalid_value",
        None,
    ),
    (event("conversation.item.truncate", item_id="ghost", audio_end_ms=5), "item_not_found", None),
    (event("conversation.item.delete", item_id="ghost"), "item_not_found", None),
    (event("response.cancel", event_id="e4"), "response_cancel_not_active", "e4"),
]


@pytest.mark.parametrize(("message", "code", "event_id"), BAD_EVENTS)
async def test_bad_events_get_error_events_and_the_session_survives(
    server: RunningServer, message: str, code: str, event_id: str | None
) -> None:
    async with await raw(server, additional_headers={"Authorization": f"Bearer {server.api_key}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(message)
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert error["type"] == "error" and error["error"]["code"] == code, error
        assert error["error"]["event_id"] == event_id and error["error"]["message"]
        await ws.send(json.dumps({"type": "session.update", "session": {"instructions": "Still here?"}}))
        updated = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert updated["type"] == "session.updated" and updated["session"]["instructions"] == "Still here?"
