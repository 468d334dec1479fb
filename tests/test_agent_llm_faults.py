"""A voice session whose external LLM is down, stalls or breaks off mid-stream gets an ``error``
event and stays usable. The LLM here is a small scripted OpenAI-compatible server (the part under
test is the engine around it); STT, TTS and VAD are the real embedded models."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from tests.agent_client import AgentClient
from tests.server import RunningServer, free_port, start_server
from tests.speech import espeak_16k


class ScriptedLlm:
    """Answers /v1/chat/completions according to ``mode``: ok, slow or cut."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.port = free_port()
        app = Starlette(routes=[Route("/v1/chat/completions", self.complete, methods=["POST"])])
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def complete(self, request: Request) -> StreamingResponse:
        await request.json()
        mode = self.mode

        async def body() -> Iterator[bytes]:
            if mode == "slow":
                await asyncio.sleep(30)
            words = "The answer is forty two. I hope that helps you today.".split()
            for i, word in enumerate(words):
                if mode == "cut" and i == 4:
                    raise ConnectionError("upstream died")  # the connection drops mid-stream
                chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    def __enter__(self) -> ScriptedLlm:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedLlm]:
    with ScriptedLlm() as scripted:
        yield scripted


@pytest.fixture(scope="module")
def remote_server(tmp_path_factory: pytest.TempPathFactory, llm: ScriptedLlm) -> Iterator[RunningServer]:
    env = {
        "VOXLOOP_LLM_BACKEND": "openai",
        "VOXLOOP_LLM_BASE_URL": f"http://127.0.0.1:{llm.port}/v1",
        "VOXLOOP_LLM_TIMEOUT_S": "3",
    }
    running = start_server(tmp_path_factory.mktemp("remote"), env=env)
    yield running
    running.stop()


def test_llm_faults_give_errors_and_the_session_recovers(
    remote_server: RunningServer, llm: ScriptedLlm
) -> None:
    client = AgentClient(f"{remote_server.ws}/ws/agent?api_key={remote_server.api_key}", speed=2.0)
    question = np.concatenate([espeak_16k("What is the answer to everything?"), np.zeros(1600, np.float32)])
    try:
        client.configure("You are helpful.")
        for mode in ("slow", "cut"):
            llm.mode = mode
            ended = client.say(question)
            error = client.wait_for(lambda m: m.get("type") == "error", since=ended, timeout=60)
            assert "language model" in error["data"], error
        llm.mode = "ok"
        ended = client.say(question)
        client.wait_status("listening", since=ended, timeout=60)
        reply = client.wait_transcript("assistant", since=ended)
        assert "forty two" in reply["data"]
        assert client.audio_between(ended).size > 16000  # it spoke
    finally:
        client.close()


def test_llm_down_gives_an_error_and_speech_still_flows(
    remote_server: RunningServer, llm: ScriptedLlm
) -> None:
    llm.__exit__()  # the LLM server goes away: connections are refused
    client = AgentClient(f"{remote_server.ws}/ws/agent?api_key={remote_server.api_key}", speed=2.0)
    try:
        client.configure("You are helpful.")
        for text in ("Hello there.", "Are you still listening?"):
            ended = client.say(np.concatenate([espeak_16k(text), np.zeros(1600, np.float32)]))
            user = client.wait_for(lambda m: m.get("type") == "transcript", since=ended, timeout=60)
            assert user["role"] == "user" and user["data"]
            error = client.wait_for(lambda m: m.get("type") == "error", since=ended, timeout=30)
            assert "language model" in error["data"]
    finally:
        client.close()
