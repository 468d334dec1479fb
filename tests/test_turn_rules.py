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
