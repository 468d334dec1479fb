"""The Session API protocols build on, on the real embedded models in-process: typed turns, client
interrupts, whole-piece audio, listening off, manual replies, barge-in rules and the codecs."""

from __future__ import annotations

import asyncio
import audioop  # the standard library's G.711, as the reference
from collections.abc import AsyncIterator

import numpy as np
import pytest

from tests.speech import espeak_16k, word_error_rate
from voxloop.audio import codec
from voxloop.audio.pcm import AudioFormatError, float_to_pcm16, pcm16_to_float
from voxloop.backends.registry import Backends
from voxloop.backends.stt.base import Transcript
from voxloop.config import Settings
from voxloop.engine import events
from voxloop.engine.barge_in import BargeInRules
from voxloop.engine.session import Session
from voxloop.protocols.common import new_session


@pytest.fixture(scope="module")
def backends() -> Backends:
    created = Backends.create(Settings(warmup=False))
    created.warmup()
    return created


@pytest.fixture
async def session(backends: Backends) -> AsyncIterator[Session]:
    opened = new_session(backends, output_rate=16000, input_rate=16000)
    yield opened
    await opened.close()


async def collect(session: Session, until: type, within_s: float = 60) -> list[events.Event]:
    seen: list[events.Event] = []
    async with asyncio.timeout(within_s):
        while not isinstance(seen[-1] if seen else None, until):
            seen.append(await session.next_event())
    return seen


async def test_typed_turn_streams_text_then_whole_pieces_of_speech(session: Session) -> None:
    session.configure(frame_ms=None)
    generation = (await session.reply("Say hello to Paris in one short sentence.")).id
    seen = await collect(session, events.ResponseDone)
    user = [e for e in seen if isinstance(e, events.TranscriptFinal) and e.role == "user"]
    assert user and user[0].text.startswith("Say hello") and user[0].generation == generation
    assert any(isinstance(e, events.TextDelta) for e in seen)
    pieces = [e for e in seen if isinstance(e, events.AudioOut)]
    assert pieces and [p.piece for p in pieces] == list(range(len(pieces)))  # one event per piece
    assert all(p.text for p in pieces)
    heard = await session.transcribe(pcm16_to_float(b"".join(p.pcm for p in pieces)))
    spoken = " ".join(p.text for p in pieces)
    assert word_error_rate(spoken, heard.text) < 0.35, (spoken, heard.text)
    done = seen[-1]
    assert isinstance(done, events.ResponseDone) and not done.interrupted
    assert [m.role for m in session.history.messages] == ["user", "assistant"]


async def test_interrupt_cuts_the_reply_and_history_keeps_what_was_heard(session: Session) -> None:
    await session.reply("Tell me a long story about a dragon who learns to cook, in five sentences.")
    seen = await collect(session, events.AudioOut)
    await asyncio.sleep(0.6)
    await session.interrupt()
    seen += await collect(session, events.ResponseDone)
    kinds = [type(e) for e in seen]
    assert events.Interrupted in kinds
    cut = next(e for e in seen if isinstance(e, events.Interrupted))
    assert cut.reason == "client"
    done = seen[-1]
    assert isinstance(done, events.ResponseDone) and done.interrupted
    assert session.history.messages[-1].content == done.text  # only the heard words


async def test_new_text_interrupts_with_reason_new_input(session: Session) -> None:
    first = (await session.reply("Count slowly from one to twenty.")).id
    await collect(session, events.AudioOut)
    second = (await session.reply("Now just say OK.")).id
    seen = await collect(session, events.Interrupted)
    assert seen[-1] == events.Interrupted(first, "new_input")
    rest = await collect(session, events.ResponseDone)
    while rest[-1].generation != second:  # type: ignore[union-attr]
        rest += await collect(session, events.ResponseDone)
    assert not any(isinstance(e, events.AudioOut) and e.generation == first for e in rest)


async def test_manual_turns_add_messages_then_reply_to_the_history(session: Session) -> None:
    session.add_message("user", "My favourite colour is green. Just say noted.")
    await session.reply(None)
    seen = await collect(session, events.ResponseDone)
    assert not any(isinstance(e, events.TranscriptFinal) and e.role == "user" for e in seen)
    assert [m.role for m in session.history.messages] == ["user", "assistant"]


async def test_speech_while_not_listening_is_ignored(session: Session) -> None:
    session.set_listening(False)
    question = espeak_16k("What is the capital of France?")
    await session.push_audio(float_to_pcm16(np.concatenate([question, np.zeros(16000, np.float32)])))
    # push_audio runs the segmenter inline: once it returns, a turn would have started
    assert session.outbox.empty() and session.pending is None and not session.segmenter.speaking
    session.set_listening(True)
    await session.push_audio(float_to_pcm16(np.concatenate([question, np.zeros(16000, np.float32)])))
    seen = await collect(session, events.TranscriptFinal)
    assert "france" in seen[-1].text.lower()  # type: ignore[union-attr]


