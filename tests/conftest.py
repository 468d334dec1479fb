from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.server import RunningServer, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real server on the embedded models for the whole session, with API key 'test-key'."""
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    running.stop()
