"""The rate limiter shows progress while it makes a caller wait (fake clock), and the heartbeat's limit."""

from __future__ import annotations

import pytest

from daemon.domain.policy import (
    HEARTBEAT_BEAT_SECONDS,
    HEARTBEAT_LIMIT_FLOOR,
    heartbeat_fresh,
    heartbeat_limit,
)
from daemon.registry.ratelimit import BEAT_SLICE, RateLimiter, sleep_beating


class Recorder:
    def __init__(self) -> None:
        self.now = 1000.0
        self.events: list[str | float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.events.append(seconds)
        self.now += seconds

    def beat(self) -> None:
        self.events.append("beat")


def test_a_long_wait_is_slept_in_slices_with_a_beat_before_each() -> None:
    t = Recorder()
    limiter = RateLimiter(rate=0.25, burst=1, clock=t.clock, sleep=t.sleep, beat=t.beat)
    limiter.acquire()
    assert t.events == ["beat"], "each request beats, waiting or not"
    t.events.clear()
    limiter.acquire()  # the next token is 4 s away
    sleeps = [e for e in t.events if e != "beat"]
    assert sum(sleeps) == pytest.approx(4.0)
    assert max(sleeps) <= BEAT_SLICE
    assert t.events[:2] == ["beat", "beat"] and t.events[-1] != "beat"
    # never two sleeps without a beat between them
    assert all(a == "beat" or b == "beat" for a, b in zip(t.events, t.events[1:], strict=False))


def test_without_a_beat_the_wait_is_one_sleep() -> None:
    t = Recorder()
    limiter = RateLimiter(rate=0.25, burst=1, clock=t.clock, sleep=t.sleep)
    limiter.acquire()
    limiter.acquire()
    assert t.events == [pytest.approx(4.0)]


def test_an_unlimited_registry_still_beats_per_request() -> None:
    t = Recorder()
    limiter = RateLimiter(rate=0, burst=1, clock=t.clock, sleep=t.sleep, beat=t.beat)
    for _ in range(3):
        limiter.acquire()
    assert t.events == ["beat", "beat", "beat"]


def test_sleep_beating_slices_any_pause() -> None:
    t = Recorder()
    sleep_beating(2.5, t.sleep, t.beat)
    assert t.events == ["beat", 1.0, "beat", 1.0, "beat", 0.5]
    t.events.clear()
    sleep_beating(0.0, t.sleep, t.beat)
    assert t.events == []


def test_heartbeat_limit_covers_idle_polls_and_a_slow_request_far_beyond_the_beat() -> None:
    assert heartbeat_limit(5) == HEARTBEAT_LIMIT_FLOOR
    assert heartbeat_limit(600) == 1800
    assert HEARTBEAT_LIMIT_FLOOR >= 10 * HEARTBEAT_BEAT_SECONDS
    assert heartbeat_fresh(HEARTBEAT_LIMIT_FLOOR, 5) and not heartbeat_fresh(HEARTBEAT_LIMIT_FLOOR + 0.1, 5)
    assert not heartbeat_fresh(None, 5)
