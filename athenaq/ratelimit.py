"""Requests per second per key: a token bucket for each, in this process.

A bucket holds up to twice the rate (a burst; at least one request) and refills at the
rate. Buckets of keys that went quiet are dropped once full again, so the table stays as
small as the set of keys in use.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# How many buckets are kept before full ones are swept out.
SWEEP_AT = 1024


class RateLimiter:
    """`take(key)` returns 0 when the request may pass, else the seconds until it may."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        # At least one request, however low the rate.
        self.burst = max(1.0, 2 * rate)
        self._clock = clock
        # key -> (tokens, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        now = self._clock()
        tokens, then = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        if len(self._buckets) > SWEEP_AT:
            self._sweep(now)
        return 0.0

    def _sweep(self, now: float) -> None:
        full = [
            key
            for key, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]

    @staticmethod
    def retry_after(wait: float) -> int:
        """Whole seconds for a Retry-After header."""
        return max(1, math.ceil(wait))
