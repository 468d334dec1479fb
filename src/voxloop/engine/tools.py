"""Tools the LLM may call: server-side ones registered in Python, client-side ones declared by the
client over its protocol (the client runs them and sends the result back)."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

from voxloop.backends.llm.base import ToolSpec

ToolFunction = Callable[..., Any | Awaitable[Any]]


class ToolRegistry:
    """Server-side tools. ``@registry.tool(description, parameters)`` registers a function."""

    def __init__(self) -> None:
        self._tools: dict[str, tuple[ToolSpec, ToolFunction]] = {}

    def tool(self, description: str, parameters: dict[str, Any] | None = None):
        def register(function: ToolFunction) -> ToolFunction:
            spec = ToolSpec(
                function.__name__, description, parameters or {"type": "object", "properties": {}}
            )
            self._tools[spec.name] = (spec, function)
            return function

        return register

    def subset(self, names: list[str]) -> ToolRegistry:
        """A registry with only the named tools (configuration picks which built-ins are on)."""
        unknown = sorted(set(names) - set(self._tools))
        if unknown:
            raise ValueError(f"unknown server tools {unknown}; available: {sorted(self._tools)}")
        chosen = ToolRegistry()
        chosen._tools = {name: self._tools[name] for name in names}
        return chosen

    def specs(self) -> list[ToolSpec]:
        return [spec for spec, _ in self._tools.values()]

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Runs a tool; its result (or its failure) becomes text for the LLM. Sync tools run in a thread."""
        _, function = self._tools[name]
        parameters = inspect.signature(function).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            # Small models echo the schema ({"type": "object", ...}) as arguments: drop what the
            # function does not take rather than fail the call.
            arguments = {key: value for key, value in arguments.items() if key in parameters}
        try:
            if inspect.iscoroutinefunction(function):
                result = await function(**arguments)
            else:
                result = await asyncio.to_thread(function, **arguments)
        except Exception as exc:
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        return result if isinstance(result, str) else json.dumps(result)


def parse_client_tools(data: object) -> list[ToolSpec]:
    """Client tool declarations: OpenAI style ``{"type": "function", "function": {...}}`` or flat
    ``{"name", "description", "parameters"}``."""
    if not isinstance(data, list):
        raise ValueError("tools must be a list of tool definitions")
    specs = []
    for entry in data:
        if not isinstance(entry, dict):
            raise ValueError("each tool must be an object with a name")
        body = entry.get("function", entry) if isinstance(entry.get("function"), dict) else entry
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError("each tool needs a 'name'")
        parameters = (
            body.get("parameters") or body.get("input_schema") or {"type": "object", "properties": {}}
        )
        if not isinstance(parameters, dict):
            raise ValueError(f"tool {name!r}: 'parameters' must be a JSON schema object")
        specs.append(ToolSpec(name.strip(), str(body.get("description", "")), parameters))
    return specs


# Said when a tool takes a while, in the session's language (English for any other).
FILLERS = {
    "en": "One moment, please.", "es": "Un momento, por favor.", "fr": "Un instant, s'il vous plaît.",
    "pt": "Um momento, por favor.", "ko": "잠시만 기다려 주세요.", "it": "Un momento, per favore.",
    "de": "Einen Moment, bitte.", "ca": "Un moment, si us plau.", "eu": "Momentu bat, mesedez.",
    "id": "Tunggu sebentar.", "nl": "Een ogenblik, alstublieft.", "pl": "Chwileczkę, proszę.",
    "ru": "Одну минуту, пожалуйста.", "tr": "Bir dakika, lütfen.", "am": "እባክዎ ትንሽ ይጠብቁ።",
    "ti": "በጃኹም ቁሩብ ተጸበዩ።", "om": "Maaloo xiqqoo eegaa.", "so": "Fadlan daqiiqad sug.",
}  # fmt: skip


def filler_for(language: str) -> str:
    return FILLERS.get(language, FILLERS["en"])


builtin_tools = ToolRegistry()  # enabled by name with VOXLOOP_SERVER_TOOLS


@builtin_tools.tool("Get the current local date and time.")
def get_current_time() -> str:
    return dt.datetime.now().astimezone().strftime("%A %d %B %Y, %H:%M %Z")
