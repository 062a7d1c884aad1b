"""The janitor's own measurements that more than one process must agree on: the latency buckets of
``janitor_registry_request_seconds`` and ``janitor_gitlab_request_seconds``, counted where the requests are
made and rendered by the web; and the tally both services' request counters keep until it is stored."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Mapping

#: Upper bounds (seconds) of the ``janitor_registry_request_seconds`` histogram buckets; ``+Inf`` last.
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INF = "+Inf"


def bucket_label(bound: float) -> str:
    """The ``le`` label of a bucket bound, as Prometheus clients write it (``0.005``, ``1.0``)."""
    return repr(float(bound))


#: Every ``le`` label in order, ``+Inf`` last.
LABELS: tuple[str, ...] = (*(bucket_label(b) for b in BUCKETS), INF)


Counts = Mapping[tuple[str, int], tuple[int, float]]
Buckets = Mapping[tuple[str, str], int]


class RequestTally:
    """Requests counted in memory per (name, status) with their seconds and latency buckets, until they are
    handed to storage: thread safe, and what storage refused is kept for the next hand-over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], tuple[int, float]] = {}
        self._buckets: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, name: str, status: int, seconds: float) -> None:
        label = next((bucket_label(b) for b in BUCKETS if seconds <= b), INF)
        with self._lock:
            self._add({(name, status): (1, max(seconds, 0.0))}, {(name, label): 1})

    def hand_over(self, store: Callable[[Counts, Buckets], None]) -> int:
        """Give what was counted since the last hand-over to ``store``; returns how many requests. When
        ``store`` raises, the counts are kept for the next hand-over and the error goes on."""
        with self._lock:
            counts, buckets = self._counts, dict(self._buckets)
            self._counts, self._buckets = {}, defaultdict(int)
        if not counts:
            return 0
        try:
            store(counts, buckets)
        except Exception:
            with self._lock:
                self._add(counts, buckets)
            raise
        return sum(n for n, _ in counts.values())

    def _add(self, counts: Counts, buckets: Buckets) -> None:
        for key, (n, total) in counts.items():
            m, t = self._counts.get(key, (0, 0.0))
            self._counts[key] = (m + n, t + total)
        for bkey, n in buckets.items():
            self._buckets[bkey] += n
