"""A room between the server and the user: what a client's microphone hears while it plays replies.

The reply is played as a real client plays it and comes back through the air: the client's own
resampler (linear interpolation from the wire rate onto the 16 kHz microphone clock, unlike the
server's soxr), a clock that drifts against the server's (``drift_ppm``), a small speaker that
clips a little, a room impulse response (exponentially decaying noise for a given RT60), the echo
level and delay, background noise (a fan or babble) at a given SNR, and the user's own speech on
top. Used by the echo-canceller tests and ``bench/bench_room.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from tests.speech import espeak_16k

RATE = 16000
SPEECH_RMS = 0.08  # the user's voice at the microphone (about -22 dBFS)


@dataclass(frozen=True)
class RoomSpec:
    name: str
    echo_db: float | None = -6.0  # echo level against the reply as sent; None: headphones
    delay_ms: float = 150.0  # client buffering plus the acoustic path
    rt60_s: float = 0.4  # 0: the digital loopback the old tests fed
    drift_ppm: float = 100.0  # the client's clocks against the server's
    clip: float | None = 0.5  # the speaker's soft-clipping level; None: a clean speaker
    noise: str | None = "fan"  # "fan", "babble" or None
    snr_db: float = 15.0  # user speech against the background noise
    seed: int = 0


LOOPBACK = RoomSpec("loopback", echo_db=-6, delay_ms=150, rt60_s=0, drift_ppm=0, clip=None, noise=None)
ROOMS = [
    RoomSpec("-12dB rt60=0.2 fan20", echo_db=-12, delay_ms=80, rt60_s=0.2, snr_db=20),
    RoomSpec("-6dB rt60=0.4 fan15", echo_db=-6, delay_ms=150, rt60_s=0.4, snr_db=15),
    RoomSpec("-6dB rt60=0.4 babble10", echo_db=-6, delay_ms=300, rt60_s=0.4, noise="babble", snr_db=10),
    RoomSpec("0dB rt60=0.6 fan10", echo_db=0, delay_ms=400, rt60_s=0.6, snr_db=10),
    # No echo at all: whatever the echo guard does here may only be neutral.
    RoomSpec("headphones", echo_db=None, rt60_s=0, drift_ppm=0, clip=None, noise=None),
]


def impulse_response(rt60_s: float, seed: int = 0, drr_db: float = 3.0, rate: int = RATE) -> np.ndarray:
    """A synthetic room: a direct path, then exponentially decaying noise (-60 dB at ``rt60_s``)
    ``drr_db`` below it in energy (a device's speaker sits close to its microphone), normalised
    to unit energy so the echo level is set by ``echo_db`` alone."""
    if rt60_s <= 0:
        return np.ones(1, dtype=np.float32)
    rng = np.random.default_rng(seed)
    length = int(rt60_s * rate)
    t = np.arange(length) / rate
    tail = rng.standard_normal(length) * np.exp(-6.9 * t / rt60_s)  # 6.9 = ln(1000): -60 dB
    tail[: int(0.003 * rate)] = 0.0  # first reflections a few ms after the direct path
    response = tail * np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    response[0] = 1.0
    return (response / np.sqrt(np.sum(response**2))).astype(np.float32)


@cache
def _babble(seconds: float, seed: int) -> np.ndarray:
    """Several synthetic talkers at once, looped: the cafe behind the user."""
    lines = [
        ("The meeting moved to Thursday afternoon.", "en-us"),
        ("Could you pass me the salt and pepper please.", "en-gb"),
        ("We should take the train instead of the car.", "en-us+f3"),
        ("My brother lives near the old harbour.", "en-gb+m3"),
        ("That film was much longer than I expected.", "en-us+f2"),
        ("They sell fresh bread every morning.", "en-us+m4"),
    ]
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE), dtype=np.float32)
    for text, voice in lines:
        talk = espeak_16k(text, voice)
        start = int(rng.integers(0, len(talk)))
        out += np.resize(np.roll(talk, start), len(out)) / np.sqrt(np.mean(talk**2) + 1e-9)
    return out


def noise(kind: str, samples: int, seed: int = 0) -> np.ndarray:
    """Background noise at unit RMS."""
    rng = np.random.default_rng(seed)
    if kind == "fan":
        white = rng.standard_normal(samples + 64)
        rumble = np.convolve(white, np.ones(32) / 32, mode="same")  # a fan's broadband roar, low-heavy
        t = np.arange(samples + 64) / RATE
        hum = 0.3 * np.sin(2 * np.pi * 120 * t) + 0.15 * np.sin(2 * np.pi * 240 * t)
        out = (rumble + 0.05 * white + hum)[64:]
    elif kind == "babble":
        out = np.resize(_babble(20.0, seed), samples)
    else:
        raise ValueError(f"unknown noise {kind!r}")
    return (out / np.sqrt(np.mean(out**2) + 1e-12)).astype(np.float32)


def level(audio: np.ndarray, rms: float = SPEECH_RMS) -> np.ndarray:
    """``audio`` scaled to an RMS over its voiced part (a quiet tail does not count)."""
    voiced = audio[np.abs(audio) > 0.1 * np.max(np.abs(audio))] if audio.size else audio
    return (audio * rms / max(float(np.sqrt(np.mean(voiced**2))) if voiced.size else 0.0, 1e-9)).astype(
        np.float32
    )


class Room:
    """The microphone's stream, rendered frame by frame on the microphone's clock.

    ``play`` hands it reply audio as the client receives it (at the wire rate); the speaker plays
    it after whatever it is still playing, or after ``jitter_ms`` when it was idle. ``say`` queues
    the user's speech. ``hear`` returns the next microphone samples: speech + echo + noise.
    """

    def __init__(self, spec: RoomSpec, wire_rate: int, jitter_ms: float = 40.0) -> None:
        self.spec, self.wire_rate = spec, wire_rate
        self.position = 0  # microphone samples rendered
        self._jitter = jitter_ms / 1000
        self._speaker = np.zeros(0, dtype=np.float32)  # played audio at the wire rate, speaker clock
        self._speaker_origin = 0.0  # speaker-clock second of _speaker[0]
        self._speaker_end = 0.0  # speaker-clock second at which the speaker runs out
        self._response = impulse_response(spec.rt60_s, spec.seed)
        self._tail = np.zeros(len(self._response) - 1, dtype=np.float32)
        self._speech = np.zeros(0, dtype=np.float32)
        self._rng_seed = spec.seed
        self._noise = (
            noise(spec.noise, 60 * RATE, spec.seed) * SPEECH_RMS * 10 ** (-spec.snr_db / 20)
            if spec.noise
            else None
        )
        self.echo_energy = 0.0  # echo rendered so far (sum of squares), for the tests' figures

    def _speaker_clock(self, mic_sample: float) -> float:
        return mic_sample / RATE * (1 + self.spec.drift_ppm * 1e-6)

    def play(self, audio: np.ndarray) -> None:
        """Reply audio (float, at the wire rate) that just arrived at the client."""
        now = self._speaker_clock(self.position)
        if self._speaker_end < now:  # the speaker was idle: start after the jitter buffer
            self._trim(now)
            gap = now + self._jitter - self._speaker_origin - len(self._speaker) / self.wire_rate
            self._speaker = np.concatenate([self._speaker, np.zeros(max(0, round(gap * self.wire_rate)))])
        self._speaker = np.concatenate([self._speaker, audio.astype(np.float32)])
        self._speaker_end = self._speaker_origin + len(self._speaker) / self.wire_rate

    def stop(self) -> None:
        """The client flushed its playback (an interruption)."""
        self._trim(self._speaker_clock(self.position))
        now = self._speaker_clock(self.position)
        keep = max(0, round((now - self._speaker_origin) * self.wire_rate))
        self._speaker = self._speaker[:keep]
        self._speaker_end = min(self._speaker_end, now)

    @property
    def playing(self) -> bool:
        return self._speaker_end > self._speaker_clock(self.position)

    def say(self, speech: np.ndarray) -> None:
        """The user's speech (16 kHz), starting after whatever they are still saying."""
        self._speech = np.concatenate([self._speech, speech.astype(np.float32)])

    @property
    def user_speaking(self) -> bool:
        return len(self._speech) > 0

    def hear(self, samples: int) -> np.ndarray:
        mic = self._echo(samples)
        voice, self._speech = self._speech[:samples], self._speech[samples:]
        mic[: len(voice)] += voice
        if self._noise is not None:
            mic += self._noise[(self.position + np.arange(samples)) % len(self._noise)]
        self.position += samples
        return mic

    def _trim(self, now: float) -> None:
        """Drops played audio older than any delay, so the buffer stays small."""
        keep_from = now - 1.0 - self.spec.delay_ms / 1000
        drop = int((keep_from - self._speaker_origin) * self.wire_rate)
        if drop > 0:
            self._speaker = self._speaker[drop:]
            self._speaker_origin += drop / self.wire_rate

    def _echo(self, samples: int) -> np.ndarray:
        spec = self.spec
        if spec.echo_db is None:
            return np.zeros(samples, dtype=np.float32)
        mic_times = self.position + np.arange(samples) - spec.delay_ms / 1000 * RATE
        at = (self._speaker_clock(mic_times) - self._speaker_origin) * self.wire_rate
        index = np.floor(at).astype(np.int64)
        frac = (at - index).astype(np.float32)
        valid = (index >= 0) & (index + 1 < len(self._speaker))
        played = np.zeros(samples, dtype=np.float32)
        i = index[valid]
        played[valid] = self._speaker[i] * (1 - frac[valid]) + self._speaker[i + 1] * frac[valid]
        if spec.clip is not None:
            played = spec.clip * np.tanh(played / spec.clip)  # a small speaker pushed a little hard
        wet = np.convolve(played, self._response)
        wet[: len(self._tail)] += self._tail
        out, self._tail = wet[:samples], wet[samples:].copy()
        if len(self._tail) < len(self._response) - 1:
            self._tail = np.pad(self._tail, (0, len(self._response) - 1 - len(self._tail)))
        echo = (out * 10 ** (spec.echo_db / 20)).astype(np.float32)
        self.echo_energy += float(np.dot(echo, echo))
        if not np.any(valid) and self.position % RATE == 0:
            self._trim(self._speaker_clock(self.position))
        return echo


def render(spec: RoomSpec, reply: np.ndarray, wire_rate: int, speech: np.ndarray | None = None) -> np.ndarray:
    """Offline: the microphone while ``reply`` plays from the start (and ``speech`` is said)."""
    room = Room(spec, wire_rate)
    room.play(reply)
    if speech is not None:
        room.say(speech)
    total = int((len(reply) / wire_rate + spec.delay_ms / 1000 + spec.rt60_s + 0.2) * RATE)
    return np.concatenate([room.hear(320) for _ in range(total // 320)])
