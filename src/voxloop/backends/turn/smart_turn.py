"""Smart Turn v3.2: whether the user has finished their turn, from the sound of their speech.

A Whisper-tiny encoder with a classifier (BSD-2-Clause, pipecat-ai), 8.7 MB of ONNX shipped in
the ``pipecat-ai`` wheel, which is installed ``--no-deps`` for that file alone: pipecat itself is
never imported. It reads the last 8 s of 16 kHz audio as Whisper's 80-bin log-mel features,
computed here with numpy, and answers the probability that the turn is complete (~30 ms on one
thread). Runs on its own single worker, off the event loop and out of the STT's lane.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np

from voxloop.backends.scheduler import name_thread

RATE = 16000
SECONDS = 8
N_FFT, HOP, MELS = 400, 160, 80
MODEL_IN_WHEEL = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"

WORKER = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="vx-turn", initializer=name_thread, initargs=("vx-turn",)
)


def model_path() -> Path | None:
    spec = importlib.util.find_spec("pipecat")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_IN_WHEEL
    return path if path.is_file() else None


def _slaney_mel(hertz: np.ndarray) -> np.ndarray:
    """Hz -> mel on the Slaney scale (linear below 1 kHz, logarithmic above), as Whisper uses."""
    linear = 3.0 * hertz / 200.0
    return np.where(
        hertz >= 1000.0, 15.0 + np.log(np.maximum(hertz, 1e-9) / 1000.0) * 27.0 / np.log(6.4), linear
    )


def _slaney_hertz(mels: np.ndarray) -> np.ndarray:
    return np.where(mels >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels - 15.0)), 200.0 * mels / 3.0)


@cache
def _mel_filters() -> np.ndarray:
    """Whisper's triangular, area-normalised filterbank: (N_FFT // 2 + 1, MELS)."""
    edges = _slaney_hertz(np.linspace(_slaney_mel(np.array(0.0)), _slaney_mel(np.array(RATE / 2)), MELS + 2))
    bins = np.linspace(0, RATE // 2, N_FFT // 2 + 1)
    slopes = edges[None, :] - bins[:, None]
    widths = np.diff(edges)
    rising, falling = -slopes[:, :-2] / widths[:-1], slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges[2 : MELS + 2] - edges[:MELS]))[None, :]


def log_mel(audio: np.ndarray) -> np.ndarray:
    """Whisper's features for the last 8 s of ``audio`` (zero-padded in front): (80, 800) float32."""
    samples = RATE * SECONDS
    audio = np.asarray(audio, dtype=np.float32)[-samples:]
    audio = np.pad(audio, (samples - len(audio), 0))
    audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)  # the extractor's do_normalize
    padded = np.pad(audio.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    spectrum = np.log10(np.maximum(power @ _mel_filters(), 1e-10)).T[:, :-1]
    spectrum = np.maximum(spectrum, spectrum.max() - 8.0)
    return ((spectrum + 4.0) / 4.0).astype(np.float32)


class SmartTurn:
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), sess_options=options)

    def complete(self, audio: np.ndarray) -> float:
        """The probability that the speech in ``audio`` (16 kHz) is a finished turn."""
        features = log_mel(audio)[None]
        return float(np.asarray(self._session.run(None, {"input_features": features})[0]).reshape(-1)[0])


@cache
def shared() -> SmartTurn | None:
    """One model for every session (an ONNX session may be run from several threads), or None
    when the wheel is not installed: turns then end on silence alone."""
    path = model_path()
    return SmartTurn(path) if path is not None else None
