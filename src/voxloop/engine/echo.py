"""Echo guard: removes the bot's own voice from the microphone stream before VAD and STT.

The server knows exactly what it played and when. Each reply sample is written onto the
microphone's sample clock at the position where it should come back. The unknown extra delay
(client buffering, the room) is found by cross-correlating the microphone with that reference,
to a fraction of a sample, and followed as it drifts (a client's speaker and microphone clocks
differ by up to ~100 ppm). The reference, re-read at that moving delay, feeds Speex's adaptive
echo canceller (MDF, a 256 ms filter for the room's reverberation, plus its residual-echo
suppressor), which learns the path itself: resampling, reverb, a speaker that clips a little.
Without libspeexdsp the guard falls back to subtracting one scaled copy of the reference, which
only cancels a digital loopback. What remains is the user (barge-in still works while the bot
talks) plus whatever the estimate misses.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from voxloop.audio import speex

RATE = 16000
MAX_DELAY = int(0.8 * RATE)  # client playout buffer plus the acoustic path
WINDOW = 4096  # samples correlated per delay estimate (~0.26 s)
HISTORY = 1 << 16  # ring size (~4 s): covers window plus the largest delay
ESTIMATE_EVERY = 512  # every VAD frame: client playback can shift by a frame at any time
MIN_CORRELATION = 0.6  # normalised correlation needed to trust a delay
FRAME = 256  # canceller frame (16 ms): while it runs, the most it delays the microphone
FILTER = 4096  # canceller filter (256 ms): the room's tail after the direct path
LEAD = 480  # the reference runs 30 ms ahead of the estimated echo: the filter stays causal
FIT_SPAN = 6 * RATE  # delay estimates this recent set the drift
JUMP = 4.0  # samples: an estimate this far off the fitted line means the playback restarted
MAX_DRIFT = 400e-6
TAPS = np.arange(-7, 9)  # fractional-delay interpolation: 16-tap windowed sinc
TAPER = np.hanning(len(TAPS) + 2)[1:-1]
NOISE_PERCENTILE = 20  # the room's noise level: most packets hold no speech, or only cancelled echo
LEDGER = 1024  # process() calls whose energy in and out ``kept`` remembers (20 ms packets: ~20 s)


class DelayTrack:
    """The echo's delay over time: sub-sample estimates, fitted by a line whose slope is the
    clock drift. A jump (the client restarted playback) starts a new line with the same slope."""

    def __init__(self) -> None:
        self.points: deque[tuple[int, float]] = deque()
        self.drift = 0.0  # samples of delay per microphone sample
        self._anchor = (0, 0.0)  # (position, delay) the line passes through

    def add(self, position: int, delay: float) -> None:
        if self.points and abs(self.at(position) - delay) > JUMP:
            self.points.clear()
        self.points.append((position, delay))
        while self.points and position - self.points[0][0] > FIT_SPAN:
            self.points.popleft()
        positions = np.array([p for p, _ in self.points], dtype=np.float64)
        delays = np.array([d for _, d in self.points])
        if positions[-1] - positions[0] >= RATE:  # a second of estimates: enough to see drift
            slope = np.polyfit(positions - positions[0], delays, 1)[0]
            self.drift = float(np.clip(slope, -MAX_DRIFT, MAX_DRIFT))
        mean_at = float(positions.mean())
        self._anchor = (round(mean_at), float(np.mean(delays - self.drift * (positions - mean_at))))

    @property
    def steady(self) -> bool:
        """Three estimates on one line: an echo path, not a chance match (headphones have none,
        and cancelling a phantom echo would eat the user's words)."""
        return len(self.points) >= 3

    def at(self, position: int | np.ndarray) -> float | np.ndarray:
        start, delay = self._anchor
        return delay + self.drift * (np.asarray(position) - start)


class EchoGuard:
    def __init__(self, adaptive: bool = True) -> None:
        """``adaptive=False``: the one-tap subtraction alone (what the guard was before Speex)."""
        self._ref = np.zeros(HISTORY, dtype=np.float32)  # reference, indexed by mic position % HISTORY
        self._mic = np.zeros(HISTORY, dtype=np.float32)
        self._ref_until = 0  # mic position after the last reference sample written
        self._ref_started = 0  # mic position where the current stretch of bot audio began
        self._position = 0  # mic samples received
        self._since_estimate = 0
        self.delay: int | None = None  # extra delay found, in samples
        self.track = DelayTrack()
        self.no_echo_path = False  # set once bot audio played without any echo coming back
        self.gain = 0.0
        self._canceller = (
            speex.SpeexEchoCanceller(FRAME, FILTER, RATE)
            if adaptive and speex.library() is not None
            else None
        )
        # The canceller works on whole frames, so while it runs the part-frame it has not seen yet
        # waits; nothing else is ever delayed. (Delaying all input by a frame, echo or not, was
        # enough to flip Whisper's reading of a question: issue 16.)
        self._unframed = np.zeros(0, dtype=np.float32)  # input not yet a whole canceller frame
        self._framed_at = 0  # mic position of _unframed[0]
        self._held = np.zeros(0, dtype=np.float32)  # output waiting for the next ``process``
        self._ledger: deque[tuple[int, float, float]] = deque(maxlen=LEDGER)  # (samples, energy in, out)

    def add_reference(self, samples: np.ndarray, starts_in_s: float, contiguous: bool) -> None:
        """Bot audio (16 kHz) the client starts playing ``starts_in_s`` from now.

        ``contiguous`` pieces follow the previous one without a gap in the client's playback, so
        they are laid end to end: sample-exact alignment is what makes cancelling work, and
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
        # A part-frame left from before the gap goes out as it is: frames hold contiguous audio.
        self._held = np.concatenate([self._held, self._unframed])
        self._unframed = np.zeros(0, dtype=np.float32)

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
        """The microphone samples with the estimated echo removed. Unchanged and undelayed when no
        bot audio can be coming back; while the adaptive canceller runs, up to a frame less (the
        part-frame it has not seen yet, given back with the next call)."""
        start = self._position
        index = (start + np.arange(len(mic))) % HISTORY
        self._mic[index] = mic
        self._position += len(mic)
        active = self.active()
        if active:
            self._since_estimate += len(mic)
            if self._since_estimate >= ESTIMATE_EVERY or self.delay is None:
                self._since_estimate = 0
                self._estimate()
        uncertain = self.uncertain()
        echo = active and self.delay is not None
        if self._canceller is not None and echo and self.track.steady:
            out = self._cancel(mic, start)
        else:
            # Until the delay is confirmed, only the energy-checked one-tap subtraction runs.
            out = self._subtract(mic, start) if echo and self.gain > 0.0 else mic
            if len(self._unframed):  # the canceller stopped: its last part-frame goes out as heard
                out = np.concatenate([self._unframed, out])
                self._unframed = np.zeros(0, dtype=np.float32)
        if len(self._held):
            out, self._held = np.concatenate([self._held, out]), np.zeros(0, dtype=np.float32)
        # Clear the reference that is now older than any delay we search, so the ring can be reused.
        self._ref[(start - MAX_DELAY - WINDOW + np.arange(len(mic))) % HISTORY] = 0.0
        out = np.zeros_like(out) if uncertain else out  # likely our own echo: no turn from it
        self._ledger.append((len(mic), float(np.dot(mic, mic)), float(np.dot(out, out))))
        return out

    def kept(self, samples: int) -> float:
        """The share of the microphone's sound over its last ``samples``, above the room's steady
        noise (a fan), that the guard let through: near 1 for the user, alone or talking over the
        echo (the canceller keeps double talk), far less for the bot's echo alone, whose leftovers
        Whisper still reads as words. 1.0 when nothing rose above the noise."""
        levels = [energy_out / length for length, _, energy_out in self._ledger if length]
        floor = float(np.percentile(levels, NOISE_PERCENTILE)) if levels else 0.0
        heard = kept = 0.0
        counted = 0
        for length, energy_in, energy_out in reversed(self._ledger):
            if counted >= samples:
                break
            heard += max(energy_in - floor * length, 0.0)
            kept += max(energy_out - floor * length, 0.0)
            counted += length
        return min(kept / heard, 1.0) if heard > 0.0 else 1.0

    def _cancel(self, mic: np.ndarray, start: int) -> np.ndarray:
        """The canceller's output for every whole frame now available."""
        assert self._canceller is not None
        if not len(self._unframed):
            self._framed_at = start
        self._unframed = np.concatenate([self._unframed, mic.astype(np.float32, copy=False)])
        done = []
        while len(self._unframed) >= FRAME:
            frame, self._unframed = self._unframed[:FRAME], self._unframed[FRAME:]
            at = self._framed_at
            self._framed_at += FRAME
            # One scaled copy of the reference comes off first (it alone cancels a digital
            # loopback at once); the adaptive filter learns the rest of the path.
            frame = frame - self.gain * self._far_end(at, 0)
            done.append(self._canceller.process(frame, self._far_end(at, LEAD)))
        return np.concatenate(done) if done else np.zeros(0, dtype=np.float32)

    def _far_end(self, at: int, lead: int) -> np.ndarray:
        """The reference as it sounds at microphone positions ``at``..``at + FRAME``, ``lead``
        samples early, re-read at the drifting delay with a windowed-sinc interpolator."""
        positions = at + np.arange(FRAME)
        when = positions - np.asarray(self.track.at(positions)) + lead
        whole = np.floor(when).astype(np.int64)
        fraction = when - whole
        kernel = np.sinc(TAPS[None, :] - fraction[:, None]) * TAPER
        samples = self._ref[(whole[:, None] + TAPS[None, :]) % HISTORY]
        return (samples * kernel).sum(axis=1).astype(np.float32)

    def _subtract(self, mic: np.ndarray, start: int) -> np.ndarray:
        assert self.delay is not None
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
        if not 0.01 < gain < 4.0:  # a chance match, not an echo: keep the last estimate
            return
        self.delay, self.gain = delay, gain
        if 0 < delay < MAX_DELAY:  # the peak's parabola gives the fraction of a sample
            left, peak, right = normalised[delay - 1 : delay + 2]
            curvature = left - 2 * peak + right
            offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
            self.track.add(end - WINDOW // 2, delay + float(np.clip(offset, -0.5, 0.5)))
        else:
            self.track.add(end - WINDOW // 2, float(delay))
