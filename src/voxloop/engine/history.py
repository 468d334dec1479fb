"""Conversation history: the system prompt plus the last ``max_messages`` turns."""

from __future__ import annotations

from typing import Protocol

from voxloop.backends.llm.base import ChatMessage

# A small model answers "Always answer in id." with "id id id"; it knows the languages by name.
LANGUAGE_NAMES = {
    "es": "Spanish", "fr": "French", "pt": "Portuguese", "ko": "Korean", "it": "Italian",
    "de": "German", "ca": "Catalan", "eu": "Basque", "id": "Indonesian", "nl": "Dutch",
    "pl": "Polish", "ru": "Russian", "tr": "Turkish", "am": "Amharic", "om": "Oromo",
    "ti": "Tigrinya", "so": "Somali",
}  # fmt: skip
SPOKEN_STYLE = (
    "Your words are spoken aloud by a voice: answer in one to three short, plain sentences, "
    "without lists, markdown or emoji."
)
VERBATIM = "[verbatim]"  # a prompt starting with this is used as written: no spoken-style suffix


class HistoryListener(Protocol):
    """Told of every change to the history, in order (the conversation store keeps a copy)."""

    def inserted(self, messages: list[ChatMessage]) -> None: ...

    def truncated(self, message: ChatMessage) -> None: ...  # its content is now what was heard

    def deleted(self, message: ChatMessage) -> None: ...


class History:
    """The context holds at most ``max_messages`` past messages. When it overflows, the oldest half
    goes at once rather than one message per turn: a window sliding every turn would change the
    prompt right after the system message, and the LLM would re-read the whole history (about a
    second on 2 cores) instead of reusing its cached prefix.

    Messages are changed only through ``insert``, ``truncate`` and ``delete``, by their ``id``, so
    every listener sees every change and keeps what the LLM sees."""

    def __init__(self, prompt: str = "You are a helpful voice assistant.", max_messages: int = 20) -> None:
        self.prompt = prompt
        self.max_messages = max_messages
        self.spoken_style = True  # VOXLOOP_SPOKEN_STYLE: append SPOKEN_STYLE to the prompt
        self.messages: list[ChatMessage] = []
        self.listeners: list[HistoryListener] = []

    def insert(self, messages: list[ChatMessage]) -> None:
        """Adds a whole turn, then trims: trimming inside a turn could orphan its tool results."""
        self.messages.extend(messages)
        for listener in self.listeners:
            listener.inserted(messages)
        if len(self.messages) <= self.max_messages:
            return
        # Cut at a turn start (a user message), keeping about half, and always the latest turn whole.
        starts = [i for i, message in enumerate(self.messages) if message.role == "user"] or [0]
        keep = max(1, self.max_messages // 2)
        cut = next((i for i in starts if len(self.messages) - i <= keep), starts[-1])
        del self.messages[:cut]

    def find(self, message_id: str) -> ChatMessage | None:
        return next((message for message in self.messages if message.id == message_id), None)

    def truncate(self, message_id: str, heard: str) -> None:
        """The message becomes ``heard`` (what the user heard of a reply); with nothing heard it goes."""
        message = self.find(message_id)
        if message is None:
            return
        if not heard.strip():
            self.delete(message_id)
            return
        message.content = heard
        for listener in self.listeners:
            listener.truncated(message)

    def delete(self, message_id: str) -> None:
        message = self.find(message_id)
        if message is None:
            return
        self.messages.remove(message)
        for listener in self.listeners:
            listener.deleted(message)

    def system(self, language: str) -> ChatMessage:
        prompt = self.prompt.strip()
        verbatim = prompt.startswith(VERBATIM)
        prompt = prompt.removeprefix(VERBATIM).strip()
        name = LANGUAGE_NAMES.get(language, f"the language with code '{language}'")
        reply_in = "" if language == "en" else f"Always answer in {name}."
        style = SPOKEN_STYLE if self.spoken_style and not verbatim else ""
        suffix = " ".join(part for part in (style, reply_in) if part)
        return ChatMessage("system", f"{prompt}\n\n{suffix}" if suffix else prompt)

    def for_llm(self, language: str, pending: list[ChatMessage] | None = None) -> list[ChatMessage]:
        """System prompt + the kept history + this turn's messages."""
        return [self.system(language), *self.messages, *(pending or [])]
