"""Soca AI voice WebSocket (seed 003): a thin translator over engine.Session.

In: a JSON ``start`` message first (it authenticates, see start.py), then binary PCM16LE mono at
``sr`` in 20-50 ms frames. Out (JSON text frames, every one with the current ``seq``):

- ``{"type": "ready", "session_id", "seq", "resumed"}`` once the start message is accepted;
- ``{"type": "stt.partial", "text", "seq"}`` while the user speaks, ``{"type": "stt.final", ...}``
  when the turn ends (its ``seq`` is that of the reply it starts);
- per spoken sentence ``{"type": "agent", "stepType": "sentence", "seq", "idx", "text",
  "audio": <base64 MP3>, "format": "mp3", "sr": 22050}``, each MP3 playable on its own;
- ``{"type": "agent", "stepType": "final_answer", "seq", "text"}`` when a reply was fully spoken;
- ``{"type": "barge", "seq": N, "reason": "content_partial"}`` when the user's words cut the reply:
  the next reply has seq N and nothing of a lower seq is sent after it;
- ``{"type": "error", "message", "seq"}``.

The start token is the API key: the key's limits apply (open sessions, messages and audio per
second, revocation, idle and session time limits, server drain: see docs/operations.md), and every
committed turn is kept under the client's ``session_id`` (``GET /v1/sessions/{session_id}``; a
resumed session goes on writing under it).

Every reply gets the next seq, so a client that stops audio of a lower seq (as the Soca docs ask)
never plays two replies at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voxloop.audio.codec import encode_mp3
from voxloop.audio.pcm import AudioFormatError
from voxloop.backends.registry import Backends
from voxloop.config import Settings
from voxloop.engine import events
from voxloop.engine.session import Session
from voxloop.protocols.common import (
    admit_audio,
    keep_history,
    new_session,
    parse_json,
    run_session,
    stored_by_others,
)
from voxloop.protocols.soca.start import Start, parse_start, token_of
from voxloop.service.guard import Connection, hold_connection, origin_allowed, run_leased
from voxloop.service.keys import KeyInfo
from voxloop.service.limits import Claim, Lease, LimitExceeded
from voxloop.service.metrics import ERRORS, SESSIONS
from voxloop.service.resume import Resumable, ResumeStore, Saved, SaveEachTurn, owner_of

log = logging.getLogger(__name__)

OUTPUT_RATE = 22050  # Soca replies are 22.05 kHz MP3
START_TIMEOUT_S = 10.0  # a connection that never says "start" is dropped
MAX_FRAME_S = 2.0  # longer audio frames are refused: the docs ask for 20-50 ms
OUTBOX_SIZE = 64  # messages waiting for the socket; the engine's own queue holds the rest
TAKEOVER_WAIT_S = 5.0
# Why a reply was cut: the barge-in gate passed on the words heard so far, or the user's finished
# turn replaced the reply still playing (its words came too late for the gate's window).
BARGE_REASONS = {"barge_in": "content_partial", "new_input": "content_final"}


@dataclass
class Outgoing:
    seq: int
    message: dict[str, Any]
    pcm: bytes | None = None  # sentence audio, encoded to MP3 only when it is about to be sent


class Outbox:
    """Bounded queue of outgoing messages from which a barge-in removes everything older."""

    def __init__(self, size: int = OUTBOX_SIZE) -> None:
        self.items: deque[Outgoing] = deque()
        self.size = size
        self.changed = asyncio.Condition()

    async def put(self, item: Outgoing) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.items) < self.size)
            self.items.append(item)
            self.changed.notify_all()

    async def get(self) -> Outgoing:
        async with self.changed:
            await self.changed.wait_for(lambda: bool(self.items))
            item = self.items.popleft()
            self.changed.notify_all()
            return item

    async def drop_older(self, seq: int) -> None:
        async with self.changed:
            self.items = deque(item for item in self.items if item.seq >= seq)
            self.changed.notify_all()


@dataclass
class SocaSessions:
    """Per-server state: closed conversations to resume and the connections live now."""

    store: Resumable
    live: dict[str, SocaVoice] = field(default_factory=dict)

    @classmethod
    def of(cls, websocket: WebSocket, settings: Settings) -> SocaSessions:
        state = websocket.app.state
        if getattr(state, "soca_sessions", None) is None:
            store = getattr(state, "resume", None)  # shared by the nodes (Redis), when configured
            store = store or ResumeStore(settings.soca_resume_grace_s, settings.soca_resume_capacity)
            state.soca_sessions = cls(store)
            state.limits.on_taken_over = state.soca_sessions.taken_over
        return state.soca_sessions

    def taken_over(self, session_id: str, holder: str) -> list[str]:
        """The same session id connected again, here or on another node: the newest connection
        wins (the older may be a dead network path). Returns the holder told to end, if any."""
        voice = self.live.get(session_id)
        if voice is None or voice.holder == holder:
            return []
        voice.taken_over.set()
        return [voice.holder]


class SocaVoice:
    def __init__(
        self,
        websocket: WebSocket,
        session: Session,
        start: Start,
        lease: Lease | None = None,
        seq: int = 0,
        holder: str = "",
    ) -> None:
        self.websocket, self.session, self.start, self.lease = websocket, session, start, lease
        self.holder = holder  # its claim on the session id
        self.owner = owner_of(start.token)
        self.seq = seq  # the newest seq given out
        self.floor = seq  # messages of a lower seq are stale: never sent
        self.barged = False  # a barge-in gave out a seq that the next reply takes
        self.outbox = Outbox()
        self.taken_over = asyncio.Event()  # the same session_id connected again

    # ---- client -> engine ----------------------------------------------------------------

    async def receive(self) -> None:
        max_frame = int(MAX_FRAME_S * self.start.sr) * 2
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if not await self.within_message_rate():
                    continue
                if (data := message.get("bytes")) is not None:
                    if len(data) > max_frame or len(data) % 2:
                        await self.error(
                            f"audio frames must be PCM16LE mono of at most {MAX_FRAME_S:g} s "
                            f"({max_frame} bytes at {self.start.sr} Hz); got {len(data)} bytes"
                        )
                        continue
                    admitted, refusal = admit_audio(self.lease, len(data) / 2 / self.start.sr)
                    if refusal:
                        await self.error(refusal)
                    if not admitted:
                        continue
                    try:
                        await self.session.push_audio(data)
                    except AudioFormatError as exc:
                        await self.error(str(exc))
                elif (text := message.get("text")) is not None:
                    if await self.handle_text(text):
                        return

    async def within_message_rate(self) -> bool:
        """Over the key's message rate the message is dropped and the client told (once a second)."""
        if self.lease is None:
            return True
        try:
            self.lease.message()
            return True
        except LimitExceeded as exc:
            ERRORS.labels(self.websocket.scope["path"], "rate_limited").inc()
            if self.lease.report_due():
                await self.error(exc.message)
            return False

    async def handle_text(self, raw: str) -> bool:
        """A JSON control message; True when the client ends the session."""
        try:
            message = parse_json(raw)
        except ValueError as exc:
            await self.error(f"invalid message: {exc}")
            return False
        kind = message.get("type") if isinstance(message, dict) else None
        if kind in ("stop", "end"):
            return True
        if kind == "start":
            await self.error("already started")
        else:
            await self.error('unknown message: send binary PCM16LE audio, or {"type": "stop"} to end')
        return False

    # ---- engine -> client ----------------------------------------------------------------

    async def forward_events(self) -> None:
        while True:
            event = await self.session.next_event()
            match event:
                case events.TranscriptPartial(text=text):
                    await self.send({"type": "stt.partial", "text": text}, self.seq)
                case events.TranscriptFinal(role="user", text=text, generation=generation):
                    await self.send({"type": "stt.final", "text": text}, self.seq_of(generation))
                case events.AudioOut(pcm=pcm, generation=generation, text=text, piece=piece) if pcm:
                    sentence = {"type": "agent", "stepType": "sentence", "idx": piece, "text": text}
                    sentence |= {"format": "mp3", "sr": OUTPUT_RATE}
                    await self.outbox.put(Outgoing(self.seq_of(generation), sentence, pcm))
                case events.ResponseDone(generation=generation, text=text, interrupted=False):
                    answer = {"type": "agent", "stepType": "final_answer", "text": text}
                    await self.send(answer, self.seq_of(generation))
                case events.Interrupted(generation=generation, reason=reason):
                    await self.barge(generation, reason)
                case events.Error(message=text):
                    await self.error(text)

    def seq_of(self, generation: int) -> int:
        """The seq of a reply (kept on its engine handle): the next one when it is new (or the one a
        barge-in announced). A reply older than one that has a seq is stale."""
        reply = self.session.handle(generation)
        replies = self.session.replies.values()
        if reply is None or any(other.tag is not None for other in replies if other.id > generation):
            return self.floor - 1
        if reply.tag is None:
            if not self.barged:
                self.seq += 1
            self.barged = False
            reply.tag = self.seq
        return reply.tag

    async def barge(self, generation: int, reason: str) -> None:
        reply = self.session.handle(generation)
        if reply is None or reply.tag != self.seq or self.barged:
            return  # a reply already superseded
        self.seq += 1
        self.floor = self.seq
        self.barged = True
        await self.outbox.drop_older(self.seq)
        await self.send({"type": "barge", "reason": BARGE_REASONS.get(reason, reason)}, self.seq)

    async def send(self, message: dict[str, Any], seq: int) -> None:
        await self.outbox.put(Outgoing(seq, message))

    async def error(self, message: str) -> None:
        await self.send({"type": "error", "message": message}, self.seq)

    async def tell_end(self, lease: Lease) -> None:
        """The lease ended (key revoked, idle, too long, server draining): say why, then close."""
        if self.websocket.application_state == WebSocketState.CONNECTED:
            ended = {"type": "error", "message": lease.end_reason, "seq": self.seq}
            await self.websocket.send_text(json.dumps(ended))
            await self.websocket.close(code=lease.close_code, reason=lease.end_reason[:120])

    async def send_loop(self) -> None:
        """The only writer to the socket: checks the seq floor last thing before each send."""
        while True:
            item = await self.outbox.get()
            if item.seq < self.floor:
                continue
            message = {**item.message, "seq": item.seq}
            if item.pcm is not None:
                mp3 = await asyncio.to_thread(encode_mp3, item.pcm, OUTPUT_RATE)  # off the event loop
                if item.seq < self.floor:
                    continue  # a barge-in came while it was encoded
                message["audio"] = base64.b64encode(mp3).decode()
            await self.websocket.send_text(json.dumps(message))


