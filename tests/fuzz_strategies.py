"""Shared pieces of the fuzz tests: hostile JSON values and frames, the settings every fuzz test
runs under, a count of the cases run, and the server health check that follows each batch."""

from __future__ import annotations

import base64
import json
from collections import Counter

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.server import RunningServer

scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=40)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# Large payloads without asking hypothesis to draw megabytes: a short pattern repeated. Escaped as
# JSON (up to 12 bytes a character) they stay under the server's 4 MiB message limit, above which
# uvicorn closes the socket with 1009 before any protocol sees the message.
big_text = st.tuples(st.text(min_size=1, max_size=8), st.integers(20_001, 300_000)).map(
    lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]
)
big_bytes = st.tuples(st.binary(min_size=1, max_size=16), st.integers(0, 300_000)).map(
    lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]
)
invalid_base64 = st.sampled_from(["***", "abc", "a=b=", "data:,%%", "ÿÿ", "AAA\n=="]) | st.text(
    max_size=30
).filter(lambda s: not _is_base64(s))
valid_base64 = st.binary(max_size=4000).map(lambda b: base64.b64encode(b).decode())
junk_text = st.text(max_size=60) | st.sampled_from(["{", "[" * 50_000, "{}}", "null", "NaN", '"x"', "1e999"])


def json_frame(value: object) -> str:
    return json.dumps(value, allow_nan=True)


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MORE = settings(FUZZ, max_examples=80)
CASES: Counter[str] = Counter()  # fuzz cases run per protocol, for the report


class Health:
    """Marks the server log before a batch; ``check`` then asserts the server survived it."""

    def __init__(self, server: RunningServer) -> None:
        self.server, self.offset = server, len(server.log())

    def check(self, protocol: str) -> None:
        """Also prints (``-s``) and checks the count of cases run for ``protocol``."""
        print(f"\n{protocol}: {CASES[protocol]} fuzz cases; all protocols: {sum(CASES.values())}")
        assert CASES[protocol] > 0
        assert self.server.process.poll() is None, "the server died"
        assert httpx.get(f"{self.server.http}/healthz", timeout=10).status_code == 200
        new = self.server.log()[self.offset :]
        assert "Traceback" not in new, new[-4000:]
