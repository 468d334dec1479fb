"""Speech-to-text with faster-whisper (CTranslate2, int8 on CPU).

English goes to an English-only model (tiny.en by default: the fastest, and on English better
than a multilingual model of its size); other languages and detection go to a multilingual one
(base by default). Each model loads on first use, once per process, and is shared by every
``WhisperStt``. Models are always given as local directories: a bare name would make faster-whisper
look for it on a model hub.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import _LANGUAGE_CODES

from voxloop import models
from voxloop.backends.scheduler import threads_named
from voxloop.backends.stt.base import Segment, Transcript
from voxloop.config import Settings

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE // 10  # under 0.1 s there is no word to find
SILENT_PEAK = 1e-4  # -80 dBFS, a few PCM16 steps: digital silence, not worth a model run
NO_SPEECH = 0.6  # faster-whisper's default no_speech_threshold

_loaded: dict[tuple[Path, int], WhisperModel] = {}
_load_lock = threading.Lock()  # also serialises assembly of split models into the cache


class _LazyModel:
    """One configured model: an embedded name or a CTranslate2 directory, loaded on first use."""

    def __init__(self, name: str, embedded_name: str, embedded_dir: Callable[[], Path], threads: int) -> None:
        self.name = name
        self.engine = f"faster-whisper:{name if name == embedded_name else Path(name).name}"
        self._locate = embedded_dir if name == embedded_name else lambda: Path(name)
        self._threads = threads
        self._model: WhisperModel | None = None

    def get(self) -> WhisperModel:
        if self._model is None:
            with _load_lock:
                directory = self._locate().resolve()
                if not (directory / "model.bin").is_file():
                    raise models.ModelUnavailable(
                        f"STT model {self.name!r}: {directory} is not a CTranslate2 Whisper directory"
                    )
                key = (directory, self._threads)
                if key not in _loaded:
                    with threads_named("vx-stt"):  # its thread pools: CPU per model in /proc
                        _loaded[key] = WhisperModel(
                            str(directory),
                            device="cpu",
                            compute_type="int8",
                            cpu_threads=self._threads,
                            local_files_only=True,
                        )
                self._model = _loaded[key]
        return self._model


# Languages Whisper was not trained on, heard as the nearest one it was: Tigrinya shares the Ge'ez
# script (and many words) with Amharic; Oromo shares Somali's Latin spelling conventions.
NEAREST_LANGUAGE = {"ti": "am", "om": "so"}


def normalize_language(language: str) -> str:
    """'es', 'ES' or 'es-MX' -> 'es'; ValueError for a language Whisper does not know."""
    code = language.strip().lower().replace("_", "-").split("-")[0]
    code = NEAREST_LANGUAGE.get(code, code)
    if code not in _LANGUAGE_CODES:
        raise ValueError(
            f"unsupported language {language!r} for speech-to-text; "
            f"use an ISO 639-1 code Whisper knows: {', '.join(sorted(_LANGUAGE_CODES))}"
        )
    return code


class WhisperStt:
    sample_rate = SAMPLE_RATE

    def __init__(self, settings: Settings) -> None:
        threads = settings.stt_threads
        self._beam_size = settings.stt_beam_size
        self._english = _LazyModel(settings.stt_model_en, "tiny.en", models.whisper_tiny_en_dir, threads)
        self._multilingual = _LazyModel(
            settings.stt_model_multilingual,
            "base",
            lambda: models.whisper_base_dir(settings.cache_dir),
            threads,
        )

    def warmup(self) -> None:
        """Load both models and run each once, so the first user does not wait for it."""
        noise = np.random.default_rng(0).normal(0.0, 0.01, SAMPLE_RATE).astype(np.float32)
        self._run(self._english, noise, "en", None, False)
        self._run(self._multilingual, noise, "es", None, False)

    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None = None,
        *,
        keyterms: Sequence[str] | None = None,
        timestamps: bool = False,
    ) -> Transcript:
        """Transcribe mono float32 16 kHz audio; blocking, safe from several threads.

        ``language`` None detects it (multilingual model; costs one more encoder pass). ``keyterms``
        (names, jargon) bias spelling towards them. ``timestamps`` makes Whisper cut the text into
        timed phrases; without it there is one segment per 30 s window, which decodes faster.
        Re-running on a growing buffer gives streaming partials.
        """
        code = normalize_language(language) if language is not None else None
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
        duration = audio.size / SAMPLE_RATE
        model = self._english if code == "en" else self._multilingual
        if audio.size < MIN_SAMPLES or float(np.max(np.abs(audio))) < SILENT_PEAK:
            return Transcript(text="", language=code or "", duration=duration, engine=model.engine)
        return self._run(model, audio, code, keyterms, timestamps)

    def _run(
        self,
        model: _LazyModel,
        audio: np.ndarray,
        language: str | None,
        keyterms: Sequence[str] | None,
        timestamps: bool,
    ) -> Transcript:
        duration = audio.size / SAMPLE_RATE
        pieces, info = model.get().transcribe(
            audio,
            language=language,
            beam_size=self._beam_size,
            # One greedy pass: sampling fallbacks double the latency on hard audio and make
            # the output random.
            temperature=0.0,
            vad_filter=False,  # the server's own VAD already cut the utterance
            condition_on_previous_text=False,
            without_timestamps=not timestamps,
            hotwords=", ".join(keyterms) if keyterms else None,
        )
        kept = [
            piece
            for piece in pieces
            # A prompt of keyterms lets Whisper "hear" one in noise with a confident log-prob,
            # which would pass faster-whisper's own no-speech test; trust no_speech_prob alone.
            if piece.text.strip() and not (keyterms and piece.no_speech_prob > NO_SPEECH)
        ]
        segments = [
            Segment(round(piece.start, 3), round(min(piece.end, duration), 3), piece.text.strip())
            for piece in kept
        ]
        # The mean token probability of the words, discounted by the chance there was no speech.
        confidence = (
            float(np.mean([np.exp(piece.avg_logprob) * (1.0 - piece.no_speech_prob) for piece in kept]))
            if kept
            else 0.0
        )
        return Transcript(
            text=" ".join(segment.text for segment in segments),
            language=info.language,
            duration=duration,
            segments=segments,
            engine=model.engine,
            confidence=round(confidence, 3),
        )
