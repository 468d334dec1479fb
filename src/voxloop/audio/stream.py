"""Compressed audio that arrives piece by piece, such as a browser's MediaRecorder stream, decoded
as it comes.

MediaRecorder's first chunk carries the WebM header and the later ones only continue its clusters,
so no chunk but the first can be decoded on its own: one FFmpeg demuxer (PyAV) reads the whole
stream from a pipe in its own thread, and ``feed`` hands it a chunk and returns the audio decoded
from it once the demuxer waits for more.
"""

from __future__ import annotations

import threading

import av

from voxloop.audio.pcm import AudioFormatError

CONTAINER_MAGIC = {b"\x1aE\xdf\xa3": "webm", b"OggS": "ogg"}  # streams MediaRecorder writes
# What the header (the first chunk's first bytes) must name: the EBML document type, or Opus.
HEADER_NAMES = {"webm": (b"webm", b"matroska"), "ogg": (b"OpusHead",)}
HEADER_SPAN = 128
DRAIN_TIMEOUT_S = 2.0  # a demuxer that takes longer over one chunk is stuck
MAX_PENDING_BYTES = 1 << 20  # compressed bytes not yet read: the client sends faster than we decode
# FFmpeg's Matroska reader skips what it cannot parse, looking for the next element, so a stream
# of garbage is never an error by itself: this much input without a single sample is one. (Opus
# from a browser is 4-8 kB a second: several seconds.)
MAX_BYTES_WITHOUT_AUDIO = 48 << 10


def stream_container(chunk: bytes) -> str | None:
    """The container a chunk starts, if it is the first chunk of a stream."""
    return next((name for magic, name in CONTAINER_MAGIC.items() if chunk.startswith(magic)), None)


class _Pipe:
    """A blocking, read-only file for FFmpeg: bytes written by ``feed``, read by the demuxer thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._data = bytearray()
        self._closed = False
        self._waiting = False  # the reader is blocked on an empty pipe

    def read(self, size: int = -1) -> bytes:
        with self._cond:
            while not self._data and not self._closed:
                self._waiting = True
                self._cond.notify_all()
                self._cond.wait()
            self._waiting = False
            size = len(self._data) if size < 0 else min(size, len(self._data))
            out = bytes(self._data[:size])
            del self._data[:size]
            return out

    def write(self, data: bytes) -> None:
        with self._cond:
            if len(self._data) + len(data) > MAX_PENDING_BYTES:
                raise AudioFormatError("audio arrives faster than it can be decoded")
            self._data.extend(data)
            self._waiting = False
            self._cond.notify_all()

    def wait_drained(self, finished: threading.Event, timeout: float) -> bool:
        """True once the reader has taken everything and waits for more (or has stopped)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (self._waiting and not self._data) or finished.is_set(), timeout
            )

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()


class StreamDecoder:
    """One compressed stream -> mono PCM16 at ``rate``. ``feed`` blocks: call it off the event loop."""

    def __init__(self, container: str, rate: int = 16000) -> None:
        """``container`` as ``stream_container`` named it for the stream's first chunk."""
        self.container, self.rate = container, rate
        self._checked = False  # the header names its document type: FFmpeg would read on regardless
        self._pipe = _Pipe()
        self._lock = threading.Lock()
        self._decoded = bytearray()
        self._error: AudioFormatError | None = None
        self._finished = threading.Event()
        self._fed = 0
        self._heard = False  # any audio decoded yet
        self._thread = threading.Thread(target=self._run, name=f"decode-{container}", daemon=True)
        self._thread.start()

    def feed(self, chunk: bytes) -> bytes:
        """Adds a chunk; returns the PCM16 decoded so far (all of this chunk's complete frames)."""
        if self._finished.is_set() and self._error is None:
            raise AudioFormatError(f"the {self.container} stream has ended; start a new one")
        if not self._checked:
            if not any(name in chunk[:HEADER_SPAN] for name in HEADER_NAMES[self.container]):
                self._fail(AudioFormatError(f"not a {self.container} stream: its header names no codec"))
                self.close()
            self._checked = True
        if self._error is not None:
            raise self._error
        self._fed += len(chunk)
        self._pipe.write(chunk)
        if not self._pipe.wait_drained(self._finished, DRAIN_TIMEOUT_S):
            raise AudioFormatError(f"the {self.container} stream cannot be decoded in time")
        with self._lock:
            if self._error is not None:
                raise self._error
            out = bytes(self._decoded)
            self._decoded.clear()
        self._heard = self._heard or bool(out)
        if not self._heard and self._fed > MAX_BYTES_WITHOUT_AUDIO:
            self._fail(AudioFormatError(f"no audio in {self._fed} bytes of a {self.container} stream"))
            self.close()
            raise self._error  # type: ignore[misc]
        return out

    def close(self) -> None:
        self._pipe.close()

    def _run(self) -> None:
        try:
            # A tiny probe: the header names the codec, so nothing needs to be read ahead.
            options = {"probesize": "32", "analyzeduration": "0"}
            with av.open(self._pipe, mode="r", format=self.container, options=options) as container:
                if not container.streams.audio:
                    raise AudioFormatError(f"the {self.container} stream holds no audio")
                resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
                for frame in container.decode(audio=0):
                    for out in resampler.resample(frame):
                        with self._lock:
                            self._decoded.extend(out.to_ndarray().tobytes())
        except AudioFormatError as exc:
            self._fail(exc)
        except (av.FFmpegError, ValueError, OSError) as exc:
            self._fail(AudioFormatError(f"cannot decode the {self.container} stream: {exc}"))
        finally:
            self._finished.set()
            self._pipe.notify()

    def _fail(self, error: AudioFormatError) -> None:
        with self._lock:
            self._error = error
