"""Turn-taking rules on scripted input: backchannels, the bot's own words coming back, Soca's rules."""

from __future__ import annotations

from voxloop.backends.stt.base import Transcript
from voxloop.engine.barge_in import BargeInRules, SpokenWords


def said(text: str, confidence: float = 0.9) -> Transcript:
    return Transcript(text, "en", 1.0, confidence=confidence)


def test_backchannels_do_not_cut_the_bot_but_words_with_them_do() -> None:
    rules = BargeInRules()
    for text in ("Yeah.", "Uh-huh.", "Okay.", "Right.", "Mm-hmm.", "Yeah, okay.", "All right.", "Oh, I see."):
        assert not rules.qualifies(said(text)), text
    for text in ("Okay, stop.", "Wait.", "Right, but what about Rome?", "Turn right."):
        assert rules.qualifies(said(text)), text


def test_without_backchannels_every_non_filler_word_counts_as_soca_documents() -> None:
    soca = BargeInRules(backchannels=frozenset())
    assert soca.qualifies(said("Okay.")) and soca.qualifies(said("Yeah."))
    assert not soca.qualifies(said("Um, uh."))


def test_the_bots_recent_words_are_its_echo_not_the_user() -> None:
    spoken = SpokenWords(window_s=6.0)
    spoken.played(
        "The Moon is about three hundred thousand kilometres away.", starts_at=100.0, duration_s=3.0
    )
    spoken.played("Paris is the capital of France.", starts_at=103.0, duration_s=2.0)
    assert spoken.echoes("The Moon.", now=104.0)
    assert spoken.echoes("Paris is the...", now=104.5)
    assert spoken.echoes("is about three hundred thousand kilometers", now=104.0)  # one word misheard
    assert not spoken.echoes("Stop, tell me about Rome instead.", now=104.0)
    assert not spoken.echoes("Wait.", now=104.0)
    assert not spoken.echoes("Paris is the capital of France.", now=120.0)  # long ago: the user
    assert not spoken.echoes("Paris is the capital of France.", now=101.0)  # not played yet
    assert not spoken.echoes("", now=104.0)


def test_echo_misheard_as_words_that_sound_alike_is_still_echo() -> None:
    """Transcripts of the bot's echo that cut it on the room bench (-6 dB, RT60 0.4 s, fan 15 dB):
    Whisper hears a quiet, reverberant echo as near-misses, split differently, with a word of its
    own now and then."""
    heard_over = {
        "Paris is the capital city of France.": ["Harris is"],
        "The universe is vast and complex.": ["fast and"],
        "The sky is blue.": ["This guy is..."],
        "The universe begins.": ["Universe is begin."],
        "Sure, tell me a story about a lighthouse in five sentences.": ["Tell history.", "in 5 sentences"],
    }
    for said, heard in heard_over.items():
        spoken = SpokenWords(window_s=6.0)
        spoken.played(said, starts_at=100.0, duration_s=2.0)
        for text in heard:
            assert spoken.echoes(text, now=102.5), (said, text)


def test_the_user_talking_over_the_bot_is_not_its_echo() -> None:
    """Interruptions said over a reply are the user even when they share a word or two with it."""
    heard_over = {
        "The universe is vast and complex.": ["Stop.", "Wait.", "No.", "Stop, I have a different question."],
        "A small cat in a funny story.": ["Stop."],  # "stop" sounds a little like "story"
        "Time to trade in a small cat.": ["Did you read it?"],
        "A man named Sam went to a bar.": [
            "Wait, what about tomorrow?",
            "Sorry, can we talk about something else?",
        ],
        "What about the weather in Paris? It is sunny.": ["Wait, what about tomorrow?"],
        "Paris is the capital of France.": [
            "No, I meant Paris in France.",
            "What is the capital of Italy?",
            "Is Paris bigger than London?",
        ],
        "The weather today is sunny and warm.": ["Wait, tell me about the weather instead."],
        "A robot is a machine that can do various tasks.": ["Hold on, what time is it in London?"],
    }
    for said, heard in heard_over.items():
        spoken = SpokenWords(window_s=6.0)
        spoken.played(said, starts_at=100.0, duration_s=2.0)
        for text in heard:
            assert not spoken.echoes(text, now=102.5), (said, text)


def test_sound_the_canceller_mostly_removed_is_echo_and_a_bot_word_in_it_confirms_it() -> None:
    """``kept``: the share of the speech's sound the echo canceller let through (the user keeps
    0.66-0.80 at -6 dB, the echo alone 0.1-0.37)."""
    spoken = SpokenWords(window_s=6.0)
    spoken.played("Paris is the capital of France.", starts_at=100.0, duration_s=2.0)
    assert spoken.echoes("Thank you.", now=102.5, kept=0.1)  # words made up from the leftovers
    assert not spoken.echoes("Thank you.", now=102.5, kept=0.7)  # the user
    assert spoken.echoes("Harris is good.", now=102.5, kept=0.32)  # the bot's words and one made up
    assert not spoken.echoes("Harris is good.", now=102.5, kept=0.7)
    assert not spoken.echoes("Stop.", now=102.5, kept=0.32)  # a bare "stop" in a loud (0 dB) room
    assert not spoken.echoes("No, I meant Paris in France.", now=102.5, kept=0.66)
    # Long after the bot spoke nothing is its echo, however little the guard let through.
    assert not spoken.echoes("Thank you.", now=120.0, kept=0.1)
