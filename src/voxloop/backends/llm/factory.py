"""Build the configured language model backend."""

from __future__ import annotations

from voxloop.backends.llm.base import LanguageModel
from voxloop.config import Settings


def create_llm(settings: Settings) -> LanguageModel:
    # Imported on demand: loading llama.cpp is wasted work when a remote server answers.
    if settings.llm_backend == "openai":
        urls = [url.strip() for url in settings.llm_base_url.split(",") if url.strip()]
        if len(urls) > 1:
            from voxloop.backends.llm.pool import LlmPool

            return LlmPool(settings, urls)
        from voxloop.backends.llm.openai_http import OpenAiLlm

        return OpenAiLlm(settings)
    if settings.llm_backend == "llama":
        from voxloop.backends.llm.llama import LlamaLlm

        return LlamaLlm(settings)
    raise ValueError(f"unknown llm_backend {settings.llm_backend!r}; choose 'llama' or 'openai'")
