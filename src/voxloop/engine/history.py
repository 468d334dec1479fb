"""Conversation history: the system prompt plus the last ``max_messages`` turns."""

from __future__ import annotations

from voxloop.backends.llm.base import ChatMessage

SPOKEN_STYLE = (
    "Your words are spoken aloud by a voice: answer in one to three short, plain sentences, "
    "without lists, markdown or emoji."
)


class History:
    """The context holds at most ``max_messages`` past messages. When it overflows, the oldest half
    goes at once rather than one message per turn: a window sliding every turn would change the
    prompt right after the system message, and the LLM would re-read the whole history (about a
    second on 2 cores) instead of reusing its cached prefix."""

    def __init__(self, prompt: str = "You are a helpful voice assistant.", max_messages: int = 20) -> None:
        self.prompt = prompt
        self.max_messages = max_messages
        self.messages: list[ChatMessage] = []

    def add(self, message: ChatMessage) -> None:
        self.messages.append(message)
        if len(self.messages) > self.max_messages:
            del self.messages[: len(self.messages) - max(1, self.max_messages // 2)]
            while self.messages and self.messages[0].role != "user":  # start on a user turn, never
                del self.messages[0]  # on an assistant reply or an orphan tool result

    def system(self, language: str) -> ChatMessage:
        reply_in = "" if language == "en" else f" Always answer in the language with code '{language}'."
        return ChatMessage("system", f"{self.prompt.strip()}\n\n{SPOKEN_STYLE}{reply_in}")

    def for_llm(self, language: str, pending: list[ChatMessage] | None = None) -> list[ChatMessage]:
        """System prompt + the kept history + this turn's messages."""
        return [self.system(language), *self.messages, *(pending or [])]
