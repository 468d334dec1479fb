"""Unit tests of the Realtime session shapes (GA and beta), items and truncation arithmetic."""

from __future__ import annotations

import pytest

from voxloop.protocols.realtime.config import RealtimeConfig, apply_update, is_beta_shape, render
from voxloop.protocols.realtime.items import Item, Span, parse_item
from voxloop.protocols.realtime.responses import ResponseWriter
from voxloop.protocols.realtime.wire import RealtimeError, rename


def test_ga_session_update_round_trips() -> None:
    session = {
        "type": "realtime",
        "instructions": "Be brief.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "transcription": {"model": "whisper-1"},
                "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 700,
                                   "prefix_padding_ms": 200, "create_response": False},
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
        },
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "tool_choice": "auto",
    }  # fmt: skip
    config = apply_update(RealtimeConfig(), session)
    assert (config.input_format, config.output_format) == ("g711_ulaw", "pcm16")
    assert (config.input_rate, config.output_rate) == (8000, 24000)
    assert config.turn_detection is not None and config.turn_detection["threshold"] == 0.6
    assert config.turn_detection["create_response"] is False and config.turn_detection["interrupt_response"]
    rendered = render(config, beta=False, session_id="sess_1", model="m")
    assert rendered["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert rendered["audio"]["output"]["voice"] == "marin" and rendered["tools"][0]["name"] == "get_weather"
    assert not is_beta_shape(session)


def test_beta_session_update_and_null_turn_detection() -> None:
    session = {"modalities": ["text"], "input_audio_format": "g711_alaw", "turn_detection": None,
               "temperature": 0.7, "max_response_output_tokens": 200, "voice": "F1"}  # fmt: skip
    assert is_beta_shape(session)
    config = apply_update(RealtimeConfig(), session)
    assert not config.audio_out and config.turn_detection is None and config.max_output_tokens == 200
    rendered = render(config, beta=True, session_id="sess_1", model="m")
    assert rendered["input_audio_format"] == "g711_alaw" and rendered["modalities"] == ["text"]


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ("nope", "session"),
        ({"type": "transcription"}, "session.type"),
        ({"input_audio_format": "mp3"}, "session.input_audio_format"),
        (
            {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            "session.audio.input.format.rate",
        ),
        ({"turn_detection": {"type": "server_vad", "threshold": 3}}, "session.turn_detection.threshold"),
        ({"turn_detection": {"type": "magic"}}, "session.turn_detection"),
        ({"tools": [{"type": "function"}]}, "session.tools[0].name"),
        ({"tool_choice": {"type": "function", "name": "ghost"}}, "session.tool_choice"),
        ({"temperature": "hot"}, "session.temperature"),
        ({"instructions": 5}, "session.instructions"),
    ],
)
def test_bad_session_updates_name_the_parameter_and_change_nothing(session: object, param: str) -> None:
    config = RealtimeConfig()
    with pytest.raises(RealtimeError) as error:
        apply_update(config, session)
    assert error.value.param == param
    assert config == RealtimeConfig()


def test_items_parse_and_render_in_both_dialects() -> None:
    item = parse_item({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]})
    assert item.render(beta=False)["content"] == [{"type": "input_text", "text": "Hi"}]
    reply = Item("message", role="assistant", audio=True, text="Hello there")
    assert reply.render(beta=False)["content"][0]["type"] == "output_audio"
    assert reply.render(beta=True)["content"][0]["type"] == "audio"
    with pytest.raises(RealtimeError):
        parse_item({"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "!!"}]})
    with pytest.raises(RealtimeError):
        parse_item({"type": "function_call_output", "call_id": 3})


def test_heard_text_keeps_whole_pieces_and_the_played_share() -> None:
    item = Item("message", role="assistant", audio=True, text="one two three four five six")
    item.spans = [Span(0.0, 1.0, "one two"), Span(1.0, 3.0, "three four five six")]
    item.audio_s = 3.0
    assert item.heard_text(0.4) == ""
    assert item.heard_text(1.0) == "one two"
    assert item.heard_text(2.0) == "one two three four"
    assert item.heard_text(3.0) == "one two three four five six"


async def test_a_reply_cut_mid_piece_keeps_the_words_of_the_part_played() -> None:
    """The writer spreads a piece's words over the whole piece, not over what was sent of it: two
    seconds sent of a four-second piece of eight words holds four of them at 2 s, two at 1 s."""
    sent: list[dict] = []

    async def send(event: dict) -> None:
        sent.append(event)

    writer = ResponseWriter(send, {}, beta=lambda: False)
    state = await writer.create(RealtimeConfig(), context_chars=0)
    words = "one two three four five six seven eight"
    rate, frame = 16000, bytes(2 * 1600)  # 0.1 s frames
    for _ in range(20):  # 2 s of a 4 s piece, then the reply is cut
        await writer.audio(state, frame, rate, words, piece=0, piece_s=4.0)
    item = state.message
    assert item is not None and item.audio_s == pytest.approx(2.0)
    item.text = "one two three four"  # what the engine kept as heard when it was cut
    assert item.heard_text(1.0) == "one two"
    assert item.heard_text(2.0) == "one two three four"
    assert sent[0]["type"] == "response.created"


def test_event_names_per_dialect() -> None:
    assert rename({"type": "response.output_audio.delta"}, beta=True) == {"type": "response.audio.delta"}
    assert rename({"type": "response.output_audio.delta"}, beta=False) == {
        "type": "response.output_audio.delta"
    }
    assert rename({"type": "conversation.item.added"}, beta=True) is None
    assert rename({"type": "conversation.item.created"}, beta=False) is None