async def refuse(websocket: WebSocket, message: str, kind: str = "invalid", code: int = 1008) -> None:
    ERRORS.labels(websocket.scope["path"], kind).inc()
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps({"type": "error", "message": message}))
        await websocket.close(code=code)


async def read_start(websocket: WebSocket, backends: Backends) -> tuple[Start, KeyInfo] | None:
    """The validated start message and its key, or None once the client was told why not and closed."""
    try:
        first = await asyncio.wait_for(websocket.receive(), START_TIMEOUT_S)
    except TimeoutError:
        await refuse(websocket, "must start with type=start")
        return None
    if first["type"] == "websocket.disconnect":
        return None
    try:
        message = parse_json(first["text"]) if first.get("text") is not None else None
    except ValueError:
        message = None
    if not isinstance(message, dict) or message.get("type") != "start":
        await refuse(websocket, "must start with type=start")
        return None
    try:  # authenticate before anything else is looked at
        info = await websocket.app.state.keys.identify(token_of(message))
    except ValueError:
        info = None
    except LimitExceeded as exc:  # the key store does not answer
        await refuse(websocket, exc.message, "unavailable", 1011)
        return None
    if info is None:
        await refuse(websocket, "Invalid or expired token", "unauthorized")
        return None
    try:
        return parse_start(message, backends.settings), info
    except ValueError as exc:
        await refuse(websocket, str(exc))
        return None


