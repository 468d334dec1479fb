"""Hostile input on the Realtime, Soca and SelamGPT endpoints: random events of every shape, wrong
types, huge and binary payloads, out-of-order requests. Each protocol answers a bad message in its
own error shape (or ignores it where the protocol says so), the connection stays usable, and the
server stays healthy with no traceback in its log.

Each example mixes messages whose answer is known (they must get their error) with random ones
(anything but a crash or a dropped connection), then proves the session alive with a valid request.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.fuzz_strategies import (
    CASES,
    MORE,
    Health,
    big_bytes,
    big_text,
    invalid_base64,
    json_frame,
    junk_text,
    valid_base64,
    values,
)
from tests.selam_client import SelamClient
from tests.server import RunningServer

ids = itertools.count()
non_str = values.filter(lambda v: not isinstance(v, str))
non_dict = values.filter(lambda v: not isinstance(v, dict))


def ghost() -> st.SearchStrategy[str]:
    return st.text(max_size=20).map(lambda s: f"ghost-{s}")


# ---- OpenAI Realtime ----------------------------------------------------------------------------

RT_TYPES = [
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
    "session.created",  # a server event sent by the client
    "response.output_audio.delta",
]
session_junk = st.fixed_dictionaries(
    {},
    optional={
        key: values
        for key in (
            "type",
            "instructions",
            "voice",
            "turn_detection",
            "audio",
            "tools",
            "tool_choice",
            "input_audio_format",
            "output_audio_format",
            "modalities",
            "output_modalities",
            "temperature",
            "max_output_tokens",
            "max_response_output_tokens",
            "speed",
            "input_audio_transcription",
        )
    },
)
item_junk = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "function_call_output", "function_call"]) | values,
        "role": st.sampled_from(["user", "assistant", "system"]) | values,
        "id": values | st.sampled_from(["it-0", "it-1"]),  # later events may name these
        "call_id": values,
        "output": values,
        "content": st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["input_text", "input_audio", "text", "image"]) | values},
                optional={"text": values, "audio": valid_base64 | invalid_base64 | values},
            ),
            max_size=3,
        )
        | values,
    },
)
rt_random = st.fixed_dictionaries(
    {"type": st.sampled_from(RT_TYPES) | st.text(max_size=30)},
    optional={
        "event_id": values,
        "session": session_junk | values,
        "audio": valid_base64 | invalid_base64 | values,
        "item": item_junk | values,
        "item_id": values | st.sampled_from(["it-0", "it-1"]),
        "audio_end_ms": values,
        "content_index": values,
        "response": values,
    },
).map(json_frame)
# (event without its event_id, error codes it may get); the test gives each a fresh event_id.
rt_bad = st.one_of(
    st.tuples(
        st.text(max_size=30).filter(lambda t: t not in RT_TYPES[:11]).map(lambda t: {"type": t}),
        st.just({"invalid_value"}),
    ),
    st.tuples(non_str.map(lambda v: {"type": v}), st.just({"invalid_event"})),
    st.tuples(non_dict.map(lambda v: {"type": "session.update", "session": v}), st.just({"invalid_type"})),
    st.tuples(  # unhashable JSON where a name is looked up
        st.sampled_from(
            [
                {"output_modalities": [[]]},
                {"modalities": ["text", {}]},
                {"input_audio_format": []},
                {"output_audio_format": {"a": 1}},
                {"audio": {"input": {"format": {"type": []}}}},
                {"audio": {"output": {"format": {"type": {}}}}},
            ]
        ).map(lambda session: {"type": "session.update", "session": session}),
        st.just({"invalid_value"}),
    ),
    st.tuples(
        big_text.map(lambda t: {"type": "session.update", "session": {"instructions": t}}),
        st.just({"invalid_value"}),
    ),
    st.tuples(
        non_str.map(lambda v: {"type": "input_audio_buffer.append", "audio": v}), st.just({"invalid_type"})
    ),
    st.tuples(
        invalid_base64.map(lambda v: {"type": "input_audio_buffer.append", "audio": v}),
        st.just({"invalid_value"}),
    ),
    st.tuples(
        non_dict.map(lambda v: {"type": "conversation.item.create", "item": v}), st.just({"invalid_type"})
    ),
    st.tuples(
        big_text.map(
            lambda t: {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": t}]},
            }
        ),
        st.just({"invalid_value"}),
    ),
    st.tuples(
        st.tuples(
            st.sampled_from(
                ["conversation.item.truncate", "conversation.item.delete", "conversation.item.retrieve"]
            ),
            ghost() | non_str,
        ).map(lambda t: {"type": t[0], "item_id": t[1], "audio_end_ms": 0}),
        st.just({"item_not_found"}),
    ),
    st.tuples(
        st.tuples(ghost(), st.text(max_size=40)).map(
            lambda t: {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": t[0], "output": t[1]},
            }
        ),
        st.just({"invalid_value"}),
    ),
)
# On a fresh connection with manual turns, these are out of order: nothing to commit, cancel or truncate.
RT_OUT_OF_ORDER = [
    ({"type": "input_audio_buffer.commit"}, {"input_audio_buffer_commit_empty"}),
    ({"type": "response.cancel"}, {"response_cancel_not_active"}),
    ({"type": "conversation.item.truncate", "item_id": "ghost", "audio_end_ms": 10}, {"item_not_found"}),
    (
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_ghost", "output": "{}"},
        },
        {"invalid_value"},
    ),
]
# Frames with no event id to give back: binary, not JSON, or not an object.
rt_anonymous = st.one_of(
    st.binary(max_size=2000), big_bytes, junk_text.filter(lambda t: not _is_typed_object(t))
)
MANUAL_TURNS = {
    "type": "session.update",
    "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
}


def _is_typed_object(text: str) -> bool:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and isinstance(value.get("type"), str)


def rt_recv(ws: ClientConnection) -> dict[str, Any]:
    event = json.loads(ws.recv(timeout=60))
    if event["type"] == "error":
        error = event["error"]
        assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str), (
            event
        )
    return event


def rt_until_updated(ws: ClientConnection, instructions: str) -> list[dict[str, Any]]:
    """Asks for a session.update and returns everything up to its session.updated."""
    ws.send(
        json.dumps({"type": "session.update", "event_id": "final", "session": {"instructions": instructions}})
    )
    received = []
    while (event := rt_recv(ws))["type"] != "session.updated" or event["session"][
        "instructions"
    ] != instructions:
        received.append(event)  # a session.updated of a random update in the batch may come first
    return received


def test_realtime_survives_random_events(server: RunningServer) -> None:
    health = Health(server)

    @MORE
    @given(
        st.permutations(RT_OUT_OF_ORDER),
        st.lists(
            st.one_of(
                rt_bad.map(lambda bad: ("bad", bad)),
                rt_random.map(lambda frame: ("random", frame)),
                rt_anonymous.map(lambda frame: ("anonymous", frame)),
            ),
            min_size=1,
            max_size=6,
        ),
    )
    def run(out_of_order: list, batch: list) -> None:
        CASES["realtime"] += 1
        expected: dict[str, set[str]] = {}
        anonymous = 0
        with connect(f"{server.ws}/v1/realtime?api_key={server.api_key}", max_size=1 << 24) as ws:
            assert rt_recv(ws)["type"] == "session.created"
            ws.send(json.dumps(MANUAL_TURNS))
            assert rt_recv(ws)["type"] == "session.updated"
            for kind, payload in [("bad", bad) for bad in out_of_order] + batch:
                if kind == "bad":
                    event, codes = payload
                    event_id = f"fz-{next(ids)}"
                    expected[event_id] = codes
                    ws.send(json.dumps({**event, "event_id": event_id}))
                else:
                    anonymous += kind == "anonymous"
                    ws.send(payload)
            received = rt_until_updated(ws, "Still here?")
        errors = [event["error"] for event in received if event["type"] == "error"]
        by_id = {error["event_id"]: error for error in errors}
        for event_id, codes in expected.items():
            assert event_id in by_id, (event_id, errors)
            assert by_id[event_id]["code"] in codes, (codes, by_id[event_id])
        assert sum(error["event_id"] is None for error in errors) >= anonymous, errors

    run()
    health.check("realtime")


# ---- Soca voice-ws ------------------------------------------------------------------------------

SOCA_PATH = "/v1/voice-ws"
NOT_STARTED = "must start with type=start"


def soca_start(key: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "start",
        "token": key,
        "session_id": f"fuzz-{next(ids)}",
        "lang": "en",
        "sr": 16000,
        **fields,
    }


start_fields = st.fixed_dictionaries(
    {},
    optional={
        key: values
        for key in (
            "session_id",
            "agent_id",
            "lang",
            "sr",
            "prompt",
            "voice",
            "partials",
            "barge",
            "private_key",
        )
    },
)
soca_first = st.one_of(
    st.binary(max_size=3000).map(lambda b: ("frame", b)),
    junk_text.map(lambda t: ("frame", t)),
    values.map(lambda v: ("frame", json_frame(v))),
    st.dictionaries(st.text(max_size=10), values, max_size=4).map(lambda d: ("frame", json_frame(d))),
    st.tuples(st.text(max_size=30) | non_str, start_fields).map(
        lambda t: ("bad_token", {**t[1], "type": "start", "token": t[0]})
    ),
    start_fields.map(lambda fields: ("keyed", fields)),
)


def soca_parse(frame: str | bytes) -> object:
    if isinstance(frame, bytes):
        return None
    try:
        return json.loads(frame)
    except (ValueError, RecursionError):
        return None


def soca_messages_until(ws: ClientConnection, done) -> list[dict[str, Any]]:
    received = []
    while True:
        message = json.loads(ws.recv(timeout=60))
        assert isinstance(message, dict) and isinstance(message.get("seq", 0), int), message
        received.append(message)
        if done(message):
            return received


def assert_closed(ws: ClientConnection, code: int) -> None:
    with pytest.raises(ConnectionClosed) as closed:
        while True:  # only late replies may come before the close
            ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code, closed.value


def test_soca_refuses_bad_first_messages(server: RunningServer) -> None:
    health = Health(server)

    @MORE
    @given(soca_first)
    def run(first: tuple[str, Any]) -> None:
        CASES["soca first message"] += 1
        kind, payload = first
        if kind == "keyed":  # a start with the right key: valid or refused with a reason
            payload = {**soca_start(server.api_key), **payload, "type": "start", "token": server.api_key}
            payload.pop("private_key", None)
        frame = payload if kind == "frame" else json_frame(payload)
        message = soca_parse(frame)
        with connect(f"{server.ws}{SOCA_PATH}", max_size=1 << 24) as ws:
            ws.send(frame)
            reply = json.loads(ws.recv(timeout=30))
            if not (isinstance(message, dict) and message.get("type") == "start"):
                assert reply == {"type": "error", "message": NOT_STARTED}
            elif kind == "bad_token":
                assert reply == {"type": "error", "message": "Invalid or expired token"}
            elif reply["type"] == "ready":
                ws.send(json.dumps({"type": "stop"}))
                assert_closed(ws, 1000)
                return
            assert reply["type"] == "error" and isinstance(reply["message"], str) and reply["message"], reply
            assert_closed(ws, 1008)

    run()
    health.check("soca first message")


MAX_FRAME = 64000  # 2 s of PCM16 at 16 kHz
soca_frames = st.one_of(
    st.binary(max_size=3000).map(lambda b: ("audio", b)),
    big_bytes.map(lambda b: ("audio", b)),
    junk_text.map(lambda t: ("text", t)),
    values.map(lambda v: ("text", json_frame(v))),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["start", "audio", "text", "ping", "barge", "agent", "stop ", "END"])
            | values
        },
        optional={"data": values, "audio": values, "token": values},
    ).map(lambda d: ("text", json_frame(d))),
).filter(lambda f: not (isinstance(m := soca_parse(f[1]), dict) and m.get("type") in ("stop", "end")))


def test_soca_session_survives_random_frames(server: RunningServer) -> None:
    health = Health(server)

    @MORE
    @given(st.lists(soca_frames, min_size=1, max_size=6))
    def run(frames: list[tuple[str, Any]]) -> None:
        CASES["soca session"] += 1
        with connect(f"{server.ws}{SOCA_PATH}", max_size=1 << 24) as ws:
            ws.send(json.dumps(soca_start(server.api_key)))
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"
            for _, frame in frames:
                ws.send(frame)
            # Every text frame, and every audio frame of an odd or oversized length, gets an error.
            expected = sum(kind == "text" or len(f) % 2 == 1 or len(f) > MAX_FRAME for kind, f in frames)
            ws.send(json.dumps({"type": "start"}))  # still there: a second start is refused
            starts = 1 + sum(
                isinstance(m := soca_parse(f), dict) and m.get("type") == "start" for _, f in frames
            )
            refused: list[dict[str, Any]] = []

            def last_start_refused(message: dict[str, Any]) -> bool:
                if message["type"] == "error" and message["message"] == "already started":
                    refused.append(message)
                return len(refused) == starts

            received = soca_messages_until(ws, last_start_refused)
            errors = [m for m in received if m["type"] == "error"]
            assert len(errors) - 1 == expected, (expected, errors)
            assert all(isinstance(m["message"], str) and m["message"] for m in errors)
            ws.send(json.dumps({"type": "stop"}))
            assert_closed(ws, 1000)

    run()
    health.check("soca session")


# ---- SelamGPT Socket.IO -------------------------------------------------------------------------

SELAM_NAMESPACE = "/v1/audio/agent"
SELAM_TYPES = {
    "authentication_error",
    "authorization_error",
    "validation_error",
    "session_error",
    "audio_error",
}
SELAM_EVENTS = ["start_session", "audio_chunk", "control", "end_session", "connect", "disconnect", "message"]
selam_payloads = (
    st.none()
    | values
    | st.binary(max_size=500)
    | st.fixed_dictionaries(
        {},
        optional={
            "audio": valid_base64 | invalid_base64 | values | st.binary(max_size=2000),
            "format": st.sampled_from(["pcm16", "wav", "mp3"]) | values,
            "sample_rate": st.sampled_from([16000, 8000, 44100, 0, -1, 1 << 40]) | values,
            "action": st.sampled_from(["interrupt", "pause", "resume", "start_listening", "bogus"]) | values,
            "voice": st.sampled_from(["alloy", "F1", "mekdes", "nobody"]) | values,
            "language": st.sampled_from(["en", "auto", "am", "xx"]) | values,
            "instructions": values,
            "vad_threshold": values,
            "interrupt_threshold": values,
            "session_id": values,
        },
    )
)
# (event, payload, error types it may get): wrong whatever the session's state.
selam_bad = st.one_of(
    st.tuples(
        st.text(min_size=1, max_size=20).filter(lambda n: n not in SELAM_EVENTS).map(lambda n: f"x-{n}")
        | st.sampled_from(["connect", "disconnect"]),  # Socket.IO's own names, sent as events
        selam_payloads,
        st.just({"validation_error"}),
    ),
    st.tuples(
        st.just("control"),
        (st.text(max_size=20) | values).map(lambda a: {"action": a}),
        st.just({"validation_error"}),
    ),
    st.tuples(
        st.just("audio_chunk"),
        st.one_of(
            non_dict.filter(lambda v: v is not None),
            invalid_base64.map(lambda a: {"audio": a}),
            big_text.map(lambda t: {"audio": "A" * (1_500_000 + len(t) % 7 * 4)}),
            st.just({"audio": "AAAA" * 300_000}),  # 1.2 MB of PCM: over the 1 MiB chunk limit
            st.binary(min_size=1, max_size=99).filter(lambda b: len(b) % 2).map(lambda b: {"audio": b}),
        ),
        st.just({"session_error", "audio_error"}),
    ),
)


def selam_connect(server: RunningServer) -> SelamClient:
    client = SelamClient(server.http, server.api_key, voice=None).connect()
    client.wait("connected", timeout=30)
    return client


def test_selam_survives_random_events(server: RunningServer) -> None:
    health = Health(server)

    @MORE
    @given(
        st.sampled_from(
            [("control", {"action": "interrupt"}), ("audio_chunk", {"audio": "AAAA"}), ("end_session", None)]
        ),
        st.lists(
            st.one_of(
                selam_bad.map(lambda bad: ("bad", bad)),
                st.tuples(st.sampled_from(SELAM_EVENTS) | st.text(max_size=20), selam_payloads).map(
                    lambda event: ("random", event)
                ),
            ),
            min_size=1,
            max_size=6,
        ),
    )
    def run(before_start: tuple[str, Any], batch: list) -> None:
        CASES["selam"] += 1
        client = selam_connect(server)
        try:
            since = client.emit(*before_start)  # no session yet: out of order
            assert client.wait("error", since, timeout=30)["type"] == "session_error"
            since = time.monotonic()
            expected = 0
            for kind, event in batch:
                client.emit(event[0], event[1])
                expected += kind == "bad"
            sentinel = f"x-sentinel-{next(ids)}"
            client.emit(sentinel)
            client.wait("error", since, timeout=20, where=lambda e: sentinel in e.get("message", ""))
            errors = client.errors(since)
            assert all(e.get("type") in SELAM_TYPES and e["error"]["type"] == e["type"] for e in errors), (
                errors
            )
            assert len(errors) - 1 >= expected, (expected, errors)
            assert client.sio.connected
            # Still a working agent: whatever state the batch left, a session ends and starts again.
            since = client.emit("end_session")
            while not (client.events("session_ended", since) or client.errors(since)):
                assert time.monotonic() - since < 30, client.summary(since)
                time.sleep(0.02)
            since = client.emit("start_session", {"voice": "alloy"})
            assert client.wait("session_started", since, timeout=30)["status"] == "started"
            since = client.emit("end_session")
            client.wait("session_ended", since, timeout=30)
        finally:
            client.close()

    run()
    health.check("selam")
    # Every connection's agent went away with it (none kept by a fake "disconnect" event).
    deadline = time.monotonic() + 10
    while (
        f'voxloop_sessions{{endpoint="{SELAM_NAMESPACE}"}} 0.0'
        not in httpx.get(f"{server.http}/metrics").text
    ):
        assert time.monotonic() < deadline, "SelamGPT sessions left open"
        time.sleep(0.1)
