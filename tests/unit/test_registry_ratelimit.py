"""The token bucket: burst, steady rate, off switch, and fair reservation across threads (fake clock)."""

from __future__ import annotations

import threading

import pytest

from daemon.registry.ratelimit import RateLimiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)


class AdvancingTime(FakeTime):
    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.now += seconds


def test_burst_passes_without_waiting_then_rate_applies() -> None:
    t = AdvancingTime()
    limiter = RateLimiter(rate=2, burst=3, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        limiter.acquire()
    assert t.sleeps == []
    limiter.acquire()
    limiter.acquire()
    assert t.sleeps == pytest.approx([0.5, 0.5])


def test_tokens_refill_with_time_up_to_burst() -> None:
    t = AdvancingTime()
    limiter = RateLimiter(rate=10, burst=2, clock=t.clock, sleep=t.sleep)
    limiter.acquire()
    limiter.acquire()
    t.now += 60  # a long pause refills to burst, not to 600
    for _ in range(2):
        limiter.acquire()
    assert t.sleeps == []
    limiter.acquire()
    assert t.sleeps == pytest.approx([0.1])


def test_n_requests_take_at_least_n_minus_burst_over_rate() -> None:
    t = AdvancingTime()
    limiter = RateLimiter(rate=5, burst=1, clock=t.clock, sleep=t.sleep)
    start = t.now
    for _ in range(11):
        limiter.acquire()
    assert t.now - start == pytest.approx(2.0)


@pytest.mark.parametrize("rate", [0, -1])
def test_rate_zero_or_negative_is_off(rate: float) -> None:
    t = FakeTime()
    limiter = RateLimiter(rate=rate, burst=1, clock=t.clock, sleep=t.sleep)
    for _ in range(100):
        limiter.acquire()
    assert t.sleeps == []
    assert not limiter.enabled


def test_threads_reserve_successive_slots() -> None:
    t = FakeTime()  # time stands still: each waiting thread must get its own later slot
    limiter = RateLimiter(rate=10, burst=1, clock=t.clock, sleep=t.sleep)
    threads = [threading.Thread(target=limiter.acquire) for _ in range(10)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(t.sleeps) == pytest.approx([n / 10 for n in range(1, 10)])
