"""Per-client rate limiting: a token bucket per client (API key digest, else address).

Each client may send ``burst`` requests at once, refilled at ``per_minute / 60`` per
second. An over-limit request gets ``429`` with ``Retry-After`` (whole seconds until a
token is back). Buckets idle long enough to be full again are forgotten.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from api.auth import API_KEY_HEADER, client_identity, key_matches, settings_of
from api.errors import ApiError

_PRUNE_EVERY = 1024


class RateLimiter:
    """Token buckets keyed by client; thread-safe."""

    def __init__(self, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(1, burst))
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._lock = threading.Lock()
        self._calls = 0

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def hit(self, client: str) -> float | None:
        """Take a token for ``client``; None when allowed, else the seconds until one is back."""
        if not self.enabled:
            return None
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            self._calls += 1
            if self._calls % _PRUNE_EVERY == 0:
                self._prune(now)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return None
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full_after = self.burst / self.rate
        for client in [c for c, (_, at) in self._buckets.items() if now - at > full_after]:
            del self._buckets[client]


async def rate_limit(request: Request) -> None:
    """Dependency of every rate-limited route (reads the key header itself: no OpenAPI security).

    A valid key is its own client; anything else counts against the caller's address, so
    sending made-up keys does not buy fresh buckets.
    """
    limiter: RateLimiter = request.app.state.limiter
    if not limiter.enabled:
        return
    key = request.headers.get(API_KEY_HEADER)
    valid = key if key and key_matches(key, settings_of(request).key_values()) else None
    wait = limiter.hit(client_identity(request, valid))
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise ApiError(
            429,
            f"too many requests from this client: at most {round(limiter.rate * 60)} per minute "
            f"(bursts of {int(limiter.burst)}); retry in {seconds} s",
            kind="rate-limited",
            title="Too many requests",
            headers={"Retry-After": str(seconds)},
        )


RateLimited = Annotated[None, Depends(rate_limit)]
