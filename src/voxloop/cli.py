"""The ``voxloop`` command: serve, keys, say, transcribe."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from voxloop.config import Settings


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from voxloop.server.app import create_app
    from voxloop.server.http_timeouts import with_header_timeout
    from voxloop.server.redact import redact_uvicorn_logs

    settings = Settings()
    redact_uvicorn_logs()
    app = create_app(settings)
    if settings.metrics_port:  # kept off the public address: a thread of prometheus_client's own
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, settings.metrics_host)

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT: readiness goes false and new sessions are refused; open sessions may
        end by themselves for ``drain_grace_s``; then stop accepting, tell the rest (1001) and let
        them close, and only then let uvicorn cut what is left (it would close all at once, 1012)."""

        async def shutdown(self, sockets: list | None = None) -> None:
            app.state.limits.draining = True  # /readyz answers 503 from now on: a balancer stops sending
            await self.let_sessions_finish()
            for server in self.servers:
                server.close()
            await app.state.limits.drain(settings.drain_timeout_s)
            await super().shutdown(sockets)

        async def let_sessions_finish(self) -> None:
            """Still listening (the balancer's health checks must read the 503), until the open
            sessions have ended, ``drain_grace_s`` has passed, or a second Ctrl-C says hurry."""
            limits, grace_s = app.state.limits, settings.drain_grace_s
            if limits.leases() and grace_s:
                logging.getLogger("voxloop.serve").info(
                    "draining: %d sessions open, waiting up to %g s", len(limits.leases()), grace_s
                )
            deadline = time.monotonic() + grace_s
            while limits.leases() and (left := deadline - time.monotonic()) > 0 and not self.force_exit:
                limits.closed.clear()
                try:
                    await asyncio.wait_for(limits.closed.wait(), min(left, 0.5))
                except TimeoutError:
                    pass  # time to look at the deadline and at a second Ctrl-C

    config = uvicorn.Config(
        app,
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=args.log_level,
        http=with_header_timeout(settings.header_timeout_s),  # slowloris
        ws_max_size=settings.max_message_bytes,  # uvicorn closes with 1009 above it
        ws_ping_interval=10,  # a dead or half-open peer is closed within ~20 s, and its slot freed
        ws_ping_timeout=10,
        timeout_graceful_shutdown=settings.drain_timeout_s + 5,
    )
    # uvicorn re-raises the SIGTERM it drained for once it is done; by then the shutdown was clean,
    # so the process exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server = DrainingServer(config)
    server.run()
    # Sessions are drained and the history store is closed. The interpreter's final garbage
    # collection can still abort in a native library's thread teardown (seen: SIGABRT, "terminate
    # called without an active exception"), so the process ends here without it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if server.started else 1)


def keys(args: argparse.Namespace) -> int:
    from voxloop.service.keys import KeyStore

    store = KeyStore(Settings().keys_path)
    if args.action == "create":
        key, info = store.create(args.name, args.max_sessions, args.rate, args.audio_per_min)
        print(key)
        print(f"created key {info.id} ({info.name or 'unnamed'}); it is shown only once", file=sys.stderr)
    elif args.action == "list":
        print(f"{'id':8}  {'name':20}  {'created':19}  {'revoked':19}  sessions  msg/s  audio s/min")
        # "-": the server's default (VOXLOOP_KEY_*), unlimited unless configured
        for info in store.list():
            print(
                f"{info.id:8}  {info.name[:20]:20}  {_when(info.created_at):19}  {_when(info.revoked_at):19}"
                f"  {_limit(info.limits.max_sessions):>8}  {_limit(info.limits.messages_per_s):>5}"
                f"  {_limit(info.limits.audio_s_per_min):>11}"
            )
    else:
        if not args.id:
            raise ValueError("revoke needs a key id (see 'voxloop keys list')")
        info = store.revoke(args.id)
        print(f"revoked key {info.id} ({info.name or 'unnamed'}); its open sessions end within seconds")
    return 0


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def _limit(value: float) -> str:
    return f"{value:g}" if value else "-"


def say(args: argparse.Namespace) -> int:
    from voxloop.audio.pcm import write_wav
    from voxloop.backends.tts.voices import Speaker

    speaker = Speaker(Settings())
    voice = speaker.resolve(args.voice, args.lang)
    chunks = list(speaker.synthesize(args.text, voice, speaker.language_of(args.lang, voice), args.speed))
    rate = chunks[0].sample_rate
    Path(args.output).write_bytes(write_wav(np.concatenate([c.audio for c in chunks]), rate))
    print(f"wrote {args.output} ({voice.name}, {rate} Hz)")
    return 0


def transcribe(args: argparse.Namespace) -> int:
    from voxloop.audio.pcm import read_wav, resample
    from voxloop.backends.stt.whisper import WhisperStt

    samples, rate = read_wav(Path(args.file).read_bytes())
    stt = WhisperStt(Settings())
    started = time.perf_counter()
    transcript = stt.transcribe(resample(samples, rate, stt.sample_rate), args.language)
    print(transcript.text)
    print(
        f"[{transcript.engine}, {transcript.language}, {time.perf_counter() - started:.2f} s]",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxloop", description="Real-time voice agent server")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="start the server")
    p.add_argument("--host", help="default VOXLOOP_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, help="default VOXLOOP_PORT or 8080")
    p.add_argument("--log-level", default=os.environ.get("VOXLOOP_LOG_LEVEL", "info"))
    p.set_defaults(run=serve)

    p = commands.add_parser("keys", help="manage API keys (stored as digests in VOXLOOP_DATA_DIR)")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("id", nargs="?", help="revoke: the key id (or a unique prefix)")
    p.add_argument("--name", default="", help="create: a label for the key")
    p.add_argument("--max-sessions", type=int, help="create: open sessions (0 = unlimited)")
    p.add_argument("--rate", type=float, help="create: client messages per second (0 = unlimited)")
    p.add_argument("--audio-per-min", type=float, help="create: audio seconds per minute (0 = unlimited)")
    p.set_defaults(run=keys)

    p = commands.add_parser("say", help="synthesise text to a WAV file")
    p.add_argument("text")
    p.add_argument("-o", "--output", default="out.wav")
    p.add_argument("--voice", default=None, help="F1-F5, M1-M5 or an engine voice id")
    p.add_argument("--lang", default=None, help="en, es, fr, pt, ko, ...")
    p.add_argument("--speed", type=float, default=1.0)
    p.set_defaults(run=say)

    p = commands.add_parser("transcribe", help="transcribe a WAV file")
    p.add_argument("file")
    p.add_argument("--language", default=None, help="e.g. en; default: detect")
    p.set_defaults(run=transcribe)

    args = parser.parse_args(argv)
    level = getattr(args, "log_level", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except ValueError as exc:
        print(f"voxloop: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
