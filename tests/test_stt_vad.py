"""Speech-to-text and VAD backends on the real embedded models, with human and synthetic speech."""

from __future__ import annotations

import hashlib
import importlib
import time
from pathlib import Path

import numpy as np
import pytest

from tests.speech import espeak_16k, load_16k, pocketsphinx_samples, word_error_rate
from voxloop import models
from voxloop.backends.stt.whisper import WhisperStt
from voxloop.backends.vad.silero import SileroVad
from voxloop.config import Settings

RNG = np.random.default_rng(7)
WHITE_NOISE = (RNG.standard_normal(3 * 16000) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def stt(cache_dir: Path) -> WhisperStt:
    backend = WhisperStt(Settings(cache_dir=cache_dir))
    backend.warmup()
    return backend


@pytest.fixture(scope="module")
def spanish() -> np.ndarray:
    return espeak_16k("La biblioteca está cerrada los domingos. El tren sale de la estación.", "es")


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def frames(audio: np.ndarray, size: int = 512) -> list[np.ndarray]:
    return [audio[i : i + size] for i in range(0, len(audio) - size + 1, size)]


# --- speech-to-text ---


def test_human_speech_is_transcribed_accurately(stt: WhisperStt) -> None:
    # The librivox sentences: no numbers, whose spelling ("10" for "ten") WER would count.
    samples = [(path, text) for path, text in pocketsphinx_samples() if "librivox" in path.parts]
    assert len(samples) == 5
    errors = words = 0
    for path, reference in samples:
        transcript = stt.transcribe(load_16k(path), "en")
        assert transcript.engine == "faster-whisper:tiny.en"
        assert transcript.language == "en"
        errors += word_error_rate(reference, transcript.text) * len(reference.split())
        words += len(reference.split())
    assert errors / words < 0.2


def test_transcript_fields(stt: WhisperStt) -> None:
    path, _ = pocketsphinx_samples()[-1]
    audio = load_16k(path)
    transcript = stt.transcribe(audio, "en", timestamps=True)
    assert transcript.text == transcript.text.strip() and transcript.text
    assert transcript.duration == pytest.approx(len(audio) / 16000)
    assert transcript.segments and " ".join(s.text for s in transcript.segments) == transcript.text
    for segment in transcript.segments:
        assert 0 <= segment.start < segment.end <= transcript.duration


def test_spanish_with_explicit_language(stt: WhisperStt, spanish: np.ndarray) -> None:
    transcript = stt.transcribe(spanish, "es")
    assert transcript.engine == "faster-whisper:base"
    assert transcript.language == "es"
    words = transcript.text.lower()
    assert all(word in words for word in ("biblioteca", "cerrada", "domingos", "estación"))


def test_language_is_detected_when_not_given(stt: WhisperStt, spanish: np.ndarray) -> None:
    transcript = stt.transcribe(spanish, None)
    assert transcript.language == "es"
    assert "biblioteca" in transcript.text.lower()


def test_silence_and_noise_give_no_text(stt: WhisperStt) -> None:
    silence = np.zeros(2 * 16000, dtype=np.float32)
    room_tone = (RNG.standard_normal(2 * 16000) * 0.003).astype(np.float32)
    for audio in (silence, room_tone, WHITE_NOISE):
        assert stt.transcribe(audio, "en").text == ""
    assert stt.transcribe(WHITE_NOISE, None).text == ""


def test_keyterms_fix_spelling_without_inventing_them(stt: WhisperStt) -> None:
    speech = espeak_16k("Please schedule a meeting with Voxloop and Kubernetes tomorrow.")
    transcript = stt.transcribe(speech, "en", keyterms=["Voxloop", "Kubernetes"])
    assert "Voxloop" in transcript.text and "Kubernetes" in transcript.text
    assert stt.transcribe(WHITE_NOISE, "en", keyterms=["Voxloop", "Kubernetes"]).text == ""


def test_language_codes(stt: WhisperStt) -> None:
    audio = np.zeros(16000, dtype=np.float32)
    assert stt.transcribe(audio, "ES-mx").language == "es"
    with pytest.raises(ValueError, match="unsupported language 'xx'"):
        stt.transcribe(audio, "xx")


def test_tiny_input_returns_at_once_without_a_model(tmp_path: Path) -> None:
    # Neither model exists: a model run would raise ModelUnavailable.
    missing = Settings(stt_model_en=str(tmp_path / "none"), stt_model_multilingual=str(tmp_path / "none"))
    backend = WhisperStt(missing)
    start = time.perf_counter()
    for audio in (np.zeros(0, dtype=np.float32), WHITE_NOISE[:1500]):
        transcript = backend.transcribe(audio, None)
        assert transcript.text == "" and transcript.segments == []
    assert time.perf_counter() - start < 0.05
    with pytest.raises(models.ModelUnavailable, match="not a CTranslate2 Whisper directory"):
        backend.transcribe(WHITE_NOISE, "en")


# --- split model assembly ---


def test_whisper_base_is_assembled_and_verified(stt: WhisperStt, cache_dir: Path) -> None:
    directory = models.whisper_base_dir(cache_dir)  # assembled by the stt fixture; now a cache hit
    assert directory == cache_dir / "whisper-base-ct2"
    assert {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"} <= {
        p.name for p in directory.iterdir()
    }
    assert models.sha256_of(directory / "model.bin") == models.WHISPER_BASE.sha256
    assert not list(directory.glob("*.partial"))


def test_corrupted_part_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "fake_model_parts"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    parts = [b"first part " * 1000, b"second part " * 1000]
    for i, data in enumerate(parts):
        (package / "data" / f"part{i}").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    split = models.SplitModel(
        name="fake",
        filename="model.bin",
        parts=(("fake_model_parts", "data/part0"), ("fake_model_parts", "data/part1")),
        sha256=hashlib.sha256(b"".join(parts)).hexdigest(),
    )
    assert split.assemble(tmp_path / "good").read_bytes() == b"".join(parts)

    (package / "data" / "part1").write_bytes(parts[1][:-1] + b"!")
    with pytest.raises(models.ModelUnavailable, match="does not match pinned"):
        split.assemble(tmp_path / "bad")
    assert list((tmp_path / "bad" / "fake").iterdir()) == []


# --- voice activity detection ---


def test_vad_separates_speech_from_silence_and_noise(vad: SileroVad) -> None:
    assert (vad.sample_rate, vad.frame_samples) == (16000, 512)
    path, _ = pocketsphinx_samples()[-1]
    stream = vad.new_stream()
    speech = [stream.probability(f) for f in frames(load_16k(path))]
    assert max(speech) > 0.95 and np.mean(np.array(speech) > 0.5) > 0.6

    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(3 * 16000) / 16000)).astype(np.float32)
    for audio in (np.zeros(3 * 16000, dtype=np.float32), WHITE_NOISE, tone):
        stream = vad.new_stream()
        assert max(stream.probability(f) for f in frames(audio)) < 0.2


def test_vad_streams_keep_their_own_state(vad: SileroVad) -> None:
    speech = frames(espeak_16k("Hello there, this is a test of voice activity."))
    noise = frames(WHITE_NOISE)[: len(speech)]
    alone = vad.new_stream()
    expected_speech = [alone.probability(f) for f in speech]
    alone.reset()
    expected_noise = [alone.probability(f) for f in noise]
    alone.close()

    first, second = vad.new_stream(), vad.new_stream()
    got_speech, got_noise = [], []
    for s, n in zip(speech, noise, strict=True):
        got_speech.append(first.probability(s))
        got_noise.append(second.probability(n))
    assert got_speech == expected_speech
    assert got_noise == expected_noise

    first.close()  # its engine goes back to the pool; the next stream must start clean
    reused = vad.new_stream()
    assert [reused.probability(f) for f in noise] == expected_noise
    with pytest.raises(RuntimeError, match="closed"):
        first.probability(noise[0])


def test_vad_rejects_wrong_frame_size(vad: SileroVad) -> None:
    with pytest.raises(ValueError, match="512 samples"):
        vad.new_stream().probability(np.zeros(480, dtype=np.float32))
