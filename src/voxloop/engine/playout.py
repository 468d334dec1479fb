"""Reply audio pacing: frames leave at about real time with a small lead, so an interruption can
stop the sound at once and the server always knows how much the user has heard."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

LEAD_S = 0.16  # how far ahead of the listener's playback we may send


@dataclass
class Span:
    start: float  # seconds into the reply audio
    end: float
    text: str


@dataclass
class Playout:
    """The reply's timeline: what was sent, and when the client plays each part."""

    sample_rate: int
    lead_s: float = LEAD_S
    sent_s: float = 0.0  # audio sent so far, in seconds
    ends_at: float = 0.0  # wall time (monotonic) at which the client finishes what was sent
    spans: list[Span] = field(default_factory=list)

    def wait_before_next(self, now: float) -> float:
        return max(0.0, self.ends_at - now - self.lead_s)

    def sent(self, samples: int, now: float) -> float:
        """Records a frame as sent; returns the wall time at which the client starts playing it."""
        starts_at = max(self.ends_at, now)  # after an underrun the client plays on arrival
        duration = samples / self.sample_rate
        self.ends_at = starts_at + duration
        self.sent_s += duration
        return starts_at

    def played_s(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return max(0.0, self.sent_s - max(0.0, self.ends_at - now))

    def add_text(self, start: float, end: float, text: str) -> None:
        self.spans.append(Span(start, end, text))

    def heard_text(self, now: float | None = None, played_s: float | None = None) -> str:
        """The words the user heard by ``now``, or by ``played_s`` into the reply when the client
        says how far it played (Realtime's ``audio_end_ms``)."""
        return heard_text(self.spans, self.played_s(now) if played_s is None else played_s)


def heard_text(spans: list[Span], played_s: float) -> str:
    """Words spoken in the first ``played_s`` of reply audio: whole pieces played, plus the played
    share of the current one."""
    words: list[str] = []
    for span in spans:
        if played_s >= span.end:
            words.extend(span.text.split())
        elif played_s > span.start:
            piece = span.text.split()
            share = (played_s - span.start) / max(span.end - span.start, 1e-6)
            words.extend(piece[: int(len(piece) * share)])
    return " ".join(words)
