"""Abuse: a real server under hostile clients, phase by phase, checked after each phase.

Phases: per protocol ``--messages`` hostile messages (invalid JSON, wrong types, huge numbers,
deep nesting, binary garbage, odd-length PCM, lone surrogates, unknown and out-of-order events,
Engine.IO framing errors) sent as fast as the socket takes them; abrupt ends (a close right after
a message, a TCP reset) and half-open peers on every protocol; slow readers; a flood of invented
paths. After each: the process alive, /healthz 200, a normal request served (hangs: checks that
were not answered in time), new tracebacks in the log, RSS against the start, the sessions gauge
back to 0 and the limited key's slots free again (and how long that took).

Run:  .venv/bin/python bench/abuse.py [--messages 100000] [--out bench/results/abuse.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.raw_peer import RawPeer, socketio_peer
from tests.server import RunningServer, start_server
from tests.test_keys import create_key

SELAM = "/v1/audio/agent"
SLOTS_WITHIN_S = 35.0
CHECK_TIMEOUT_S = 30.0
MAX_SESSIONS = 2
ASYNCIO_COMPLAINTS = (
    "Task was destroyed",
    "cannot reuse already awaited",
    "Exception in ASGI",
    "never retrieved",
)


def hostile_json(rng: random.Random) -> Iterator[str | bytes]:
    """Messages no client should send; every protocol's parser must answer them, not raise."""
    kinds = [
        lambda: "{",
        lambda: "[" * 50_000,
        lambda: "1" * 5000,
        lambda: '{"type": ' + "9" * 4400 + "}",
        lambda: json.dumps({"type": rng.choice([5, None, [], {}, True, 1e308])}),
        lambda: json.dumps({"type": "x" * rng.randint(1, 300), "data": "y" * rng.randint(0, 2000)}),
        lambda: json.dumps({"type": "transcript", "text": rng.choice([5, [], {"a": 1}, ""])}),
        lambda: '{"type": "transcript", "text": "\\ud800\\udfff\\ud800"}' if rng.random() < 0.01 else "[]",
        lambda: json.dumps({"type": "audio", "data": "!!!not base64", "format": "wav"}),
        lambda: json.dumps({"type": "rates", "playback": 10**30, "input": -1}),
        lambda: json.dumps({"type": "response.create", "response": {"max_output_tokens": -5}}),
        lambda: json.dumps({"type": "session.update", "session": {"voice": 1e308, "turn_detection": []}}),
        lambda: json.dumps({"type": "input_audio_buffer.append", "audio": "AAE"}),
        lambda: json.dumps({"type": "conversation.item.truncate", "item_id": "nope", "audio_end_ms": -1}),
        lambda: json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "tool"}}),
        lambda: json.dumps({"type": "start", "token": 5}),
        lambda: json.dumps({"text": None, "voice": {"a": []}, "speed": "fast"}),
        lambda: json.dumps({"type": "interrupt", "reason": "r" * 500}),
        lambda: rng.randbytes(rng.randrange(1, 64, 2)),  # binary garbage, odd-length PCM
        lambda: rng.randbytes(rng.randrange(1, 640, 2)),
        lambda: json.dumps({"type": "stop"}) if rng.random() < 0.001 else "{}",
    ]
    while True:
        yield rng.choice(kinds)()


def hostile_socketio(rng: random.Random) -> Iterator[str | bytes]:
    for message in hostile_json(rng):
        if isinstance(message, bytes):
            yield message
            continue
        yield rng.choice(
            [
                f"42{SELAM},{message}",
                f'42{SELAM},["{rng.choice(["audio_chunk", "control", "start_session", "nope"])}", {message}]',
                f'42{SELAM},["audio_chunk", {{"audio": "{base64.b64encode(rng.randbytes(33)).decode()}"}}]',
                f"45{rng.randint(0, 10**6)}-{SELAM},{message}",
                f"4{rng.choice('0123456789')}{message}",
                f"{rng.choice('0123456')}{message[:50]}",
            ]
        )


# ---- the server and the checks -------------------------------------------------------------------