def session_changes(start: Start) -> dict[str, Any]:
    changes: dict[str, Any] = dict(
        input_rate=start.sr,
        output_rate=OUTPUT_RATE,
        frame_ms=None,  # one AudioOut per sentence: one MP3 each
        partials=start.partials,
        language=start.lang,
        barge_in=start.barge,
    )
    if start.prompt is not None:
        changes["prompt"] = start.prompt
    if start.voice is not None:
        changes["voice"] = start.voice
    return changes


async def serve_soca(websocket: WebSocket, backends: Backends) -> None:
    state = websocket.app.state
    await websocket.accept()
    if not origin_allowed(websocket, state.cors_origins):
        await refuse(websocket, "forbidden: origin not allowed", "forbidden")
        return
    opened = await read_start(websocket, backends)
    if opened is None:
        return
    start, key = opened
    # The client chose the id: take it for this key first, in one atomic step of the session book
    # (on every node with Redis), so of two keys racing for one id only the first gets it; then
    # check it was not another key's before.
    try:
        claim = await state.limits.claim(start.session_id, key.id)
    except LimitExceeded as exc:  # the shared state does not answer
        await refuse(websocket, exc.message, "unavailable", 1011)
        return
    if claim is None:
        await refuse(websocket, "session_id is in use by another key")
        return
    with claim:
        await serve_claimed(websocket, backends, start, key, claim)


