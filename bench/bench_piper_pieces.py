"""Piper's early first audio: what streaming (and cutting) the first piece buys and costs.

Each sentence is spoken by M1 (Piper joe) three ways per round: one-shot (the whole sentence
decoded at once), cut (a first piece of a few words, decoded at once: the server before
streaming) and streamed (the server now: the first piece decoded span by span). All are
transcribed back by voxloop's English STT; the character error rates are compared, with the time
to the first audio on the synthesis thread. Then streamed and one-shot decoding of the same latent
frames are compared sample by sample (SNR) and spectrally (log-spectral distance).

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
from voxloop.backends.tts.piper_tts import DECODER_CONTEXT, FLOW_CONTEXT, PiperEngine
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
CUT_CHARS = 16  # the first-piece budget before streaming
MODES = ("one-shot", "cut", "streamed")


def log_spectral_distance(reference: np.ndarray, other: np.ndarray, size: int = 512) -> float:
    """Mean over 512-sample frames of the RMS difference of their log power spectra, in dB."""

    def spectrum(audio: np.ndarray) -> np.ndarray:
        frames = np.lib.stride_tricks.sliding_window_view(audio, size)[:: size // 2]
        return 10 * np.log10(np.abs(np.fft.rfft(frames * np.hanning(size))) ** 2 + 1e-10)

    difference = spectrum(reference) - spectrum(other)
    return float(np.mean(np.sqrt(np.mean(difference**2, axis=1))))


def streamed_against_one_shot(engine: PiperEngine) -> None:
    """The same latent frames decoded at once and span by span."""
    snrs, distances = [], []
    for sentence in SENTENCES:
        latents = engine.latents(sentence, 1.05)
        assert latents is not None
        whole = engine.decode(latents)
        spans = np.concatenate([span.audio for span in engine.spans(latents, sentence)])
        snrs.append(10 * np.log10(np.sum(whole**2) / max(float(np.sum((spans - whole) ** 2)), 1e-20)))
        distances.append(log_spectral_distance(whole, spans))
    print(
        f"streamed vs one-shot, same prior frames (context: decoder {DECODER_CONTEXT}, flow "
        f"{FLOW_CONTEXT} frames): SNR median "
        f"{np.median(snrs):.1f} dB, min {min(snrs):.1f} dB; log-spectral distance median "
        f"{np.median(distances):.3f} dB, max {max(distances):.3f} dB"
    )


def speak(speaker: Speaker, sentence: str, mode: str, streamed_chars: int) -> tuple[np.ndarray, float, int]:
    """16 kHz audio of the whole sentence, seconds to its first audio, and the number of chunks."""
    engine = speaker._engine("piper")
    engine.first_chunk_chars = {"one-shot": WHOLE, "cut": CUT_CHARS}.get(mode, streamed_chars)
    engine.streamed = mode == "streamed"
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
    parser.add_argument("--chars", type=int, help="streamed first-piece budget (default: Piper's own)")
    args = parser.parse_args()
    streamed_chars = args.chars or PiperEngine.first_chunk_chars
    settings = Settings(warmup=False)
    speaker, stt = Speaker(settings), WhisperStt(settings)
    speaker.warmup()
    stt.transcribe(np.zeros(16000, np.float32), "en")
    errors: dict[str, list[float]] = {mode: [] for mode in MODES}
    firsts: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for sentence in SENTENCES:
            for mode in MODES:
                audio, first, chunks = speak(speaker, sentence, mode, streamed_chars)
                heard = stt.transcribe(audio, "en").text
                errors[mode].append(character_error_rate(sentence, heard))
                firsts[mode].append(first)
                print(f"  {mode:8} {chunks} chunks CER {errors[mode][-1]:.2f} | {sentence} -> {heard}")
    for mode in MODES:
        cer = np.array(errors[mode])
        print(
            f"M1 {mode}: CER mean {cer.mean():.3f}, median {np.median(cer):.3f}, "
            f"sentences with CER > 0.1: {int((cer > 0.1).sum())}/{cer.size}"
        )
        print(summary(f"M1 {mode}: first audio synthesised", firsts[mode]))
    streamed_against_one_shot(speaker._engine("piper"))


if __name__ == "__main__":
    main()
