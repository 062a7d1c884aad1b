"""The token bucket that bounds the janitor's request rate to one registry, shared by all threads.

It owns timing only: it never sends a request and knows nothing about HTTP. The clock and the sleep
are injected so tests never wait for real time to pass. A ``beat`` callable, when given, is called on every
token taken and at least every ``BEAT_SLICE`` seconds of a wait, so that the process using the limiter can
show it is making progress (the worker's heartbeat) during a long wait; what it does is the caller's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: The longest sleep between two calls of ``beat`` while waiting.
BEAT_SLICE = 1.0

Beat = Callable[[], None]


def sleep_beating(seconds: float, sleep: Callable[[float], None], beat: Beat | None) -> None:
    """``sleep(seconds)`` in slices of at most ``BEAT_SLICE``, calling ``beat`` before each slice."""
    if beat is None:
        sleep(seconds)
        return
    left = seconds
    while left > 0:
        beat()
        step = min(left, BEAT_SLICE)
        sleep(step)
        left -= step


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
        beat: Beat | None = None,
    ) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._clock = clock
        self._sleep = sleep
        self._beat = beat
        self._lock = threading.Lock()
        self._level = float(self.burst)
        self._stamp = clock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self) -> None:
        """Take one token, sleeping until one is available (calling ``beat`` as the module says)."""
        if self._beat is not None:
            self._beat()
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            self._level = min(float(self.burst), self._level + (now - self._stamp) * self.rate)
            self._stamp = now
            self._level -= 1.0
            wait = -self._level / self.rate if self._level < 0 else 0.0
        if wait > 0:
            sleep_beating(wait, self._sleep, self._beat)
