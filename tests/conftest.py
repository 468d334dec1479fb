from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.server import RunningServer, start_server

# Greedy decoding in every test (servers inherit the environment): with sampling the 0.5B model now
# and then answers "London is the capital of France." or writes a tool call as prose, and a test of
# the server's behaviour fails on the model's luck. A test that wants sampling sets its own.
os.environ.setdefault("VOXLOOP_LLM_TEMPERATURE", "0")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real server on the embedded models for the whole session, with API key 'test-key'."""
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    running.stop()