async def serve_claimed(
    websocket: WebSocket, backends: Backends, start: Start, key: KeyInfo, claim: Claim
) -> None:
    state = websocket.app.state
    sessions = SocaSessions.of(websocket, backends.settings)
    owner = owner_of(start.token)
    if await sessions.store.owner(start.session_id) not in (None, owner) or await stored_by_others(
        state, start.session_id, key.id
    ):
        await refuse(websocket, "session_id is in use by another key")
        return
    # An older connection of this id (here or on another node) ends first: its last turn is saved
    # and its lease closed by the time this one reads the saved conversation and takes a lease.
    await state.limits.take_over(claim, TAKEOVER_WAIT_S)
    try:
        lease = await state.limits.open_session(key)
    except LimitExceeded as exc:
        await refuse(websocket, exc.message, "rate_limited", exc.close_code)
        return
    with lease:  # closed on every path
        hold_connection(websocket, lease)
        try:
            session = new_session(backends, **session_changes(start))
        except ValueError as exc:
            await refuse(websocket, str(exc))
            return
        saved = await sessions.store.take(start.session_id, owner)
        if saved is not None:
            session.history.insert(saved.messages)  # stored already: the history listener comes after
        voice = SocaVoice(websocket, session, start, lease, saved.seq if saved else 0, claim.holder)
        keep_history(session, state, lease, voice.error, session_id=start.session_id)

        def snapshot() -> Saved:
            return Saved(owner, list(session.history.messages), voice.seq)

        saving = SaveEachTurn(sessions.store, start.session_id, snapshot)
        session.history.listeners.append(saving)
        sessions.live[start.session_id] = voice
        try:
            await run_leased(lease, converse(voice, resumed=saved is not None), voice.tell_end)
        finally:
            if not session.closed:  # the lease ended before the conversation even began
                await session.close()
            await saving.flush()
            with contextlib.suppress(Exception):  # logged by the store; the session is over anyway
                await sessions.store.save(start.session_id, snapshot())
            if sessions.live.get(start.session_id) is voice:
                del sessions.live[start.session_id]
            lease.close()


async def converse(voice: SocaVoice, resumed: bool) -> None:
    """The session until the client ends it, stalls or is taken over; then the socket is closed."""
    websocket = voice.websocket
    ready = {"type": "ready", "session_id": voice.start.session_id, "resumed": resumed}
    await voice.send(ready, voice.seq)
    stalled = await run_session(
        voice.session, voice.receive(), voice.forward_events(), voice.send_loop(), voice.taken_over.wait()
    )
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(Exception):
        if voice.taken_over.is_set():  # 1000: the Soca client reconnects on any other code
            moved = {"type": "error", "message": "session moved to a newer connection"}
            await websocket.send_text(json.dumps(moved))
            await websocket.close(code=1000)
        elif stalled:
            await websocket.close(code=1008, reason="client stopped reading")
        else:
            await websocket.close(code=1000)


class SocaRoute:
    """The route (an ASGI app): no key check up front, since the start message carries the token."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection = Connection(receive, send)  # the lease, once opened, ends with the socket
        websocket = WebSocket(scope, connection.receive, connection.send)
        websocket.state.connection = connection
        SESSIONS.labels(self.path).inc()
        try:
            await serve_soca(websocket, scope["app"].state.backends)
        finally:
            SESSIONS.labels(self.path).dec()
