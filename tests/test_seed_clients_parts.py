"""The parts behind the seeds' own clients, without a server: MediaRecorder stream decoding, the
inferred microphone rate, SelamGPT's native voices, the spoken-style setting and the tool filler."""

from __future__ import annotations

import io
import itertools

import av
import numpy as np
import pytest

from tests.speech import espeak_16k
from voxloop.audio.pcm import AudioFormatError, float_to_pcm16, pcm16_to_float
from voxloop.audio.stream import StreamDecoder, stream_container
from voxloop.backends.tts.voices import Speaker
from voxloop.config import Settings
from voxloop.engine.history import SPOKEN_STYLE, VERBATIM, History
from voxloop.engine.tools import filler_for
from voxloop.protocols.lokutor.common import RateSniffer
from voxloop.protocols.selam.options import SelamError, parse_start

RATE = 16000


CLUSTER = bytes.fromhex("1f43b675")  # a Matroska Cluster element's id


def webm_opus(audio: np.ndarray, rate: int = RATE) -> bytes:
    """A WebM/Opus stream as a browser's MediaRecorder writes it: 48 kHz Opus in Matroska, live
    (clusters of unknown size, no index), a cluster every 100 ms."""
    out = io.BytesIO()
    options = {"live": "1", "cluster_time_limit": "100"}
    with av.open(out, "w", format="webm", options=options) as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(float_to_pcm16(audio), "<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = rate
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for resampled in resampler.resample(frame):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def media_recorder_chunks(data: bytes) -> list[bytes]:
    """The stream cut as ``MediaRecorder.start(100)`` hands it out: the header with the first
    cluster, then a cluster (100 ms) a chunk."""
    starts = [i for i in range(len(data)) if data.startswith(CLUSTER, i)]
    bounds = [0, *starts[1:], len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Peak normalised cross-correlation of two envelopes (Opus shifts the phase, not the envelope)."""
    env = lambda x: np.convolve(np.abs(x), np.ones(160) / 160, "same")  # noqa: E731
    a, b = env(a), env(b)
    n = min(len(a), len(b))
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    return float(np.max(np.correlate(a, b, "full")) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_media_recorder_stream_decodes_chunk_by_chunk() -> None:
    speech = espeak_16k("The quick brown fox jumps over the lazy dog.")
    data = webm_opus(speech)
    assert stream_container(data) == "webm" and stream_container(data[100:]) is None
    chunks = media_recorder_chunks(data)
    assert len(chunks) >= 10
    decoder = StreamDecoder("webm", RATE)
    try:
        decoded, behind = [], []
        for index, chunk in enumerate(chunks):
            decoded.append(decoder.feed(chunk))
            # Audio held back: what was fed (100 ms a chunk) minus what came out. The decoder
            # hands out a chunk's frames at once; Opus and the resampler keep a few ms back.
            fed_s = min((index + 1) * 0.1, len(speech) / RATE)
            behind.append(fed_s - sum(map(len, decoded)) / 2 / RATE)
    finally:
        decoder.close()
    audio = pcm16_to_float(b"".join(decoded))
    assert abs(len(audio) - len(speech)) < 0.1 * RATE
    assert correlation(audio, speech) > 0.8
    assert max(behind) < 0.1  # never a whole chunk behind


def test_a_broken_stream_is_an_audio_format_error() -> None:
    noise = bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8))
    decoder = StreamDecoder("webm", RATE)
    try:
        with pytest.raises(AudioFormatError):  # a header that is not one, then more noise
            for _ in range(20):
                decoder.feed(b"\x1aE\xdf\xa3" + noise)
        with pytest.raises(AudioFormatError):  # the stream stays refused
            decoder.feed(noise)
    finally:
        decoder.close()

    decoder = StreamDecoder("webm", RATE)  # garbage after a good header: skipped, no audio
    try:
        data = webm_opus(espeak_16k("Hello there."))
        decoder.feed(data[:200])
        assert decoder.feed(noise) == b""
    finally:
        decoder.close()


def frames_at(rate: int, seconds: float, read: int = 2048, pace: float = 1.0) -> list[tuple[int, float]]:
    """(samples, arrival time) of a microphone read ``read`` samples at a time, sent at ``pace``."""
    return [(read, i * read / rate / pace) for i in range(int(seconds * rate / read))]


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 44100, 48000])
def test_rate_sniffer_finds_a_real_time_microphone(rate: int) -> None:
    sniffer = RateSniffer(44100)
    decided_at = None
    for samples, at in frames_at(rate, 3.0, read=max(160, rate // 50)):
        if sniffer.observe(samples, at) and decided_at is None:
            decided_at = at
    assert sniffer.rate == rate and decided_at is not None and decided_at <= 1.1


def test_rate_sniffer_keeps_its_rate_without_evidence() -> None:
    fast = RateSniffer(44100)  # a file sent at once (ten times real time): no evidence
    for samples, at in frames_at(16000, 3.0, pace=10.0):
        fast.observe(samples, at)
    assert fast.decided and fast.rate == 44100

    changed = RateSniffer(44100)  # 16 kHz, then 48 kHz: one window is a hint, two decide
    for samples, at in frames_at(16000, 2.0):
        changed.observe(samples, at)
    assert changed.rate == 16000
    switched = []
    for samples, at in frames_at(48000, 3.5, read=960):
        if changed.observe(samples, at + 2.0):
            switched.append(at)
    assert changed.rate == 48000 and switched and switched[0] >= 1.9


def test_selam_native_voices_speak_their_languages() -> None:
    speaker = Speaker(Settings(warmup=False))
    for name, language, gender in (
        ("mekdes", "am", "female"),
        ("betty", "am", "female"),
        ("ameha", "am", "male"),
        ("ubax", "so", "female"),
        ("muuse", "so", "male"),
    ):
        options = parse_start({"voice": name}, "alloy", speaker)
        assert options.voice_language == language and options.language is None
        voice = speaker.resolve(options.voice, language)
        assert voice.gender == gender and language in voice.languages
    for language in ("am", "om", "ti", "so"):
        assert parse_start({"voice": "mekdes", "language": language}, "alloy", speaker).language == language
    with pytest.raises(SelamError):
        parse_start({"voice": "mekdes", "language": "xx"}, "alloy", speaker)


def test_amharic_and_somali_are_synthesised() -> None:
    speaker = Speaker(Settings(warmup=False))
    for text, language in (("ሰላም፣ እንዴት ነህ?", "am"), ("Magaceygu waa Ubax.", "so"), ("ሰላም", "ti")):
        voice = speaker.resolve("F1", language)
        audio = np.concatenate([chunk.audio for chunk in speaker.synthesize(text, voice, language)])
        assert voice.engine == "espeak" and len(audio) > 0.3 * 22050  # eSpeak NG speaks at 22.05 kHz


def test_spoken_style_can_be_turned_off_or_opted_out_of() -> None:
    history = History("You are a pirate.")
    assert SPOKEN_STYLE in history.system("en").content
    history.spoken_style = False
    assert history.system("en").content == "You are a pirate."
    assert "Always answer in Spanish." in history.system("es").content  # still asked for
    history = History(f"{VERBATIM} Answer in JSON.")
    assert history.system("en").content == "Answer in JSON."


def test_the_tool_filler_is_in_the_session_language() -> None:
    assert filler_for("en") == "One moment, please."
    assert filler_for("es") == "Un momento, por favor."
    assert filler_for("am") != filler_for("en") and filler_for("xx") == filler_for("en")
