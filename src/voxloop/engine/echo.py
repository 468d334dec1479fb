"""Echo guard: removes the bot's own voice from the microphone stream before VAD and STT.

The server knows exactly what it played and when. Each reply sample is written onto the
microphone's sample clock at the position where it should come back; the unknown extra delay
(client buffering, the room) and the loudness of the echo are found by cross-correlating the
microphone with that reference, and the scaled, delayed reference is subtracted. What remains is
the user (barge-in still works while the bot talks) plus whatever the estimate misses.
"""

from __future__ import annotations

import numpy as np

RATE = 16000
MAX_DELAY = int(0.8 * RATE)  # client playout buffer plus the acoustic path
WINDOW = 4096  # samples correlated per delay estimate (~0.26 s)
HISTORY = 1 << 16  # ring size (~4 s): covers window plus the largest delay
ESTIMATE_EVERY = 512  # every VAD frame: client playback can shift by a frame at any time
MIN_CORRELATION = 0.6  # normalised correlation needed to trust a delay


class EchoGuard:
    def __init__(self) -> None:
        self._ref = np.zeros(HISTORY, dtype=np.float32)  # reference, indexed by mic position % HISTORY
        self._mic = np.zeros(HISTORY, dtype=np.float32)
        self._ref_until = 0  # mic position after the last reference sample written
        self._ref_started = 0  # mic position where the current stretch of bot audio began
        self._position = 0  # mic samples received
        self._since_estimate = 0
        self.delay: int | None = None  # extra delay found, in samples
        self.no_echo_path = False  # set once bot audio played without any echo coming back
        self.gain = 0.0

    def add_reference(self, samples: np.ndarray, starts_in_s: float, contiguous: bool) -> None:
        """Bot audio (16 kHz) the client starts playing ``starts_in_s`` from now.

        ``contiguous`` pieces follow the previous one without a gap in the client's playback, so
        they are laid end to end: sample-exact alignment is what makes subtraction work, and
        per-piece wall-clock jitter would ruin it.
        """
        if contiguous and self._ref_until > self._position:
            at_position = self._ref_until
        else:
            at_position = self._position + round(starts_in_s * RATE)
            if not self.active():
                self._ref_started = at_position
        # The ring holds the past window and delays plus ~1.4 s ahead; callers write as they send.
        room = self._position + HISTORY - MAX_DELAY - 2 * WINDOW - at_position
        samples = samples[: max(room, 0)]
        index = (at_position + np.arange(len(samples))) % HISTORY
        self._ref[index] = samples
        self._ref_until = max(self._ref_until, at_position + len(samples))

    def skip(self, samples: int) -> None:
        """The client sent nothing for a while (it suppresses silence): its clock moved on anyway."""
        if samples >= HISTORY:
            self._ref[:] = 0.0
        elif samples > 0:
            self._ref[(self._position - MAX_DELAY - WINDOW + np.arange(samples)) % HISTORY] = 0.0
        self._mic[(self._position + np.arange(min(max(samples, 0), HISTORY))) % HISTORY] = 0.0
        self._position += max(samples, 0)

    def active(self) -> bool:
        """Whether bot audio may still be coming back through the microphone."""
        return self._ref_until > 0 and self._position < self._ref_until + MAX_DELAY

    def uncertain(self) -> bool:
        """Bot audio may be arriving but its delay is not known yet (the first moments of the
        first reply). Once the search window has passed without a match there is no echo path
        (headphones), and the microphone is trusted again."""
        if not self.active() or self.delay is not None or self.no_echo_path:
            return False
        if self._position < self._ref_started + MAX_DELAY + WINDOW:
            return True
        self.no_echo_path = True  # a whole search window of bot audio and no echo: headphones
        return False

    def process(self, mic: np.ndarray) -> np.ndarray:
        """The microphone samples with the estimated echo removed."""
        start = self._position
        index = (start + np.arange(len(mic))) % HISTORY
        self._mic[index] = mic
        self._position += len(mic)
        # Clear the reference that is now older than any delay we search, so the ring can be reused.
        stale = (start - MAX_DELAY - WINDOW + np.arange(len(mic))) % HISTORY
        if not self.active():
            self._ref[stale] = 0.0
            return mic  # the last delay and gain are kept: the echo path rarely changes
        self._since_estimate += len(mic)
        if self._since_estimate >= ESTIMATE_EVERY or self.delay is None:
            self._since_estimate = 0
            self._estimate()
        self._ref[stale] = 0.0
        if self.uncertain():
            return np.zeros_like(mic)  # likely our own echo: do not let it start a turn
        if self.delay is None or self.gain <= 0.0:
            return mic
        echo = self._ref[(start - self.delay + np.arange(len(mic))) % HISTORY]
        residual = (mic - self.gain * echo).astype(np.float32)
        # A wrong estimate would add the bot's voice instead of removing it: subtract only
        # where it takes energy away.
        return residual if float(np.dot(residual, residual)) < float(np.dot(mic, mic)) else mic

    def _window(self, ring: np.ndarray, end: int, length: int) -> np.ndarray:
        return ring[(end - length + np.arange(length)) % HISTORY]

    def _estimate(self) -> None:
        end = self._position
        mic = self._window(self._mic, end, WINDOW)
        ref = self._window(self._ref, end, WINDOW + MAX_DELAY)
        if float(np.dot(ref, ref)) < 1e-6 or float(np.dot(mic, mic)) < 1e-8:
            return
        size = 1 << int(np.ceil(np.log2(len(ref) + WINDOW)))
        # correlation[d] = sum_k mic[k] * ref[MAX_DELAY - d + k], for delays d in [0, MAX_DELAY]
        spectrum = np.fft.rfft(ref, size) * np.conj(np.fft.rfft(mic, size))
        correlation = np.fft.irfft(spectrum, size)[: MAX_DELAY + 1][::-1]
        cumulative = np.concatenate([[0.0], np.cumsum(ref.astype(np.float64) ** 2)])
        energy = (cumulative[WINDOW:] - cumulative[:-WINDOW])[::-1]  # reference energy under each delay
        normalised = correlation / np.sqrt(np.maximum(energy * float(np.dot(mic, mic)), 1e-12))
        normalised[energy < 1e-3 * energy.max()] = 0.0  # near-silent reference: ratio is only noise
        delay = int(np.argmax(normalised))
        if normalised[delay] < MIN_CORRELATION:
            return
        aligned = self._window(self._ref, end - delay, WINDOW)
        gain = float(np.dot(mic, aligned) / max(float(np.dot(aligned, aligned)), 1e-9))
        if 0.01 < gain < 4.0:  # otherwise a chance match, not an echo: keep the last estimate
            self.delay, self.gain = delay, gain
