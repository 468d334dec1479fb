"""RNNoise noise suppression (Xiph, BSD-3-Clause) through ctypes on the ``pyrnnoise`` wheel's
librnnoise.so (its weights are compiled in). RNNoise works on 10 ms frames at 48 kHz; the
16 kHz stream is resampled up and back down around it."""

from __future__ import annotations

import ctypes
import importlib.util
import weakref
from functools import cache
from pathlib import Path

import numpy as np

from voxloop.audio.pcm import StreamResampler

RATE = 48000
FRAME = 480
_Floats = np.ctypeslib.ndpointer(dtype=np.float32, flags="C_CONTIGUOUS")


@cache
def library() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("pyrnnoise")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "librnnoise.so"
    if not path.is_file():
        return None
    lib = ctypes.CDLL(str(path))
    lib.rnnoise_create.restype = ctypes.c_void_p
    lib.rnnoise_create.argtypes = [ctypes.c_void_p]
    lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
    lib.rnnoise_process_frame.restype = ctypes.c_float
    lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, _Floats, _Floats]
    return lib


class NoiseSuppressor:
    """A stream's denoiser: 16 kHz float in, 16 kHz float out (~10 ms later)."""

    def __init__(self, rate: int = 16000) -> None:
        lib = library()
        if lib is None:
            raise RuntimeError("librnnoise is not available (install pyrnnoise)")
        self._lib, self._state = lib, lib.rnnoise_create(None)
        weakref.finalize(self, lib.rnnoise_destroy, self._state)
        self._up, self._down = StreamResampler(rate, RATE), StreamResampler(RATE, rate)
        self._pending = np.zeros(0, dtype=np.float32)
        self._out = np.zeros(FRAME, dtype=np.float32)

    def process(self, samples: np.ndarray) -> np.ndarray:
        self._pending = np.concatenate([self._pending, self._up.process(samples)])
        cleaned = []
        while len(self._pending) >= FRAME:
            frame = np.ascontiguousarray(self._pending[:FRAME] * 32768.0, dtype=np.float32)
            self._pending = self._pending[FRAME:]
            self._lib.rnnoise_process_frame(self._state, self._out, frame)
            cleaned.append(self._out / 32768.0)
        return self._down.process(np.concatenate(cleaned) if cleaned else np.zeros(0, np.float32))
