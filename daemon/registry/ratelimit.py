"""The token bucket that bounds the janitor's request rate to one registry: in this process, shared by all
its threads (``RateLimiter``), or shared by every worker through storage (``SharedRateLimiter``).

It owns timing only: it never sends a request and knows nothing about HTTP. The clock and the sleep
are injected so tests never wait for real time to pass. A ``beat`` callable, when given, is called on every
token taken and at least every ``BEAT_SLICE`` seconds of a wait, so that the process using the limiter can
show it is making progress (the worker's heartbeat) during a long wait; what it does is the caller's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The longest sleep between two calls of ``beat`` while waiting.
BEAT_SLICE = 1.0
#: How long a shared bucket that cannot be reached is tried again before the request fails.
SHARED_RETRY_SECONDS = 30.0

Beat = Callable[[], None]
#: Takes one token of the bucket ``name`` (rate, burst, now): 0.0 when taken, else the seconds until one is due.
TakeToken = Callable[[str, float, int, float], float]


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


class SharedRateLimiter(RateLimiter):
    """``rate`` requests per second on average, up to ``burst`` at once, across every process that takes
    from the same bucket ``name`` through ``take`` (the workers' database: one atomic update per token).
    The clock is wall time, which all of them share. A caller that finds the bucket empty sleeps the wait
    ``take`` computed (beating) and tries again; a bucket that cannot be reached is tried again for
    ``SHARED_RETRY_SECONDS`` before the error is raised (the request then fails as any other would)."""

    def __init__(self, name: str, rate: float, burst: int, take: TakeToken, *,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 beat: Beat | None = None) -> None:
        super().__init__(rate, burst, clock=clock, sleep=sleep, beat=beat)
        self.name = name
        self._take = take

    def acquire(self) -> None:
        if self._beat is not None:
            self._beat()
        if not self.enabled:
            return
        failing_since: float | None = None
        while True:
            try:
                wait = self._take(self.name, self.rate, self.burst, self._clock())
                failing_since = None
            except Exception as exc:
                now = self._clock()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= SHARED_RETRY_SECONDS:
                    raise
                log.warning("the shared rate limit of %s cannot be read (%s); trying again", self.name, exc)
                wait = BEAT_SLICE
            if wait <= 0:
                return
            sleep_beating(wait, self._sleep, self._beat)