class Bench:
    def __init__(self, server: RunningServer, key: str) -> None:
        self.server, self.key = server, key
        self.http = httpx.Client(base_url=server.http, timeout=CHECK_TIMEOUT_S)
        self.tracebacks = 0
        self.rss_start = 0.0
        self.phases: list[dict] = []
        self.log_seen = 0

    def settle(self) -> None:
        """The baseline: every kind of normal request served once, so lazy state exists already."""
        for _ in range(2):
            self.normal_request()
        self.rss_start = self.server.rss_mb()
        self.tracebacks = self.server.log().count("Traceback")
        self.log_seen = len(self.server.log())

    def normal_request(self) -> bool:
        """A client of another key is served (the limited key may be full with half-open peers)."""
        try:
            voices = self.http.get("/voices", headers={"X-API-Key": "config-key"})
            with connect(f"{self.server.ws}/ws/tts?api_key=config-key", open_timeout=CHECK_TIMEOUT_S) as ws:
                ws.send(json.dumps({"text": "All good.", "voice": "F1"}))
                while ws.recv(timeout=CHECK_TIMEOUT_S) != "EOS":
                    pass
            return voices.status_code == 200
        except Exception as exc:
            print(f"  normal request failed: {exc!r}")
            return False

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    def open_sessions(self) -> float:
        lines = self.metrics().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("voxloop_sessions{"))

    def slots_back_s(self, since: float) -> float | None:
        """Seconds from ``since`` until the limited key can open all its sessions again and the
        sessions gauge reads 0; None if not within SLOTS_WITHIN_S."""
        while time.monotonic() - since < SLOTS_WITHIN_S:
            peers = [
                RawPeer(self.server.port, f"/v1/voice-agent?api_key={self.key}") for _ in range(MAX_SESSIONS)
            ]
            leased = all(peer.leased for peer in peers)
            for peer in peers:
                peer.close()
            if leased:
                while self.open_sessions() != 0 and time.monotonic() - since < SLOTS_WITHIN_S:
                    time.sleep(0.2)
                if self.open_sessions() == 0:
                    return time.monotonic() - since
            time.sleep(0.5)
        return None

    def check(self, phase: str, ended: float, **figures: object) -> None:
        alive = self.server.process.poll() is None
        healthy = alive and self.http.get("/healthz").status_code == 200
        served = alive and self.normal_request()
        slots_s = self.slots_back_s(ended) if alive else None
        log = self.server.log()
        new_log = log[self.log_seen :]
        self.log_seen = len(log)
        result = {
            "phase": phase,
            "alive": alive,
            "healthz": healthy,
            "hangs": int(not served),
            "new_tracebacks": log.count("Traceback") - self.tracebacks,
            "asyncio_complaints": sum(new_log.count(s) for s in ASYNCIO_COMPLAINTS),
            "error_lines": sum(" ERROR " in line for line in new_log.splitlines()),
            "rss_mb": round(self.server.rss_mb(), 1),
            "rss_change_pct": round(100 * (self.server.rss_mb() / self.rss_start - 1), 1),
            "slots_back_s": None if slots_s is None else round(slots_s, 1),
            **figures,
        }
        self.tracebacks = log.count("Traceback")
        self.phases.append(result)
        print("  " + ", ".join(f"{k}={v}" for k, v in result.items()), flush=True)


# ---- phases -----------------------------------------------------------------------------------


def flood_websocket(
    bench: Bench, path: str, count: int, first: Callable[[], list[str]] | None = None
) -> dict:
    """``count`` hostile messages over as many connections as the server closes."""
    rng = random.Random(path)
    messages = hostile_json(rng)
    sent = connections = closed_by_server = 0
    while sent < count:
        connections += 1
        with connect(f"{bench.server.ws}{path}", max_size=1 << 24, max_queue=None, open_timeout=30) as ws:
            for opening in first() if first else []:
                ws.send(opening)
            try:
                while sent < count:
                    ws.send(next(messages))
                    sent += 1
            except Exception:
                closed_by_server += 1  # e.g. the client said "stop", or the server hung up on it
    return {"messages": sent, "connections": connections, "closed_by_server": closed_by_server}


def flood_socketio(bench: Bench, count: int) -> dict:
    rng = random.Random("socketio")
    messages = hostile_socketio(rng)
    sent = connections = 0
    while sent < count:
        connections += 1
        peer, _ = socketio_peer(bench.server.port, bench.key)
        try:
            while sent < count:
                message = next(messages)
                if isinstance(message, bytes):
                    peer.send_frame(message, opcode=2)
                else:
                    peer.send_text(message)
                sent += 1
                if sent % 500 == 0:
                    drain(peer)
        except OSError:
            pass
        finally:
            peer.abort()
    return {"messages": sent, "connections": connections}


def drain(peer: RawPeer) -> None:
    """Reads what arrived (the answers), answering Engine.IO pings, without waiting."""
    peer.sock.setblocking(False)
    try:
        while True:
            chunk = peer.sock.recv(1 << 20)
            if not chunk:
                raise OSError("closed")
            peer.buffer += chunk
    except BlockingIOError:
        pass
    finally:
        peer.sock.setblocking(True)
    while (frame := peer._parse()) is not None:
        if frame == (1, b"2"):
            peer.send_text("3")


