"""The echo canceller on the room simulator: a client that resamples the reply, a reverberant
room, a speaker that clips a little and clocks that drift 100 ppm apart."""

from __future__ import annotations

import numpy as np
import pytest

from tests.room import RATE, Room, RoomSpec, level
from tests.speech import espeak_16k, espeak_wav
from voxloop.audio import speex
from voxloop.audio.pcm import resample
from voxloop.engine.echo import FRAME, EchoGuard

WIRE_RATE = 44100
ROOM = RoomSpec("-6dB rt60=0.4", echo_db=-6, delay_ms=150, rt60_s=0.4, drift_ppm=100, clip=0.5, noise=None)

pytestmark = pytest.mark.skipif(speex.library() is None, reason="libspeexdsp missing")


def reply_audio() -> np.ndarray:
    audio, rate = espeak_wav(
        "The Moon is about three hundred and eighty four thousand kilometres from the Earth, and it "
        "takes about a month to go around it. Paris is the capital of France, famous for its tower."
    )
    return resample(audio, rate, WIRE_RATE) * 0.5


def through_room(
    reply: np.ndarray, user: np.ndarray | None, user_at: int
) -> tuple[np.ndarray, np.ndarray, EchoGuard]:
    """Sends ``reply`` as the server does (20 ms frames, 160 ms ahead) to a client in ``ROOM``;
    returns the microphone, the guard's output (re-aligned) and the guard."""
    room, guard = Room(ROOM, WIRE_RATE), EchoGuard(adaptive=True)
    reference = resample(reply, WIRE_RATE, RATE)
    mics, outs, sent, chunk = [], [], 0, WIRE_RATE // 50
    while room.position < len(reference) + RATE:
        while sent < len(reply) and sent / WIRE_RATE <= room.position / RATE + 0.16:
            at = round(sent * RATE / WIRE_RATE)
            piece = reference[at : round((sent + chunk) * RATE / WIRE_RATE)]
            guard.add_reference(piece, max(0.0, sent / WIRE_RATE - room.position / RATE), contiguous=sent > 0)
            room.play(reply[sent : sent + chunk])
            sent += chunk
        if user is not None and room.position == user_at:
            room.say(user)
        mic = room.hear(320)
        mics.append(mic)
        outs.append(guard.process(mic))
    out = np.concatenate(outs)
    return np.concatenate(mics), np.concatenate([out[FRAME:], np.zeros(FRAME, np.float32)]), guard


def test_canceller_removes_a_real_rooms_echo_and_follows_the_clock_drift() -> None:
    mic, out, guard = through_room(reply_audio(), None, 0)
    settled = slice(2 * RATE, len(mic) - RATE)  # after the first two seconds of adaptation
    reduction = 10 * np.log10(np.mean(mic[settled] ** 2) / np.mean(out[settled] ** 2))
    assert reduction > 10, reduction  # ~15.6 dB measured
    assert abs(guard.track.drift + ROOM.drift_ppm * 1e-6) < 20e-6, guard.track.drift


def test_canceller_keeps_the_user_talking_over_the_reply() -> None:
    user = level(espeak_16k("stop please, I have another question", "en-us+f3"))
    user_at = 4 * RATE
    _, out, _ = through_room(reply_audio(), user, user_at)
    kept = np.mean(out[user_at : user_at + len(user)] ** 2) / np.mean(user**2)
    assert 0.7 < kept < 1.4, kept  # the user's words, with a little echo left on top
