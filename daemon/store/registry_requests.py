"""Registry request counters: per HTTP method and status, how many requests the workers made to the
registry and how long they took, with latency histogram buckets; the metrics endpoint reads them.

Each flush adds to what is stored (a counter never goes down); it must not hold per-request rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from daemon.store.base import StoreBase


@dataclass(frozen=True)
class LatencyHistogram:
    """Per HTTP method: observations per bucket upper bound (not cumulative), their sum and count."""

    buckets: dict[str, int]
    seconds_sum: float
    count: int


class RegistryRequestStore(StoreBase):
    def add_registry_observations(self, counts: Mapping[tuple[str, int], tuple[int, float]],
                                  buckets: Mapping[tuple[str, str], int]) -> None:
        """Add one flush of the worker's in-memory counters: (method, status) -> (requests, seconds)
        and (method, bucket upper bound) -> observations in that bucket."""
        if not counts and not buckets:
            return
        db = self._db
        with self.transaction():
            for (method, code), (n, seconds) in counts.items():
                db.execute("INSERT INTO registry_requests (method, code, count, seconds_sum) VALUES (?,?,?,?)"
                           " ON CONFLICT(method, code) DO UPDATE SET count = count + excluded.count,"
                           " seconds_sum = seconds_sum + excluded.seconds_sum", [method, code, n, seconds])
            for (method, le), n in buckets.items():
                db.execute("INSERT INTO registry_request_buckets (method, le, count) VALUES (?,?,?)"
                           " ON CONFLICT(method, le) DO UPDATE SET count = count + excluded.count",
                           [method, le, n])

    def registry_request_counts(self) -> list[tuple[str, int, int]]:
        return [(r[0], r[1], r[2]) for r in self._db.execute(
            "SELECT method, code, count FROM registry_requests ORDER BY 1, 2")]

    def registry_latency(self) -> dict[str, LatencyHistogram]:
        out: dict[str, LatencyHistogram] = {}
        for method, seconds, n in self._db.execute(
                "SELECT method, SUM(seconds_sum), SUM(count) FROM registry_requests GROUP BY 1 ORDER BY 1"):
            out[method] = LatencyHistogram({}, float(seconds or 0.0), int(n or 0))
        for method, le, n in self._db.execute("SELECT method, le, count FROM registry_request_buckets"):
            out.setdefault(method, LatencyHistogram({}, 0.0, 0)).buckets[le] = int(n)
        return out
