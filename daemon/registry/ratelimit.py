"""The token bucket that bounds the janitor's request rate to one registry, shared by all threads.

It owns timing only: it never sends a request and knows nothing about HTTP. The clock and the sleep
are injected so tests never wait for real time to pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """``rate`` requests per second on average, up to ``burst`` at once; ``rate <= 0`` turns it off.

    A caller that finds the bucket empty reserves the next token (the level goes negative) and sleeps
    outside the lock until that token is due, so waiting threads are served in arrival order and
    the lock is never held while sleeping.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._level = float(self.burst)
        self._stamp = clock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self) -> None:
        """Take one token, sleeping until one is available."""
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            self._level = min(float(self.burst), self._level + (now - self._stamp) * self.rate)
            self._stamp = now
            self._level -= 1.0
            wait = -self._level / self.rate if self._level < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
