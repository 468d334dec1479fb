"""Turn-taking in a simulated room (tests/room.py), on the real engine and models, in real time.

A client session plays every reply through the room (its own resampling, reverb, echo level and
delay, clipping, clock drift, background noise) and its microphone hears that echo plus the
user. Per room condition:

- self-interruptions: replies cut (or user turns started) by the bot's own echo, over N turns
  where the user asks a question and then stays silent;
- barge-in recall: replies cut within 2.5 s by N real interruptions (synthetic voices and human
  recordings from pocketsphinx-testdata);
- backchannels that cut the bot: "yeah", "uh-huh", "okay", "right", "mm-hmm" said over N replies;
- false end of turn: N utterances with a 600 ms mid-sentence pause answered before they ended;
- voice-to-voice p50: last voiced sample heard by the microphone -> first reply audio received.

Run: .venv/bin/python bench/bench_room.py [--turns 20] [--rooms 1,2] [--scenarios echo,barge,...]
(``VOXLOOP_ECHO_CANCELLER=false`` measures the one-tap echo guard alone.)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_agent import QUESTIONS
from bench.stats import summary
from tests.room import LOOPBACK, RATE, ROOMS, Room, RoomSpec, level
from tests.speech import espeak_16k, load_16k, pocketsphinx_samples
from voxloop.audio.pcm import float_to_pcm16, pcm16_to_float
from voxloop.backends.registry import Backends
from voxloop.config import Settings
from voxloop.engine import events
from voxloop.engine.session import Session
from voxloop.protocols.common import new_session

FRAME = 320  # 20 ms microphone frames
WIRE_RATE = 44100  # the reply as Lokutor's clients receive and play it
PROMPT = "You are a helpful assistant. Answer in one short sentence."
STORY = "Tell me a story about {} in five sentences."
TOPICS = ["a dragon", "a lighthouse", "a robot", "the sea", "a small cat", "a train", "a baker", "winter"]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb+f2"]
INTERRUPTIONS = [
    "Stop, I have a different question.",
    "Wait, tell me about the weather instead.",
    "Sorry, can we talk about something else?",
    "Hold on, what time is it in London?",
]
BACKCHANNELS = ["yeah", "uh-huh", "okay", "right", "mm-hmm"]
PAUSED = [  # (before the pause, after it): the first half is plainly unfinished
    ("I'd like to book a table", "for two people tomorrow."),
    ("Can you tell me", "the weather in Paris today?"),
    ("My favourite colour is", "a very dark green."),
    ("Please remind me to", "call my mother tonight."),
    ("What is the best way to", "get to the station?"),
]
PAUSE_S = 0.6
CUT_WITHIN_S = 2.5


def voice(text: str, i: int) -> np.ndarray:
    return level(espeak_16k(text, VOICES[i % len(VOICES)]))


def human_clips() -> list[np.ndarray]:
    """Real people (pocketsphinx-testdata), 1-4 s each; empty where the package is missing."""
    clips = []
    for path, _ in pocketsphinx_samples() if Path("/usr/share/pocketsphinx").exists() else []:
        audio = load_16k(path)
        if 1.0 <= len(audio) / RATE <= 4.0:
            clips.append(level(audio))
    return clips[:8]


@dataclass
class Seen:
    at: float  # monotonic
    mic: int  # microphone position when it arrived
    event: events.Event


@dataclass
class Tally:
    turns: int = 0
    self_cuts: int = 0  # replies the bot's own echo cut
    echo_turns: int = 0  # user turns nobody said
    echo_pauses: int = 0  # VAD starts on the echo alone (the reply stutters)
    barge_tries: int = 0
    barge_cuts: int = 0
    backchannel_tries: int = 0
    backchannel_cuts: int = 0
    paused_tries: int = 0
    false_ends: int = 0
    latencies: list[float] = field(default_factory=list)


class RoomClient:
    """A real-time client in a room: microphone frames every 20 ms, reply audio into the speaker."""

    def __init__(self, session: Session, spec: RoomSpec) -> None:
        self.session, self.room = session, Room(spec, WIRE_RATE)
        self.seen: list[Seen] = []
        self.changed = asyncio.Event()
        self.frame_sent = asyncio.Event()
        self.voice_ended_at = 0.0  # monotonic time the last voiced user sample left the microphone
        self._voice_end_position = -1
        self._tasks = [asyncio.create_task(self._microphone()), asyncio.create_task(self._listen())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.session.close()

    async def _microphone(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        while True:
            frame = self.room.hear(FRAME)
            sent += 1
            if self._voice_end_position >= 0 and self.room.position >= self._voice_end_position:
                self.voice_ended_at, self._voice_end_position = time.monotonic(), -1
            await self.session.push_audio(float_to_pcm16(frame))
            self.frame_sent.set()
            await asyncio.sleep(max(0.0, start + sent * FRAME / RATE - loop.time()))

    async def _listen(self) -> None:
        while True:
            event = await self.session.next_event()
            if isinstance(event, events.AudioOut):
                self.room.play(pcm16_to_float(event.pcm))
            elif isinstance(event, events.Interrupted):
                self.room.stop()
            self.seen.append(Seen(time.monotonic(), self.room.position, event))
            self.changed.set()

    async def say(self, speech: np.ndarray) -> None:
        """Says ``speech``; returns once it has all gone out of the microphone."""
        voiced = np.nonzero(np.abs(speech) > 0.02)[0]
        last_voiced = voiced[-1] + 1 if voiced.size else len(speech)
        self._voice_end_position = self.room.position + len(self.room._speech) + last_voiced
        self.room.say(speech)
        await self.until(lambda: not self.room.user_speaking)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Waits, a microphone frame at a time, for ``condition``."""
        while not condition():
            self.frame_sent.clear()
            await self.frame_sent.wait()

    async def wait(self, match: Callable[[Seen], bool], since: int, within_s: float) -> Seen | None:
        deadline = time.monotonic() + within_s
        while True:
            for seen in self.seen[since:]:
                if match(seen):
                    return seen
            since = len(self.seen)
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                return None

    async def quiet(self, since: int) -> None:
        """Waits for the reply under way to end (cutting it after 20 s) and the room to fall silent."""
        done = await self.wait(lambda s: isinstance(s.event, events.ResponseDone), since, 20)
        if done is None:
            await self.session.interrupt()
        session, room = self.session, self.room
        await self.until(
            lambda: not room.playing and session.current is None and session.turns.pending is None
        )
        await asyncio.sleep(1.0)  # the room's tail and the VAD's hangover

    async def reply_playing(self, since: int, after_s: float) -> Seen | None:
        first = await self.wait(lambda s: isinstance(s.event, events.AudioOut), since, 30)
        if first is not None:
            await asyncio.sleep(after_s)
        return first


