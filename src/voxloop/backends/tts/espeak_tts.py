"""eSpeak NG through libespeak-ng: formant voices for many languages, and IPA phonemes for Piper.

The library comes from the system (Debian package ``espeak-ng``, GPL-3.0) and is loaded at run
time with ctypes; nothing of it ships with voxloop. Calling it in-process instead of running the
``espeak-ng`` program saves ~10 ms a call, which matters for the time to first audio. The library
keeps one global state (current voice, rate, callback), so every call holds ``_LOCK``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import threading

import numpy as np

from voxloop.models import ModelUnavailable

# Constants of speak_lib.h (espeak-ng 1.51).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return errors instead of calling exit()
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02
_RATE = 1

DEFAULT_WPM = 175  # espeak-ng's own default rate: speed 1.0
MIN_WPM, MAX_WPM = 80, 450

# Marks like "(fr)" where espeak switches language inside a word list; Piper drops them too.
_LANGUAGE_SWITCH = re.compile(r"\([a-z-]+\)")

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_LOCK = threading.Lock()


class _Library:
    """The loaded libespeak-ng, initialised once for synchronous synthesis into a callback."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise ModelUnavailable(f"libespeak-ng not found ({exc}): install the espeak-ng package") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise ModelUnavailable("libespeak-ng failed to initialise (is espeak-ng-data installed?)")
        self._lib = lib
        self._voice = ""
        self._samples: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # kept referenced: C holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes._Pointer, count: int, _events: int | None) -> int:
        if count > 0:
            self._samples.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0 = go on

    def _set_voice(self, name: str) -> None:
        if name != self._voice:  # switching reloads the language's dictionary: only when it changes
            if self._lib.espeak_SetVoiceByName(name.encode()) != 0:
                raise ModelUnavailable(f"espeak-ng has no voice {name!r} (is espeak-ng-data complete?)")
            self._voice = name

    def phonemize(self, text: str, voice: str) -> str:
        """IPA phonemes of ``text``; espeak returns one clause per call, joined here with spaces."""
        data = ctypes.create_string_buffer(text.encode())
        pointer = ctypes.c_void_p(ctypes.addressof(data))
        clauses = []
        with _LOCK:
            self._set_voice(voice)
            while pointer.value:
                clauses.append(
                    self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, _PHONEMES_IPA)
                )
        joined = " ".join(clause.decode() for clause in clauses)
        return _LANGUAGE_SWITCH.sub("", joined).strip()

    def speak(self, text: str, voice: str, speed: float) -> np.ndarray:
        data = text.encode()
        wpm = min(MAX_WPM, max(MIN_WPM, round(DEFAULT_WPM * speed)))
        with _LOCK:
            self._set_voice(voice)
            self._lib.espeak_SetParameter(_RATE, wpm, 0)
            self._samples = []
            status = self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
            samples, self._samples = self._samples, []
        if status != 0:
            raise RuntimeError(f"espeak-ng synthesis failed with status {status}")
        if not samples:
            return np.zeros(0, np.float32)
        return np.concatenate(samples).astype(np.float32) / 32768.0


_library: _Library | None = None


def library() -> _Library:
    """The process-wide libespeak-ng, loaded on first use."""
    global _library
    with _LOCK:
        if _library is None:
            _library = _Library()
        return _library


class EspeakEngine:
    """One formant voice: an espeak-ng voice name, with a variant such as ``es+f3``."""

    # espeak renders a sentence in a few ms: no need to cut the first one for latency.
    first_chunk_chars = 200

    def __init__(self, voice: str) -> None:
        self.voice = voice

    @property
    def sample_rate(self) -> int:
        return library().sample_rate

    def load(self) -> None:
        library()

    def speak(self, text: str, speed: float) -> np.ndarray:
        """Mono float32 audio; ``speed`` scales espeak's 175 words per minute (80-450)."""
        return library().speak(text, self.voice, speed)
