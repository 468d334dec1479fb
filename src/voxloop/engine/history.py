"""Conversation history: the system prompt plus the last ``max_messages`` turns."""

from __future__ import annotations

from collections.abc import Callable

from voxloop.backends.llm.base import ChatMessage

SPOKEN_STYLE = (
    "Your words are spoken aloud by a voice: answer in one to three short, plain sentences, "
    "without lists, markdown or emoji."
)
VERBATIM = "[verbatim]"  # a prompt starting with this is used as written: no spoken-style suffix


class History:
    """The context holds at most ``max_messages`` past messages. When it overflows, the oldest half
    goes at once rather than one message per turn: a window sliding every turn would change the
    prompt right after the system message, and the LLM would re-read the whole history (about a
    second on 2 cores) instead of reusing its cached prefix."""

    def __init__(self, prompt: str = "You are a helpful voice assistant.", max_messages: int = 20) -> None:
        self.prompt = prompt
        self.max_messages = max_messages
        self.spoken_style = True  # VOXLOOP_SPOKEN_STYLE: append SPOKEN_STYLE to the prompt
        self.messages: list[ChatMessage] = []
        self.listeners: list[Callable[[list[ChatMessage]], None]] = []  # told of each committed turn

    def extend(self, messages: list[ChatMessage]) -> None:
        """Adds a whole turn, then trims: trimming inside a turn could orphan its tool results."""
        self.messages.extend(messages)
        for listener in self.listeners:
            listener(messages)
        if len(self.messages) <= self.max_messages:
            return
        # Cut at a turn start (a user message), keeping about half, and always the latest turn whole.
        starts = [i for i, message in enumerate(self.messages) if message.role == "user"] or [0]
        keep = max(1, self.max_messages // 2)
        cut = next((i for i in starts if len(self.messages) - i <= keep), starts[-1])
        del self.messages[:cut]

    def system(self, language: str) -> ChatMessage:
        prompt = self.prompt.strip()
        verbatim = prompt.startswith(VERBATIM)
        prompt = prompt.removeprefix(VERBATIM).strip()
        reply_in = "" if language == "en" else f"Always answer in the language with code '{language}'."
        style = SPOKEN_STYLE if self.spoken_style and not verbatim else ""
        suffix = " ".join(part for part in (style, reply_in) if part)
        return ChatMessage("system", f"{prompt}\n\n{suffix}" if suffix else prompt)

    def for_llm(self, language: str, pending: list[ChatMessage] | None = None) -> list[ChatMessage]:
        """System prompt + the kept history + this turn's messages."""
        return [self.system(language), *self.messages, *(pending or [])]
