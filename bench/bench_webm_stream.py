"""A browser's MediaRecorder stream (WebM/Opus, a chunk every 100 ms) decoded chunk by chunk, as a
SelamGPT session does: how much later than PCM16 its audio reaches the engine.

Run: .venv/bin/python bench/bench_webm_stream.py
Per chunk: the decode time (the chunk's wait before the engine gets its audio) and the audio held
back (speech in the chunks fed so far that has not come out yet: Opus frames cut by a chunk
border, the codec's look-ahead and the resampler). PCM16 has neither.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.stats import summary
from tests.speech import espeak_16k
from tests.test_seed_clients_parts import media_recorder_chunks, webm_opus
from voxloop.audio.stream import StreamDecoder

TEXT = "The quick brown fox jumps over the lazy dog. Then it runs all the way home again. " * 3
CHUNK_S = 0.1


def main() -> None:
    speech = espeak_16k(TEXT)
    chunks = media_recorder_chunks(webm_opus(speech))
    decode_ms, held_ms = [], []
    decoder = StreamDecoder("webm", 16000)
    out = 0
    try:
        for index, chunk in enumerate(chunks):
            started = time.perf_counter()
            out += len(decoder.feed(chunk)) // 2
            decode_ms.append(time.perf_counter() - started)
            fed_s = min((index + 1) * CHUNK_S, len(speech) / 16000)
            held_ms.append(max(0.0, fed_s - out / 16000))
    finally:
        decoder.close()
    print(f"{len(speech) / 16000:.1f} s of speech in {len(chunks)} MediaRecorder-like chunks")
    print(summary("decode time per 100 ms chunk", decode_ms))
    print(summary("audio held back after a chunk", held_ms))


if __name__ == "__main__":
    main()
