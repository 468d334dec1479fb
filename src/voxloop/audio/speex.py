"""Speex's adaptive echo canceller (MDF) and its residual-echo suppressor, through ctypes.

libspeexdsp comes from the ``speexdsp-ns`` wheel, which vendors a build exporting the whole
``speex_echo_*`` / ``speex_preprocess_*`` API (its own Python module wraps only the noise
suppressor), or else from the system (Debian's libspeexdsp1 is the same code).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import weakref
from functools import cache
from pathlib import Path

import numpy as np

# speex_echo.h / speex_preprocess.h request codes
ECHO_SET_SAMPLING_RATE = 24
PREPROCESS_SET_DENOISE = 0
PREPROCESS_SET_AGC = 2
PREPROCESS_SET_DEREVERB = 8
PREPROCESS_SET_ECHO_SUPPRESS = 20
PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE = 22
PREPROCESS_SET_ECHO_STATE = 24

_Int16Frame = np.ctypeslib.ndpointer(dtype=np.int16, flags="C_CONTIGUOUS")


def _library_paths() -> list[str]:
    paths = []
    spec = importlib.util.find_spec("speexdsp_ns")
    if spec is not None and spec.origin is not None:
        vendored = Path(spec.origin).parent.parent / "speexdsp_ns.libs"
        paths += sorted(str(path) for path in vendored.glob("libspeexdsp*.so*"))
    system = ctypes.util.find_library("speexdsp")
    return paths + ([system] if system else [])


@cache
def library() -> ctypes.CDLL | None:
    """libspeexdsp with its echo API, or None when neither the wheel nor the system has it."""
    for path in _library_paths():
        try:
            lib = ctypes.CDLL(path)
            lib.speex_echo_state_init  # noqa: B018 - the symbol must be exported
        except (OSError, AttributeError):
            continue
        lib.speex_echo_state_init.restype = ctypes.c_void_p
        lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
        lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p, _Int16Frame, _Int16Frame, _Int16Frame]
        lib.speex_echo_state_reset.argtypes = [ctypes.c_void_p]
        lib.speex_preprocess_state_init.restype = ctypes.c_void_p
        lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_preprocess_state_destroy.argtypes = [ctypes.c_void_p]
        lib.speex_preprocess_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.speex_preprocess_run.argtypes = [ctypes.c_void_p, _Int16Frame]
        return lib
    return None


def _destroy(lib: ctypes.CDLL, echo: int, preprocess: int) -> None:
    lib.speex_preprocess_state_destroy(preprocess)
    lib.speex_echo_state_destroy(echo)


class SpeexEchoCanceller:
    """One microphone's canceller: ``process`` takes a frame of microphone and of far-end (what was
    played, aligned to the microphone) and returns the microphone with the echo removed."""

    def __init__(self, frame: int, filter_length: int, rate: int, residual_suppress_db: int = -40) -> None:
        lib = library()
        if lib is None:
            raise RuntimeError("libspeexdsp is not available (install speexdsp-ns or libspeexdsp1)")
        self.frame = frame
        self._lib = lib
        self._echo = lib.speex_echo_state_init(frame, filter_length)
        self._preprocess = lib.speex_preprocess_state_init(frame, rate)
        weakref.finalize(self, _destroy, lib, self._echo, self._preprocess)
        self._set(lib.speex_echo_ctl, self._echo, ECHO_SET_SAMPLING_RATE, rate)
        # The preprocessor only suppresses the echo the filter leaves: no denoise, no AGC, so the
        # VAD and STT see the user's voice as the client sent it.
        for request, value in (
            (PREPROCESS_SET_DENOISE, 0),
            (PREPROCESS_SET_AGC, 0),
            (PREPROCESS_SET_DEREVERB, 0),
            (PREPROCESS_SET_ECHO_SUPPRESS, residual_suppress_db),
            (PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE, residual_suppress_db // 2),
        ):
            self._set(lib.speex_preprocess_ctl, self._preprocess, request, value)
        lib.speex_preprocess_ctl(self._preprocess, PREPROCESS_SET_ECHO_STATE, ctypes.c_void_p(self._echo))
        self._out = np.zeros(frame, dtype=np.int16)

    @staticmethod
    def _set(ctl: ctypes._CFuncPtr, state: int, request: int, value: int) -> None:
        ctl(state, request, ctypes.byref(ctypes.c_int32(value)))

    def process(self, mic: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Float frames in [-1, 1] of ``frame`` samples -> the cleaned microphone frame."""
        to16 = lambda x: np.ascontiguousarray(np.clip(x * 32768.0, -32768, 32767).astype(np.int16))  # noqa: E731
        self._lib.speex_echo_cancellation(self._echo, to16(mic), to16(far), self._out)
        self._lib.speex_preprocess_run(self._preprocess, self._out)
        return self._out.astype(np.float32) / 32768.0

    def reset(self) -> None:
        self._lib.speex_echo_state_reset(self._echo)
