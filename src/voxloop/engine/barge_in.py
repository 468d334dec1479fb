"""When speech over a reply counts as an interruption.

Speech during a reply pauses it at once; the paused speech is transcribed every
``check_every_s`` and the reply is cut only when the words qualify under these rules (Soca's
barge-in rules generalised). Speech that does not qualify within ``window_s`` lets the reply go on.

Two kinds of words never qualify: backchannels ("yeah", "okay", "mm-hmm": the listener saying go
on), and the bot's own words coming back through the user's speaker (``SpokenWords``), which
the echo canceller let through.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from voxloop.backends.stt.base import Transcript

FILLERS = frozenset(
    {"uh", "um", "umm", "hmm", "hm", "mm", "mhm", "mm-hmm", "uh-huh", "ah", "oh", "er", "erm", "eh"}
)
BACKCHANNELS = frozenset(
    {
        "yeah",
        "yes",
        "yep",
        "yup",
        "ok",
        "okay",
        "right",
        "sure",
        "uh-huh",
        "mm-hmm",
        "mhm",
        "aha",
        "i see",
        "cool",
    }
    | {"alright", "all right", "got it", "true", "exactly", "nice", "wow", "great", "good", "ya", "yah"}
)
ECHO_WINDOW_S = 6.0  # how long the bot's words may come back (reply lead + echo delay + STT time)


def meaningful_words(text: str, fillers: frozenset[str]) -> list[str]:
    """The words of ``text`` without punctuation and fillers: a cough transcribes as nothing, a
    backchannel as fillers."""
    words = (word.strip(".,!?;:-'\"…").lower() for word in text.split())
    return [word for word in words if word and word not in fillers]


def is_backchannel(words: list[str], backchannels: frozenset[str]) -> bool:
    """Only listener noises ("yeah okay", "all right", "mm-hmm"): the user lets the bot go on."""
    if not words or not backchannels:
        return False
    phrase = " ".join(words)
    for multi in sorted((b for b in backchannels if " " in b), key=len, reverse=True):
        phrase = phrase.replace(multi, " ")
    return all(word in backchannels for word in phrase.split())


@dataclass
class BargeInRules:
    enabled: bool = True  # False: the user's speech never pauses or cuts a reply
    min_words: int = 1  # meaningful words (fillers aside)
    min_chars: int = 0  # characters of those words
    min_confidence: float = 0.0  # the STT's confidence in them, 0..1
    window_s: float = 2.0  # speech this long without qualifying words lets the reply resume
    cooldown_s: float = 0.0  # least time between two barge-ins
    check_every_s: float = 0.3  # how often the paused-for speech is transcribed
    filler_words: frozenset[str] = FILLERS
    backchannels: frozenset[str] = BACKCHANNELS  # empty: every non-filler word counts (Soca)

    def backchannel(self, text: str) -> bool:
        return is_backchannel(meaningful_words(text, self.filler_words), self.backchannels)

    def qualifies(self, transcript: Transcript) -> bool:
        words = meaningful_words(transcript.text, self.filler_words)
        return (
            len(words) >= max(1, self.min_words)
            and not is_backchannel(words, self.backchannels)
            and sum(len(word) for word in words) >= self.min_chars
            and transcript.confidence >= self.min_confidence
        )


def _normalise(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def _same_word(a: str, b: str) -> bool:
    return a == b or (min(len(a), len(b)) >= 4 and a[:4] == b[:4] and abs(len(a) - len(b)) <= 3)


class SpokenWords:
    """The bot's words as the user's speaker played them, to tell its echo from the user."""

    def __init__(self, window_s: float = ECHO_WINDOW_S) -> None:
        self.window_s = window_s
        self._words: deque[tuple[float, str]] = deque(maxlen=400)  # (played at, word)

    def played(self, text: str, starts_at: float, duration_s: float) -> None:
        """A piece of the reply whose sound starts at ``starts_at`` (monotonic) for ``duration_s``."""
        words = _normalise(text)
        for i, word in enumerate(words):
            self._words.append((starts_at + duration_s * i / max(len(words), 1), word))

    def echoes(self, text: str, now: float) -> bool:
        """Whether ``text`` is the bot's recent words heard again: all of them in order, but one
        word in four (the STT mishears a quiet, filtered echo)."""
        heard = _normalise(text)
        recent = [word for at, word in self._words if now - self.window_s <= at <= now]
        if not heard or not recent:
            return False
        return len(heard) - _common_in_order(heard, recent) <= len(heard) // 4


def _common_in_order(heard: list[str], spoken: list[str]) -> int:
    """The longest common subsequence of two word lists (short lists: plain dynamic programming)."""
    previous = [0] * (len(spoken) + 1)
    for word in heard:
        current = [0]
        for j, other in enumerate(spoken, 1):
            current.append(
                previous[j - 1] + 1 if _same_word(word, other) else max(previous[j], current[j - 1])
            )
        previous = current
    return previous[-1]