def abrupt_ends(bench: Bench) -> None:
    """Each protocol: MAX_SESSIONS sessions ended each way; the key's slots must come back."""
    key = bench.key

    def voice_agent() -> RawPeer:
        peer = RawPeer(bench.server.port, f"/v1/voice-agent?api_key={key}")
        peer.send_json({"type": "transcript", "text": "Say ok."})
        return peer

    def agent() -> RawPeer:
        peer = RawPeer(bench.server.port, f"/ws/agent?api_key={key}")
        peer.send_frame(bytes(1764), opcode=2)
        return peer

    def realtime() -> RawPeer:
        peer = RawPeer(bench.server.port, f"/v1/realtime?api_key={key}")
        peer.send_json({"type": "response.create"})
        return peer

    def soca() -> RawPeer:
        peer = RawPeer(bench.server.port, "/v1/voice-ws")
        start = {"type": "start", "token": key, "session_id": f"abuse_{uuid.uuid4().hex[:12]}", "sr": 16000}
        peer.send_json(start)
        peer.recv_text()
        peer.send_frame(bytes(640), opcode=2)
        return peer

    def selam() -> RawPeer:
        return socketio_peer(bench.server.port, key)[0]

    silent: list[RawPeer] = []
    endings: dict[str, Callable[[RawPeer], None]] = {
        "close": RawPeer.close,
        "tcp-reset": RawPeer.abort,
        "half-open": silent.append,
    }
    for protocol, opener in {
        "voice-agent": voice_agent,
        "agent": agent,
        "realtime": realtime,
        "soca": soca,
        "selam": selam,
    }.items():
        for ending, end in endings.items():
            peers = [opener() for _ in range(MAX_SESSIONS)]
            time.sleep(0.2)  # the message is in flight, maybe a reply under way
            for peer in peers:
                end(peer)
            bench.check(f"abrupt {protocol} {ending}", time.monotonic())
            for peer in silent:
                peer.abort()
            silent.clear()


def slow_readers(bench: Bench, readers: int = 4) -> None:
    """Clients that ask for long speech and never read it: dropped, their slots freed."""
    peers = []
    for _ in range(readers):
        peer = RawPeer(bench.server.port, "/ws/tts?api_key=config-key")
        peer.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
        peer.send_json({"text": "A long story about the sea. " * 150, "voice": "F1"})
        peers.append(peer)
    bench.check("slow readers", time.monotonic(), readers=readers)
    for peer in peers:
        peer.abort()


def series(text: str) -> int:
    return len({line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")})


def path_flood(bench: Bench, count: int) -> None:
    before_text = bench.metrics()
    before = len(before_text.encode())
    with httpx.Client(base_url=bench.server.http, timeout=30) as client:
        for n in range(count):
            client.get(f"/v1/sessions/{uuid.uuid4().hex}" if n % 2 else f"/x/{uuid.uuid4().hex}")
    after_text = bench.metrics()
    after = len(after_text.encode())
    bench.check(
        "unique-path flood",
        time.monotonic(),
        paths=count,
        metrics_bytes_before=before,
        metrics_bytes_after=after,
        metrics_series_before=series(before_text),
        metrics_series_after=series(after_text),
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000, help="hostile messages per protocol")
    parser.add_argument("--paths", type=int, default=10_000, help="unique paths in the path flood")
    parser.add_argument("--out", default="bench/results/abuse.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        key = create_key(data, "--name", "abuser", "--max-sessions", str(MAX_SESSIONS))
        server = start_server(data, api_key="config-key", env={"VOXLOOP_DATA_DIR": str(data)})
        try:
            bench = Bench(server, key)
            bench.settle()
            print(f"server up: RSS {bench.rss_start:.0f} MB", flush=True)
            soca_start = [
                json.dumps({"type": "start", "token": "config-key", "session_id": "abuse", "sr": 16000})
            ]
            for name, path, first in [
                ("voice-agent", "/v1/voice-agent?api_key=config-key", None),
                ("realtime", "/v1/realtime?api_key=config-key", None),
                ("lokutor agent", "/ws/agent?api_key=config-key", None),
                ("lokutor stt", "/ws/stt?api_key=config-key", None),
                ("lokutor tts", "/ws/tts?api_key=config-key", None),
                ("soca", "/v1/voice-ws", lambda: soca_start),
            ]:
                started = time.monotonic()
                figures = flood_websocket(bench, path, args.messages, first)
                figures["seconds"] = round(time.monotonic() - started, 1)
                bench.check(f"flood {name}", time.monotonic(), **figures)
            started = time.monotonic()
            figures = flood_socketio(bench, args.messages)
            bench.check(
                "flood selam (socket.io)",
                time.monotonic(),
                **figures,
                seconds=round(time.monotonic() - started, 1),
            )
            abrupt_ends(bench)
            slow_readers(bench)
            path_flood(bench, args.paths)
        finally:
            server.stop()
            shutdown_tracebacks = server.log().count("Traceback")

    phases = bench.phases
    summary = {
        "messages_per_protocol": args.messages,
        "crashes": sum(not p["alive"] for p in phases),
        "hangs": sum(p["hangs"] for p in phases),
        "tracebacks": sum(p["new_tracebacks"] for p in phases),
        "tracebacks_in_whole_log": shutdown_tracebacks,
        "asyncio_complaints": sum(p["asyncio_complaints"] for p in phases),
        "error_lines": sum(p["error_lines"] for p in phases),
        "slots_not_back": [p["phase"] for p in phases if p["slots_back_s"] is None],
        "slowest_slots_back_s": max((p["slots_back_s"] or 0) for p in phases),
        "rss_start_mb": round(bench.rss_start, 1),
        "rss_end_mb": phases[-1]["rss_mb"],
        "phases": phases,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "phases"}, indent=2))
    ok = not (summary["crashes"] or summary["hangs"] or summary["tracebacks"] or summary["slots_not_back"])
    return 0 if ok and abs(phases[-1]["rss_change_pct"]) <= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
