"""The echo canceller on the room simulator: a client that resamples the reply, a reverberant
room, a speaker that clips a little and clocks that drift 100 ppm apart."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.room import RATE, Room, RoomSpec, level
from tests.speech import espeak_16k, espeak_wav
from voxloop.audio import speex
from voxloop.audio.pcm import resample
from voxloop.engine.echo import EchoGuard

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
    reply: np.ndarray, user: np.ndarray | None, user_at: int, after_s: float = 1.0, spec: RoomSpec = ROOM
) -> tuple[np.ndarray, np.ndarray, EchoGuard]:
    """Sends ``reply`` as the server does (20 ms frames, 160 ms ahead) to a client in ``ROOM``;
    returns the microphone, the guard's output and the guard."""
    room, guard = Room(spec, WIRE_RATE), EchoGuard(adaptive=True)
    reference = resample(reply, WIRE_RATE, RATE)
    mics, outs, sent, chunk = [], [], 0, WIRE_RATE // 50
    while room.position < len(reference) + after_s * RATE:
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
    mic, out = np.concatenate(mics), np.concatenate(outs)
    return mic, np.pad(out, (0, len(mic) - len(out))), guard  # the last part-frame is still held


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


def test_canceller_leaves_the_microphone_as_it_is_when_no_bot_audio_was_played() -> None:
    """Issue 16: with the canceller on, a question streamed with no reply ever played came out a
    frame (16 ms) late, and Whisper tiny.en read the shifted audio as "What is the capital I'm
    saying?" (3 of 8 shifts of that clip, 0 to 64 ms, flip its reading)."""
    question = espeak_16k("What is the capital of Spain?")
    guard = EchoGuard(adaptive=True)
    out = [guard.process(question[start : start + 1600]) for start in range(0, len(question), 1600)]
    np.testing.assert_array_equal(np.concatenate(out), question)


def test_after_the_replys_echo_has_died_away_the_microphone_is_passed_on_as_it_is() -> None:
    reply = reply_audio()
    user = level(espeak_16k("What is the capital of Spain?", "en-us+f3"))
    user_at = (round(len(reply) * RATE / WIRE_RATE) // 320 + 60) * 320  # 1.2 s after the reply
    mic, out, _ = through_room(reply, user, user_at, after_s=1.2 + len(user) / RATE + 0.5)
    np.testing.assert_array_equal(out[user_at:], mic[user_at:])  # undelayed, nothing held back


@pytest.mark.parametrize("noise", [None, "fan"])
def test_the_guard_tells_the_echo_alone_from_the_user_talking_over_it(noise: str | None) -> None:
    """What the guard lets through of the last stretch of sound above the room's noise (``kept``)
    is how barge-in tells the bot's echo, which Whisper still reads as words, from the user
    (measured: echo alone 0.01-0.02, 0.13-0.23 with a fan at 15 dB SNR; the user 0.66-0.80)."""
    spec = replace(ROOM, noise=noise)
    reply = reply_audio()
    reply_end = round(len(reply) * RATE / WIRE_RATE) // 320 * 320
    _, _, guard = through_room(reply, None, 0, after_s=0, spec=spec)
    for seconds in (0.3, 1.0):
        assert guard.kept(round(seconds * RATE)) < 0.3, (seconds, guard.kept(round(seconds * RATE)))
    for text in ("stop", "stop please, I have another question"):
        user = level(espeak_16k(text, "en-us+f3"))
        _, _, guard = through_room(reply, user, reply_end - len(user) // 320 * 320, after_s=0, spec=spec)
        utterance = len(user) + RATE * 32 // 100  # with the segmenter's 320 ms pre-roll
        assert guard.kept(utterance) > 0.5, (text, guard.kept(utterance))
    assert EchoGuard().kept(RATE) == 1.0  # nothing heard yet
