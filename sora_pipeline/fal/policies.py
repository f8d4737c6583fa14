"""How long and how often the clients try: `RetryPolicy` (backoff between attempts of one call) and `PollPolicy`
(how to wait for a request: status stream, or polls that slow down for long generations). Plain values."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in attempts and in total seconds (Retry-After is honoured)."""

    max_attempts: int = 6
    initial_delay: float = 0.2
    max_delay: float = 10.0
    total_timeout: float = 120.0
    jitter: float = 0.5  # delay × uniform(1 - jitter, 1 + jitter)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        base = min(self.initial_delay * 2 ** max(attempt - 1, 0), self.max_delay)
        delay = base * random.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_delay * 3))
        return delay


@dataclass(frozen=True)
class PollPolicy:
    """How to wait for a request. With `stream` the async client follows fal's status stream (server-sent
    events: one long request per job instead of one call per poll) and polls only if the stream is unavailable.
    Polls are `interval` seconds apart at first, growing by `backoff` per poll once the request has run longer
    than `backoff_after`, capped at `max_interval` (never below `interval`)."""

    stream: bool = True
    interval: float = 1.0
    max_interval: float = 10.0
    backoff: float = 1.5
    backoff_after: float = 30.0

    def next_delay(self, elapsed: float, previous: float | None) -> float:
        if previous is None or elapsed < self.backoff_after:
            return self.interval
        return max(self.interval, min(previous * self.backoff, self.max_interval))
