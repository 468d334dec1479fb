"""The Realtime adapter over the engine's reply handles and history ids, on the scripted backends
(tests/fakes.py): a response per reply found by its handle, a client tool call split over two
responses, and truncate/delete editing the history by message id. The wire against the real
models and the OpenAI SDK: tests/test_realtime.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.fakes import FakeBackends
from voxloop.backends.llm.base import ToolCall
from voxloop.engine.session import Session, SessionConfig
from voxloop.protocols.realtime.connection import RealtimeConnection

WAIT_S = 5.0


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))


class Client:
    def __init__(self, connection: RealtimeConnection, socket: FakeSocket) -> None:
        self.connection, self.socket = connection, socket

    async def send(self, event: dict[str, Any]) -> None:
        await self.connection.handle(json.dumps(event))

    async def wait(self, kind: str, where: Callable[[dict], bool] = lambda e: True, after: int = 0) -> dict:
        async with asyncio.timeout(WAIT_S):
            while True:
                found = [e for e in self.socket.sent[after:] if e["type"] == kind and where(e)]
                if found:
                    return found[0]
                await asyncio.sleep(0.002)

    def history(self) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in self.connection.session.history.messages]


@pytest.fixture
async def realtime() -> AsyncIterator[tuple[Client, FakeBackends]]:
    backends = FakeBackends()
    session = Session(backends, SessionConfig(input_rate=24000, output_rate=24000))  # type: ignore[arg-type]
    socket = FakeSocket()
    connection = RealtimeConnection(socket, session, beta=False, model="gpt-realtime")  # type: ignore[arg-type]
    await connection.start()
    forward = asyncio.create_task(connection.forward())
    client = Client(connection, socket)
    manual = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    await client.send({"type": "session.update", "session": manual})
    yield client, backends
    forward.cancel()
    await session.close()


async def say(client: Client, text: str) -> dict:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await client.send({"type": "conversation.item.create", "item": item})
    return await client.wait("conversation.item.done", lambda e: e["item"]["role"] == "user")


async def test_response_create_shows_the_reply_it_started(realtime: tuple[Client, FakeBackends]) -> None:
    client, _ = realtime
    await say(client, "hello")
    await client.send({"type": "response.create"})
    done = (await client.wait("response.done"))["response"]
    created = (await client.wait("response.created"))["response"]
    assert done["id"] == created["id"] and done["status"] == "completed"
    message = done["output"][0]
    assert message["role"] == "assistant" and message["content"][0]["transcript"] == "You said: hello."
    assert client.history() == [("user", "hello"), ("assistant", "You said: hello.")]
    item = client.connection.items[message["id"]]
    assert item.message is client.connection.session.history.messages[1]  # tied by id, not by text


async def test_a_client_tool_call_spans_two_responses(realtime: tuple[Client, FakeBackends]) -> None:
    client, backends = realtime
    lamp = {"type": "function", "name": "lamp", "description": "Switches the lamp."}
    await client.send({"type": "session.update", "session": {"type": "realtime", "tools": [lamp]}})
    backends.llm.script("lights on", "", ToolCall("call_7", "lamp", {}), after_tools="The lamp is on.")
    await say(client, "lights on")
    await client.send({"type": "response.create"})
    first = (await client.wait("response.done"))["response"]
    assert first["status"] == "completed" and first["output"][0]["type"] == "function_call"
    assert first["output"][0]["call_id"] == "call_7"
    output = {"type": "function_call_output", "call_id": "call_7", "output": '{"on": true}'}
    await client.send({"type": "conversation.item.create", "item": output})
    mark = len(client.socket.sent)
    await client.send({"type": "response.create"})
    second = (await client.wait("response.done", after=mark))["response"]
    assert second["id"] != first["id"] and second["status"] == "completed"
    assert second["output"][0]["content"][0]["transcript"] == "The lamp is on."
    assert ("tool", '{"on": true}') in client.history()
    unknown = {"type": "function_call_output", "call_id": "call_7", "output": "{}"}
    with pytest.raises(Exception, match="no function call is waiting"):
        await client.send({"type": "conversation.item.create", "item": unknown})  # answered already


async def test_truncate_and_delete_edit_the_history_by_id(realtime: tuple[Client, FakeBackends]) -> None:
    client, _ = realtime
    user = await say(client, "tell me something")
    await client.send({"type": "response.create"})
    done = (await client.wait("response.done"))["response"]
    assistant = done["output"][0]["id"]
    truncate = {"type": "conversation.item.truncate", "item_id": assistant, "content_index": 0}
    await client.send(truncate | {"audio_end_ms": 50})  # half of 5 words (20 ms each) were heard
    await client.wait("conversation.item.truncated")
    assert client.history() == [("user", "tell me something"), ("assistant", "You said:")]
    await client.send(truncate | {"audio_end_ms": 0})  # nothing heard: the message goes
    assert client.history() == [("user", "tell me something")]
    await client.send({"type": "conversation.item.delete", "item_id": user["item"]["id"]})
    await client.wait("conversation.item.deleted")
    assert client.history() == []
