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
from difflib import SequenceMatcher
from functools import lru_cache
from itertools import pairwise

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
PLAY_SLACK_S = 0.5  # a piece's words are timed evenly over it: one may play a little before its time
# The share of an utterance's sound the echo canceller let through (``EchoGuard.kept``): below
# ECHO_KEPT it is the bot's echo whatever its words; below PARTLY_ECHO_KEPT it is echo when any of
# its words are the bot's ("Harris is good." for "Paris is..."). The user keeps 0.66-0.80 at -6 dB
# (0.32-0.47 in a 0 dB room), the echo alone 0.1-0.37 (docs/turn-taking.md).
ECHO_KEPT = 0.25
PARTLY_ECHO_KEPT = 0.45
MAX_HEARD_WORDS = 16  # a barge-in check transcribes at most ~2 s: this bounds the matching work


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


NUMBERS = dict(enumerate("zero one two three four five six seven eight nine ten eleven twelve".split()))
# Spellings that sound alike, rewritten in turn ("pattern>sound"): a key for how a word sounds.
_SOUNDS = [
    (re.compile(pattern), sound)
    for pattern, sound in (
        rule.split(">")
        for rule in r"x>ks tch>x sch>sk ph>f th>0 sh>x ch>x ck>k wh>w gh> c(?=[eiy])>s [cgq]>k b>p d>t v>f "
        r"z>s j>x [hwy](?![aeiou])> [aeiou']> (.)\1+>\1".split()
    )
]
# Words heard alike: sound keys this similar (difflib ratio) and spellings this similar too.
ALIKE_SOUND, ALIKE_SPELLING = 0.6, 0.7  # "Harris"/"Paris" 0.67/0.73; "stop"/"story" 0.67/0.67
STRONG = 2  # sound-key letters a word needs to count on its own ("stop", not "on" or "a")


def _normalise(text: str) -> list[str]:
    words = re.sub(r"[^\w\s']", " ", text.lower()).split()
    return [NUMBERS.get(int(word), word) if word.isdigit() else word for word in words]


@lru_cache(maxsize=8192)
def sound_key(word: str) -> str:
    """A cheap phonetic key (consonants only, voiced and voiceless pairs merged): Whisper mishears
    a quiet, reverberant echo as words that sound alike ("Harris" for "Paris", "fast" for "vast",
    "this guy" for "the sky"), not as the same letters."""
    for pattern, sound in _SOUNDS:
        word = pattern.sub(sound, word)
    return word


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

    def echoes(self, text: str, now: float, kept: float = 1.0) -> bool:
        """Whether ``text`` is the bot's recent words heard again. What leaks past the canceller is
        quiet and reverberant: Whisper hears it as words that sound alike, split differently
        ("this guy is" for "the sky is"), with now and then a word of its own. So each heard word
        is matched by sound against the words played in the window, and the user is heard only
        where words that carry sound ("stop", not "a", "on", "the") are left unexplained: any of
        up to four, one in four of more. Words of one sound or none ("no", "oh") alone must be
        words the bot played.

        ``kept`` is the share of the utterance's sound the echo canceller let through: the user,
        alone or over the bot, keeps most of it; the bot's echo alone keeps little, and Whisper
        makes up words from what is left ("Thank you.", "This one."), which no matching explains,
        or adds them to the bot's ("Harris is good.").
        """
        heard = _normalise(text)[:MAX_HEARD_WORDS]
        recent = [word for at, word in self._words if now - self.window_s <= at <= now + PLAY_SLACK_S]
        if not heard or not recent:
            return False  # the bot said nothing lately: nothing of it can come back
        if kept < ECHO_KEPT:
            return True
        strong = [len(sound_key(word)) >= STRONG for word in heard]
        if not any(strong):
            return all(word in recent for word in heard)
        explained = [e for s, e in zip(strong, _explained(heard, recent), strict=True) if s]
        if kept < PARTLY_ECHO_KEPT and any(explained):
            return True  # mostly echo by its sound, and some of the bot's words in it
        return explained.count(False) <= (len(explained) - 1) // 4


def _explained(heard: list[str], spoken: list[str]) -> list[bool]:
    """For each heard word, whether it sounds like one of the ``spoken`` words (or two of them
    run together), or it and a neighbour run together sound the same ("this guy" for "the sky")."""
    units = {*spoken, *("".join(pair) for pair in pairwise(spoken))}
    unit_keys = {sound_key(unit) for unit in units}
    pairs = [sound_key("".join(pair)) in unit_keys for pair in pairwise(heard)]
    return [
        any(sounds_alike(word, unit) for unit in units)
        or (i > 0 and pairs[i - 1])
        or (i < len(pairs) and pairs[i])
        for i, word in enumerate(heard)
    ]


@lru_cache(maxsize=8192)  # the same recent words come back at every check
def sounds_alike(a: str, b: str) -> bool:
    """The same sound key, or a close one spelt much alike ("Harris" and "Paris"; not "stop" and
    "story" or "vast", whose keys are as close)."""
    key_a, key_b = sound_key(a), sound_key(b)
    return key_a == key_b or (_close(key_a, key_b, ALIKE_SOUND) and _close(a, b, ALIKE_SPELLING))


def _close(a: str, b: str, least: float) -> bool:
    matcher = SequenceMatcher(None, a, b)  # cheap upper bounds first: most pairs are far apart
    return all(ratio() >= least for ratio in (matcher.real_quick_ratio, matcher.quick_ratio, matcher.ratio))
