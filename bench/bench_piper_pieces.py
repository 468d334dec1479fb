"""Piper's short first piece: what it costs in intelligibility and what it buys in first audio.

Each sentence is spoken by M1 (Piper joe) twice per round: whole, and cut as the server cuts it
(a first piece of a few words). Both are transcribed back by voxloop's English STT; the character
error rates are compared, with the time to the first piece's audio on the synthesis thread.

Run: .venv/bin/python bench/bench_piper_pieces.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_tts import SENTENCES as BENCH_SENTENCES
from bench.stats import summary
from tests.speech import character_error_rate
from voxloop.audio.pcm import resample
from voxloop.backends.stt.whisper import WhisperStt
from voxloop.backends.tts.voices import Speaker
from voxloop.config import Settings

SENTENCES = [
    *BENCH_SENTENCES,
    "The capital of France is Paris.",
    "Your appointment is confirmed for Tuesday morning.",
    "Thanks for calling, have a wonderful day.",
    "I found three restaurants near the station.",
    "Please hold while I transfer your call.",
    "The package should arrive by Friday afternoon.",
    "It will be sunny and warm this weekend.",
    "Remember to bring your passport to the airport.",
    "Absolutely, I will send the report tonight.",
    "Water boils at one hundred degrees Celsius.",
    "The quick brown fox jumps over the lazy dog.",
]
WHOLE = 10_000  # a first-piece length no sentence reaches: never cut


def speak(speaker: Speaker, sentence: str, first_chunk_chars: int) -> tuple[np.ndarray, float, int]:
    """16 kHz audio of the whole sentence, seconds to its first piece, and the number of pieces."""
    engine = speaker._engine("piper")
    engine.first_chunk_chars = first_chunk_chars
    voice = speaker.resolve("M1", "en")
    started = time.perf_counter()
    chunks, first = [], 0.0
    for chunk in speaker.synthesize(sentence, voice, "en", 1.05):
        first = first or time.perf_counter() - started
        chunks.append(chunk)
    audio = resample(np.concatenate([c.audio for c in chunks]), chunks[0].sample_rate, 16000)
    return audio, first, len(chunks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chars", type=int, help="first-piece budget to try (default: Piper's own)")
    args = parser.parse_args()
    settings = Settings(warmup=False)
    speaker, stt = Speaker(settings), WhisperStt(settings)
    cut_chars = args.chars or type(speaker._engine("piper")).first_chunk_chars
    speaker.warmup()
    stt.transcribe(np.zeros(16000, np.float32), "en")
    errors: dict[str, list[float]] = {"whole": [], "cut": []}
    firsts: dict[str, list[float]] = {"whole": [], "cut": []}
    for _ in range(args.rounds):
        for sentence in SENTENCES:
            for mode, chars in (("whole", WHOLE), ("cut", cut_chars)):
                audio, first, pieces = speak(speaker, sentence, chars)
                heard = stt.transcribe(audio, "en").text
                errors[mode].append(character_error_rate(sentence, heard))
                firsts[mode].append(first)
                print(f"  {mode:5} {pieces} pieces CER {errors[mode][-1]:.2f} | {sentence} -> {heard}")
    for mode in ("whole", "cut"):
        cer = np.array(errors[mode])
        print(
            f"M1 {mode}: CER mean {cer.mean():.3f}, median {np.median(cer):.3f}, "
            f"sentences with CER > 0.1: {int((cer > 0.1).sum())}/{cer.size}"
        )
        print(summary(f"M1 {mode}: first piece synthesised", firsts[mode]))


if __name__ == "__main__":
    main()
