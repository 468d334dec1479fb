"""Conversation history: the system prompt plus the last ``max_messages`` turns."""

from __future__ import annotations

from voxloop.backends.llm.base import ChatMessage

SPOKEN_STYLE = (
    "Your words are spoken aloud by a voice: answer in one to three short, plain sentences, "
    "without lists, markdown or emoji."
)


class History:
    def __init__(self, prompt: str = "You are a helpful voice assistant.", max_messages: int = 20) -> None:
        self.prompt = prompt
        self.max_messages = max_messages
        self.messages: list[ChatMessage] = []

    def add(self, message: ChatMessage) -> None:
        self.messages.append(message)
        # Keep a bounded tail; 4x leaves room for tool exchanges inside the context window.
        del self.messages[: max(0, len(self.messages) - 4 * self.max_messages)]

    def system(self, language: str) -> ChatMessage:
        reply_in = "" if language == "en" else f" Always answer in the language with code '{language}'."
        return ChatMessage("system", f"{self.prompt.strip()}\n\n{SPOKEN_STYLE}{reply_in}")

    def for_llm(self, language: str, pending: list[ChatMessage] | None = None) -> list[ChatMessage]:
        """System prompt + recent turns (+ this turn's messages), never starting on an orphan tool result."""
        recent = (self.messages + (pending or []))[-self.max_messages :]
        while recent and recent[0].role == "tool":
            recent = recent[1:]
        return [self.system(language), *recent]
