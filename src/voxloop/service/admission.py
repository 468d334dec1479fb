"""How many conversations this machine serves at once, and refusing the next one clearly.

A conversation admitted into a machine that cannot keep up makes every conversation slow (one
LLM lane, two cores). So a new session is refused at once, with HTTP 503 or the protocol's own
error and close code 1013 ("try again later"), when the server already holds
``max_conversations`` sessions (``VOXLOOP_MAX_CONVERSATIONS``, measured by ``make bench``), or
when the inference scheduler is already late for users who are waiting (its lag, see
``backends/scheduler.py``). Open conversations keep their place: only new ones are refused.
``/readyz`` reports the same figures to a load balancer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from voxloop.backends import workers
from voxloop.service.limits import LimitExceeded

LAG_CHECK_FROM = 2  # sessions open before the scheduler's lag may refuse one: the first always gets in


@dataclass
class Admission:
    max_conversations: int
    max_lag_s: float
    lag: Callable[[], float] = workers.lag

    def refusal(self, open_sessions: int) -> str | None:
        """Why a new session would be refused now, or None."""
        if self.max_conversations and open_sessions >= self.max_conversations:
            return f"server at capacity: {self.max_conversations} conversations open, try again later"
        if self.max_lag_s and open_sessions >= LAG_CHECK_FROM and (lag := self.lag()) > self.max_lag_s:
            return f"server at capacity: answers are running {lag:.1f} s late, try again later"
        return None

    def check(self, open_sessions: int) -> None:
        """Raises LimitExceeded (503, close 1013) if a new session would be refused."""
        if (reason := self.refusal(open_sessions)) is not None:
            raise LimitExceeded(reason, status=503, close_code=1013)

    def load(self, open_sessions: int) -> dict[str, Any]:
        return {
            "conversations": open_sessions,
            "max_conversations": self.max_conversations,
            "lag_s": round(self.lag(), 3),
            "queued_jobs": sum(lane.waiting() for lane in workers.LANES),
            "saturated": self.refusal(open_sessions) is not None,
        }