async def test_held_output_sends_nothing_until_resumed(session: Session) -> None:
    session.pause_output()
    reply = (await session.reply("Say good morning.")).response
    while "tts_first_audio" not in reply.timings:  # noqa: ASYNC110 (audio ready: unheld, it would go out)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # the player takes it and stops at the held output
    queued = []
    while not session.outbox.empty():
        queued.append(session.outbox.get_nowait())
    assert not any(isinstance(e, events.AudioOut) for e in queued)
    session.resume_output()
    await collect(session, events.AudioOut)


def test_barge_in_rules_need_words_chars_and_confidence() -> None:
    soca = BargeInRules(min_words=2, min_chars=10, min_confidence=0.3)
    heard = lambda text, confidence=0.9: Transcript(text, "en", 1.0, confidence=confidence)  # noqa: E731
    assert soca.qualifies(heard("wait, stop talking please"))
    assert not soca.qualifies(heard("um, uh, hmm"))  # fillers never barge
    assert not soca.qualifies(heard("stop"))  # one word
    assert not soca.qualifies(heard("no no"))  # too few characters
    assert not soca.qualifies(heard("wait, stop talking please", confidence=0.1))


async def test_detected_language_reply_and_voice_follow(backends: Backends) -> None:
    session = new_session(backends, detect_language=True, output_rate=16000, input_rate=16000)
    try:
        audio = espeak_16k("¿Cuál es la capital de Francia?", "es")
        await session.push_audio(float_to_pcm16(np.concatenate([audio, np.zeros(16000, np.float32)])))
        seen = await collect(session, events.ResponseDone, within_s=90)
        user = next(e for e in seen if isinstance(e, events.TranscriptFinal) and e.role == "user")
        assert user.language == "es"
        assert session.config.language == "es" and "es" in session.voice.languages
        reply = next(e for e in seen if isinstance(e, events.TranscriptFinal) and e.role == "assistant")
        assert reply.language == "es"
    finally:
        await session.close()


def test_g711_matches_the_standard_tables() -> None:
    every_code = bytes(range(256))
    assert codec.ulaw_decode(every_code) == audioop.ulaw2lin(every_code, 2)
    assert codec.alaw_decode(every_code) == audioop.alaw2lin(every_code, 2)
    pcm = np.random.default_rng(1).integers(-32768, 32767, 8000).astype("<i2").tobytes()
    for encode, decode in ((codec.ulaw_encode, codec.ulaw_decode), (codec.alaw_encode, codec.alaw_decode)):
        back = np.frombuffer(decode(encode(pcm)), "<i2").astype(float)
        original = np.frombuffer(pcm, "<i2").astype(float)
        # G.711 keeps ~3 % relative precision; near zero its step is 8 (a-law) or 2 (mu-law) levels
        assert np.max(np.abs(back - original) / (np.abs(original) + 128)) < 0.07


@pytest.mark.parametrize("container", ["mp3", "ogg", "webm", "wav"])
def test_compressed_speech_decodes_and_is_understood(backends: Backends, container: str) -> None:
    import io

    import av

    sentence = "What is the capital of France?"
    speech = espeak_16k(sentence)
    if container == "mp3":
        data = codec.encode_mp3(float_to_pcm16(speech), 16000)
    else:
        out = io.BytesIO()
        with av.open(out, "w", format=container) as file:
            name = {"ogg": "libopus", "webm": "libopus", "wav": "pcm_s16le"}[container]
            rate = 48000 if name == "libopus" else 16000
            stream = file.add_stream(name, rate=rate, layout="mono")
            frame = av.AudioFrame.from_ndarray(
                np.frombuffer(float_to_pcm16(speech), "<i2").reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                file.mux(packet)
            for packet in stream.encode(None):
                file.mux(packet)
        data = out.getvalue()
    hint = {"webm": "audio/webm;codecs=opus", "ogg": "audio/ogg", "mp3": "mp3", "wav": None}[container]
    audio = codec.decode_audio(data, hint)
    assert abs(len(audio) - len(speech)) < 0.1 * 16000
    heard = backends.stt.transcribe(audio, "en").text
    assert word_error_rate(sentence, heard) < 0.2, heard


def test_undecodable_audio_is_a_format_error() -> None:
    with pytest.raises(AudioFormatError):
        codec.decode_audio(b"not audio at all" * 10, "mp3")
    with pytest.raises(AudioFormatError):
        codec.decode_audio(b"RIFF", "audio/x-unknown")
    with pytest.raises(AudioFormatError):
        codec.decode_audio(b"")