async def echo_turns(client: RoomClient, tally: Tally, turns: int) -> None:
    """The user asks and then stays silent: every cut, pause or turn during the reply is echo."""
    for i in range(turns + 1):
        since = len(client.seen)
        await client.say(voice(QUESTIONS[i % len(QUESTIONS)], i))
        asked = len(client.seen)
        first = await client.wait(lambda s: isinstance(s.event, events.AudioOut), since, 30)
        if first is None:
            continue
        if i > 0:  # the first turn warms the caches
            tally.latencies.append(first.at - client.voice_ended_at)
        await client.quiet(since)
        if i == 0:
            continue
        tally.turns += 1
        after = client.seen[asked:]
        tally.self_cuts += sum(
            isinstance(s.event, events.Interrupted) and s.event.reason == "barge_in" for s in after
        )
        users = sum(isinstance(s.event, events.TranscriptFinal) and s.event.role == "user" for s in after)
        tally.echo_turns += max(0, users - 1)  # the first is the question itself
        tally.echo_pauses += sum(isinstance(s.event, events.SpeechStarted) for s in after)


async def cut_by(client: RoomClient, speech: np.ndarray, i: int) -> bool:
    """Asks for a long reply, says ``speech`` over it; True when the reply was cut for it."""
    since = len(client.seen)
    await client.say(voice(STORY.format(TOPICS[i % len(TOPICS)]), i))
    first = await client.reply_playing(since, after_s=1.2)
    if first is None:
        return False
    mark = len(client.seen)
    await client.say(speech)
    cut = await client.wait(
        lambda s: isinstance(s.event, events.Interrupted) and s.event.reason == "barge_in", mark, CUT_WITHIN_S
    )
    await client.session.interrupt()
    await client.quiet(len(client.seen))
    return cut is not None


