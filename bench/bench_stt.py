"""Whisper accuracy and latency on human speech (pocketsphinx-testdata), per model.

Run: .venv/bin/python bench/bench_stt.py [--repeats 3]
Settings come from VOXLOOP_* variables as for the server (models, threads, beam size).
WER keeps numbers as written, so "10 of clubs" for "ten of clubs" counts one error: read the
librivox line for accuracy on words alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.stats import summary
from tests.speech import load_16k, normalize_words, pocketsphinx_samples, word_error_rate
from voxloop import models
from voxloop.backends.stt.whisper import WhisperStt
from voxloop.config import Settings


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def bench(stt: WhisperStt, language: str | None, samples: list, repeats: int) -> None:
    before, started = rss_mb(), time.perf_counter()
    stt.transcribe(samples[0][1], language)  # loads the model on first use
    print(f"  load + first run {time.perf_counter() - started:.2f}s, RSS +{rss_mb() - before:.0f} MB")
    latencies, short_latencies, errors = [], [], {"cards": [0.0, 0], "librivox": [0.0, 0]}
    for path, audio, reference in samples:
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            transcript = stt.transcribe(audio, language)
            runs.append(time.perf_counter() - started)
        latencies += runs
        if transcript.duration <= 5:
            short_latencies += runs
        wer = word_error_rate(reference, transcript.text)
        words = len(normalize_words(reference))
        errors[path.parent.name][0] += wer * words
        errors[path.parent.name][1] += words
        print(
            f"  {path.stem[-16:]:>16} {transcript.duration:4.1f}s WER {wer:6.1%} "
            f"{sorted(runs)[len(runs) // 2] * 1000:5.0f}ms [{transcript.language}] {transcript.text}"
        )
    total = [sum(e for e, _ in errors.values()), sum(n for _, n in errors.values())]
    for name, (wrong, words) in [*errors.items(), ("overall", total)]:
        print(f"  WER {name}: {wrong / words:.1%} ({wrong:.0f} errors / {words} words)")
    print("  " + summary("latency, all", latencies))
    print("  " + summary("latency, utterances <= 5 s", short_latencies))
    print(f"  process RSS now {rss_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per recording")
    args = parser.parse_args()
    samples = [(path, load_16k(path), text) for path, text in pocketsphinx_samples()]
    settings = Settings()
    # English always goes to the English model: make base that model to measure it on "en".
    base_as_english = settings.model_copy(
        update={"stt_model_en": str(models.whisper_base_dir(settings.cache_dir))}
    )
    configs = [
        ("tiny.en, language=en", WhisperStt(settings), "en"),
        ("base, language=en", WhisperStt(base_as_english), "en"),
        ("base, language detected", WhisperStt(settings), None),
    ]
    print(f"{len(samples)} human recordings, {args.repeats} timed runs each, {settings.stt_threads} threads")
    for title, stt, language in configs:
        print(f"\n{title}:")
        bench(stt, language, samples, args.repeats)


if __name__ == "__main__":
    main()
