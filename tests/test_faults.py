"""Faults on a real server process: a TTS voice that raises, a client that vanishes mid-reply, and
a full disk under the history store. Each is reported to the session it hits (an ``error``
event) and every other session carries on. The broken voice is injected by
tests/faults/sitecustomize.py; the full disk is a real 1 MiB tmpfs filled to the last byte.
(LLM faults: tests/test_agent_llm_faults.py.)"""

from __future__ import annotations

import contextlib
import errno
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.agent_client import AgentClient
from tests.server import REPO, RunningServer, start_server
from tests.speech import espeak_16k

QUESTION = "Please tell me something about the weather."


@pytest.fixture(scope="module")
def tiny_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mount = tmp_path_factory.mktemp("tiny-disk")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory: pytest.TempPathFactory, tiny_disk: Path) -> Iterator[RunningServer]:
    env = {
        "PYTHONPATH": f"{REPO / 'tests' / 'faults'}:{REPO / 'src'}",
        "VOXLOOP_TEST_BROKEN_VOICE": "piper-joe-3",  # voice M3
        "VOXLOOP_HISTORY_DB": str(tiny_disk / "history.db"),
    }
    running = start_server(tmp_path_factory.mktemp("faulty"), env=env)
    yield running
    running.stop()


def ask(client: AgentClient, text: str = QUESTION) -> float:
    return client.say(np.concatenate([espeak_16k(text), np.zeros(1600, np.float32)]))


def answered(client: AgentClient, since: float) -> str:
    """The assistant's reply text, once it was spoken and the session listens again."""
    reply = client.wait_transcript("assistant", since=since, timeout=90)["data"]
    client.wait_status("listening", since=since, timeout=60)
    assert client.audio_between(since).size > 8000, "no reply audio"
    return reply


def agent(server: RunningServer, voice: str = "F1") -> AgentClient:
    client = AgentClient(f"{server.ws}/ws/agent?api_key={server.api_key}", speed=2.0)
    client.configure("You are a helpful assistant. Answer in one short sentence.", voice=voice)
    return client


def test_broken_tts_voice_is_reported_and_others_carry_on(faulty_server: RunningServer) -> None:
    broken, healthy = agent(faulty_server, voice="M3"), agent(faulty_server)
    try:
        asked = ask(broken)
        ask(healthy)
        error = broken.wait_for(lambda m: m.get("type") == "error", since=asked, timeout=90)
        assert "speech synthesis failed" in error["data"] and "corrupt" in error["data"]
        assert answered(healthy, asked)
        assert not [m for m in healthy.events("error")]
        broken.ws.send('{"type": "voice", "data": "F2"}')  # the broken session is still usable
        assert answered(broken, ask(broken))
    finally:
        broken.close()
        healthy.close()


def test_client_vanishing_mid_reply_leaves_the_others_alone(faulty_server: RunningServer) -> None:
    leaving, staying = agent(faulty_server), agent(faulty_server)
    try:
        asked = ask(leaving)
        leaving.wait_status("speaking", since=asked, timeout=90)
        leaving.ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a close frame
        leaving.ws.socket.close()
        assert answered(staying, ask(staying))
        assert httpx.get(f"{faulty_server.http}/healthz").status_code == 200
        metrics = httpx.get(f"{faulty_server.http}/metrics").text
        assert 'voxloop_sessions{endpoint="/ws/agent"} 1.0' in metrics  # the vanished one is gone
    finally:
        with contextlib.suppress(Exception):
            leaving.close()
        staying.close()
    assert "Exception in ASGI application" not in faulty_server.log()


def test_full_disk_for_history_is_reported_and_the_conversation_goes_on(
    faulty_server: RunningServer, tiny_disk: Path
) -> None:
    filler = tiny_disk / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:  # until ENOSPC: every byte of the tmpfs is taken
            out.write(b"\0" * 4096)
    with pytest.raises(OSError) as full:
        (tiny_disk / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    first, second = agent(faulty_server), agent(faulty_server)
    try:
        asked = ask(first)
        assert answered(first, asked)  # the conversation goes on
        error = first.wait_for(lambda m: m.get("type") == "error", since=asked, timeout=30)
        assert "conversation history not saved" in error["data"] and "full" in error["data"], error
        assert answered(second, ask(second))
    finally:
        first.close()
        second.close()
        filler.unlink()
    assert httpx.get(f"{faulty_server.http}/healthz").status_code == 200