async def barge_ins(client: RoomClient, tally: Tally, tries: int, humans: list[np.ndarray]) -> None:
    for i in range(tries):
        speech = humans[i // 2 % len(humans)] if humans and i % 2 else voice(INTERRUPTIONS[i % 4], i + 1)
        tally.barge_tries += 1
        tally.barge_cuts += await cut_by(client, speech, i)


async def backchannels(client: RoomClient, tally: Tally, tries: int) -> None:
    for i in range(tries):
        tally.backchannel_tries += 1
        tally.backchannel_cuts += await cut_by(client, voice(BACKCHANNELS[i % len(BACKCHANNELS)], i + 2), i)


async def paused_utterances(client: RoomClient, tally: Tally, tries: int) -> None:
    """'I'd like to book a table ... for two people tomorrow': a reply (or a user transcript) before
    the second half has been said is a false end of turn."""
    for i in range(tries):
        head, tail = PAUSED[i % len(PAUSED)]
        since = len(client.seen)
        utterance = np.concatenate(
            [voice(head, i), np.zeros(int(PAUSE_S * RATE), np.float32), voice(tail, i)]
        )
        await client.say(utterance)
        ended = len(client.seen)
        tally.paused_tries += 1
        early = [s.event for s in client.seen[since:ended]]
        tally.false_ends += any(isinstance(e, events.TranscriptFinal) and e.role == "user" for e in early)
        await client.quiet(ended)


def as_before(session: Session) -> None:
    """The turn-taking this bench was written to improve: the one-tap echo guard, no word-level
    echo check, every word a barge-in, silence alone ending turns. (Imported here so that the
    bench also runs on the engine as it was, for the real before.)"""
    from voxloop.engine.barge_in import SpokenWords
    from voxloop.engine.echo import EchoGuard

    session.echo = session.player.echo = EchoGuard(adaptive=False)
    session.player.spoken = SpokenWords(window_s=0.0)
    session.configure(
        barge_in=replace(session.config.barge_in, backchannels=frozenset()),
        turn=replace(session.config.turn, smart_turn=False),
    )


async def run_room(
    backends: Backends, spec: RoomSpec, turns: int, scenarios: list[str], before: bool
) -> Tally:
    session = new_session(backends, input_rate=RATE, output_rate=WIRE_RATE, prompt=PROMPT)
    if before:
        as_before(session)
    client = RoomClient(session, spec)
    tally = Tally()
    runs: dict[str, Callable[[], Awaitable[None]]] = {
        "echo": lambda: echo_turns(client, tally, turns),
        "barge": lambda: barge_ins(client, tally, turns, human_clips()),
        "backchannel": lambda: backchannels(client, tally, turns),
        "pause": lambda: paused_utterances(client, tally, turns),
    }
    try:
        for name in scenarios:
            started = time.monotonic()
            await runs[name]()
            print(f"{spec.name}: {name} took {time.monotonic() - started:.0f} s: {tally}", file=sys.stderr)
    finally:
        await client.close()
    return tally


def row(spec: RoomSpec, tally: Tally, label: str = "") -> str:
    def ratio(hits: int, tries: int) -> str:
        return f"{hits}/{tries}" if tries else "-"

    p50 = f"{np.median(tally.latencies) * 1000:.0f}" if tally.latencies else "-"
    cells = [
        ratio(tally.self_cuts, tally.turns),
        str(tally.echo_turns),
        str(tally.echo_pauses),
        ratio(tally.barge_cuts, tally.barge_tries),
        ratio(tally.backchannel_cuts, tally.backchannel_tries),
        ratio(tally.false_ends, tally.paused_tries),
        p50,
    ]
    widths = (8, 10, 8, 8, 11, 9, 10)
    return (
        f"| {label + spec.name:<32} | "
        + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        + " |"
    )


HEADER = "\n".join(
    [
        "| room                             | self-cut | echo turns | echo VAD | barge-in | backch. cut "
        "| false EOT | v2v p50 ms |",
        "|" + "|".join("-" * width for width in (34, 10, 12, 10, 10, 13, 11, 12)) + "|",
    ]
)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=20, help="turns (and tries) per scenario")
    parser.add_argument("--rooms", default="0,2", help="indexes into loopback + tests.room.ROOMS")
    parser.add_argument("--scenarios", default="echo,barge,backchannel,pause")
    parser.add_argument("--compare", action="store_true", help="also run each room as before (see as_before)")
    args = parser.parse_args()
    specs = [LOOPBACK, *ROOMS]
    chosen = [specs[int(i)] for i in args.rooms.split(",")]
    scenarios = args.scenarios.split(",")
    backends = Backends.create(Settings())
    backends.warmup()
    print(HEADER, flush=True)
    latencies = []
    for spec in chosen:
        for before in [True, False] if args.compare else [False]:
            tally = await run_room(backends, spec, args.turns, scenarios, before)
            if not before:
                latencies += tally.latencies
            print(row(spec, tally, "before: " if before else ""), flush=True)
    print(summary("voice-to-voice, all rooms", latencies))


if __name__ == "__main__":
    asyncio.run(main())
