"""When speech over a reply counts as an interruption.

Speech during a reply pauses it at once; the paused speech is transcribed every
``check_every_s`` and the reply is cut only when the words qualify under these rules (Soca's
barge-in rules generalised). Speech that does not qualify within ``window_s`` lets the reply go on.
"""

from __future__ import annotations

from dataclasses import dataclass

from voxloop.backends.stt.base import Transcript

FILLERS = frozenset(
    {"uh", "um", "umm", "hmm", "hm", "mm", "mhm", "mm-hmm", "uh-huh", "ah", "oh", "er", "erm", "eh"}
)


def meaningful_words(text: str, fillers: frozenset[str]) -> list[str]:
    """The words of ``text`` without punctuation and fillers: a cough transcribes as nothing, a
    backchannel as fillers."""
    words = (word.strip(".,!?;:-'\"…").lower() for word in text.split())
    return [word for word in words if word and word not in fillers]


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

    def qualifies(self, transcript: Transcript) -> bool:
        words = meaningful_words(transcript.text, self.filler_words)
        return (
            len(words) >= max(1, self.min_words)
            and sum(len(word) for word in words) >= self.min_chars
            and transcript.confidence >= self.min_confidence
        )
