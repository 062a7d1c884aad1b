"""Registry request counters and latency buckets, observed in the worker and flushed to storage.

The registry client calls the observer after every answer (status 0 for a connection failure) with the
HTTP method and the seconds it took. Counts accumulate in memory (cheap, thread safe) and the worker
flushes them to storage once per tick, so ``/metrics`` in any web process reads the same numbers.
Must not: send requests, or read anything but its own counters.
"""

from __future__ import annotations

from typing import Protocol

from daemon.domain.measures import Buckets, Counts, RequestTally


class ObservationSink(Protocol):
    def add_registry_observations(self, counts: Counts, buckets: Buckets) -> None: ...


class RegistryStats:
    """An ``Observer`` for ``RegistryClient(observer=...)``: counts per (method, status) and latency."""

    def __init__(self) -> None:
        self._tally = RequestTally()

    def __call__(self, method: str, status: int, seconds: float) -> None:
        self._tally.observe(method.upper(), status, seconds)

    def flush(self, sink: ObservationSink) -> int:
        """Hand what was observed since the last flush to storage; returns how many requests. On a
        storage error the counts are kept for the next flush."""
        return self._tally.hand_over(sink.add_registry_observations)
