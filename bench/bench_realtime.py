"""Voice-to-voice latency through /v1/realtime with the official openai SDK: from the last sample of
speech appended (real-time pace) to the first ``response.output_audio.delta``.

    .venv/bin/python bench/bench_realtime.py --turns 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.stats import summary
from tests.server import start_server
from tests.speech import espeak_wav
from voxloop.audio.pcm import float_to_pcm16, resample

RATE = 24000
CHUNK_S = 0.04
QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?", "Name a primary color."]


async def turn(connection: object, question: str) -> float:
    audio, rate = espeak_wav(question)
    speech = float_to_pcm16(resample(audio, rate, RATE))
    step = int(CHUNK_S * RATE) * 2
    for start in range(0, len(speech), step):  # a microphone: real time
        await connection.input_audio_buffer.append(
            audio=base64.b64encode(speech[start : start + step]).decode()
        )
        await asyncio.sleep(CHUNK_S)
    ended = time.monotonic()
    silence = base64.b64encode(bytes(step)).decode()
    first: float | None = None
    sender = asyncio.create_task(_silence(connection, silence))
    try:
        async for event in connection:
            if event.type == "response.output_audio.delta" and first is None:
                first = time.monotonic()
            if event.type == "response.done":
                break
    finally:
        sender.cancel()
    return (first or time.monotonic()) - ended


async def _silence(connection: object, chunk: str) -> None:
    while True:
        await connection.input_audio_buffer.append(audio=chunk)
        await asyncio.sleep(CHUNK_S)


async def main(turns: int) -> None:
    server = start_server(Path(tempfile.mkdtemp()))
    try:
        client = AsyncOpenAI(base_url=f"{server.http}/v1", api_key=server.api_key)
        values = []
        async with client.realtime.connect(model="gpt-realtime") as connection:
            await connection.session.update(
                session={"type": "realtime", "instructions": "Answer in one sentence."}
            )
            for index in range(turns + 1):
                latency = await turn(connection, QUESTIONS[index % len(QUESTIONS)])
                if index:  # the first turn warms the caches
                    values.append(latency)
                print(f"turn {index}: {latency * 1000:.0f} ms", flush=True)
        print(summary("realtime voice-to-voice (speech end -> first audio delta)", values))
        print(f"median {np.median(values) * 1000:.0f} ms")
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=5)
    asyncio.run(main(parser.parse_args().turns))
