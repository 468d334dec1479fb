"""Cuts streamed LLM text into speakable pieces: the first piece early (a clause), later ones whole
sentences, so the first words are spoken while the rest is still being written."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s|\n+")
_CLAUSE_END = re.compile(r"[,;:—–]\s")
_MARKUP = re.compile(r"<[^>\s]*>?|[*_#`~<>|{}\[\]\"]+")  # markdown, tags, JSON punctuation


class SpeechChunker:
    def __init__(self, first_min_words: int = 3, min_words: int = 5, max_chars: int = 240) -> None:
        self.first_min_words, self.min_words, self.max_chars = first_min_words, min_words, max_chars
        self._buffer = ""
        self._emitted = 0

    def push(self, text: str) -> list[str]:
        self._buffer += text
        pieces = []
        while (piece := self._take()) is not None:
            pieces.append(piece)
        return pieces

    def flush(self) -> list[str]:
        rest, self._buffer = clean(self._buffer), ""
        return [rest] if rest else []

    def _take(self) -> str | None:
        need = self.first_min_words if self._emitted == 0 else self.min_words
        boundary = None
        for pattern in (_SENTENCE_END, _CLAUSE_END) if self._emitted == 0 else (_SENTENCE_END,):
            for match in pattern.finditer(self._buffer):
                if len(self._buffer[: match.end()].split()) >= need:
                    boundary = match.end() if boundary is None else min(boundary, match.end())
                    break
        if boundary is None and len(self._buffer) > self.max_chars:
            boundary = self._buffer.rfind(" ", 0, self.max_chars) + 1 or self.max_chars
        if boundary is None:
            return None
        piece, self._buffer = clean(self._buffer[:boundary]), self._buffer[boundary:]
        if not piece:
            return None if not self._buffer.strip() else self._take()
        self._emitted += 1
        return piece


def clean(text: str) -> str:
    """Drops markdown, tags and JSON punctuation the voice should not read aloud."""
    return " ".join(_MARKUP.sub(" ", text).split())
