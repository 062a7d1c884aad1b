"""Registry request counters and latency buckets, observed in the worker and flushed to storage.

The registry client calls the observer after every answer (status 0 for a connection failure) with the
HTTP method and the seconds it took. Counts accumulate in memory (cheap, thread safe) and the worker
flushes them to storage once per tick, so ``/metrics`` in any web process reads the same numbers.
Must not: send requests, or read anything but its own counters.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Protocol

from daemon.domain.measures import BUCKETS, INF, bucket_label


class ObservationSink(Protocol):
    def add_registry_observations(self, counts: dict[tuple[str, int], tuple[int, float]],
                                  buckets: dict[tuple[str, str], int]) -> None: ...


class RegistryStats:
    """An ``Observer`` for ``RegistryClient(observer=...)``: counts per (method, status) and latency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], tuple[int, float]] = {}
        self._buckets: dict[tuple[str, str], int] = defaultdict(int)

    def __call__(self, method: str, status: int, seconds: float) -> None:
        method = method.upper()
        label = next((bucket_label(b) for b in BUCKETS if seconds <= b), INF)
        with self._lock:
            n, total = self._counts.get((method, status), (0, 0.0))
            self._counts[(method, status)] = (n + 1, total + max(seconds, 0.0))
            self._buckets[(method, label)] += 1

    def flush(self, sink: ObservationSink) -> int:
        """Hand what was observed since the last flush to storage; returns how many requests. On a
        storage error the counts are kept for the next flush."""
        with self._lock:
            counts, buckets = self._counts, dict(self._buckets)
            self._counts, self._buckets = {}, defaultdict(int)
        if not counts:
            return 0
        try:
            sink.add_registry_observations(counts, buckets)
        except Exception:
            with self._lock:
                for key, (n, total) in counts.items():
                    m, t = self._counts.get(key, (0, 0.0))
                    self._counts[key] = (m + n, t + total)
                for bkey, n in buckets.items():
                    self._buckets[bkey] += n
            raise
        return sum(n for n, _ in counts.values())
