"""Hostile input on every Lokutor socket: random JSON of every shape, wrong types, binary where
text is expected and the reverse. The connection answers in the protocol's error shape or goes
on; it never drops, and the server stays healthy for everyone else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.fuzz_strategies import CASES, FUZZ, Health, json_frame, values
from tests.server import RunningServer

KINDS = [
    "prompt",
    "voice",
    "language",
    "tools",
    "visemes",
    "rates",
    "metrics",
    "live",
    "tool_result",
    "max_context_messages",
    "end",
    "text",
    "audio",
    None,
]
messages = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(KINDS)},
        optional={"data": values, "playback": values, "input": values, "call_id": values, "result": values},
    ),
    st.dictionaries(
        st.sampled_from(
            ["text", "voice", "lang", "language", "speed", "steps", "visemes", "sample_rate", "keyterms"]
        ),
        values,
        max_size=5,
    ),
    values,
)
frames = st.one_of(messages.map(json_frame), st.text(max_size=60), st.binary(max_size=2000))


def answered_or_alive(ws, path: str) -> None:
    """The socket is still open: a prompt or a valid request gets its normal answer."""
    if path == "/ws/agent":
        ws.send(json.dumps({"type": "prompt", "data": "still there?"}))
        while (reply := json.loads(ws.recv(timeout=30))).get("data") != "prompt_set":
            assert reply["type"] in (
                "error",
                "status",
                "server_rates",
                "transcript",
                "metrics",
                "partial_transcript",
                "text_delta",
                "tool_call",
                "visemes",
            ), reply
    elif path == "/ws/stt":
        for _ in range(2):  # the first may be taken as the opening message
            ws.send(json.dumps({"type": "end"}))
        while not (reply := json.loads(ws.recv(timeout=30))).get("isFinal"):
            assert reply["type"] in ("error", "transcript"), reply
    elif path == "/ws/tts":
        ws.send(json.dumps({"text": "ok"}))
        while (reply := ws.recv(timeout=30)) != "EOS":
            assert isinstance(reply, bytes) or reply.startswith(("ERR: ", "[")), reply


@pytest.mark.parametrize("path", ["/ws/agent", "/ws/tts", "/ws/stt"])
def test_random_messages_never_break_a_socket(server: RunningServer, path: str) -> None:
    @FUZZ
    @given(st.lists(frames, min_size=1, max_size=4))
    def run(batch: list) -> None:
        CASES["lokutor"] += 1
        with connect(f"{server.ws}{path}?api_key={server.api_key}", max_size=1 << 22) as ws:
            for frame in batch:
                ws.send(frame)
            answered_or_alive(ws, path)

    health = Health(server)
    run()
    health.check("lokutor")
