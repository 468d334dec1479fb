"""The ``voxloop`` command: serve, say, transcribe."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from voxloop.config import Settings


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from voxloop.server.app import create_app
    from voxloop.server.redact import redact_uvicorn_logs

    settings = Settings()
    redact_uvicorn_logs()
    host = args.host or settings.host
    port = args.port or settings.port
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=args.log_level,
        ws_max_size=4 << 20,  # one WebSocket message; audio frames and JSON are far smaller
        ws_ping_interval=20,
        ws_ping_timeout=20,
    )
    return 0


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
