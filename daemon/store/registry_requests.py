"""Request counters of the two services the janitor calls: per registry HTTP method and per GitLab API
endpoint, with each answer's status, how many requests were made and how long they took, with latency
histogram buckets; the metrics endpoint reads them.

Each flush adds to what is stored (a counter never goes down); it must not hold per-request rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.domain.measures import Buckets, Counts
from daemon.store.base import StoreBase


@dataclass(frozen=True)
class LatencyHistogram:
    """Per HTTP method (or endpoint): observations per bucket upper bound (not cumulative), their sum and
    count."""

    buckets: dict[str, int]
    seconds_sum: float
    count: int


#: service -> (counts table, buckets table, key column): fixed names, never from input.
_TABLES = {"registry": ("registry_requests", "registry_request_buckets", "method"),
           "gitlab": ("gitlab_requests", "gitlab_request_buckets", "endpoint")}


class RegistryRequestStore(StoreBase):
    def add_registry_observations(self, counts: Counts, buckets: Buckets) -> None:
        """Add one flush of the worker's in-memory counters: (method, status) -> (requests, seconds)
        and (method, bucket upper bound) -> observations in that bucket."""
        self._add_observations("registry", counts, buckets)

    def add_gitlab_observations(self, counts: Counts, buckets: Buckets) -> None:
        """The same for GitLab API requests, keyed by endpoint."""
        self._add_observations("gitlab", counts, buckets)

    def registry_request_counts(self) -> list[tuple[str, int, int]]:
        """(method, status or 0 for no answer, n)."""
        return self._request_counts("registry")

    def gitlab_request_counts(self) -> list[tuple[str, int, int]]:
        """(endpoint, status or 0 for no answer, n)."""
        return self._request_counts("gitlab")

    def registry_latency(self) -> dict[str, LatencyHistogram]:
        return self._latency("registry")

    def gitlab_latency(self) -> dict[str, LatencyHistogram]:
        return self._latency("gitlab")

    def _add_observations(self, service: str, counts: Counts, buckets: Buckets) -> None:
        if not counts and not buckets:
            return
        table, bucket_table, key = _TABLES[service]
        db = self._db
        with self.transaction():
            for (name, code), (n, seconds) in counts.items():
                db.execute(f"INSERT INTO {table} ({key}, code, count, seconds_sum) VALUES (?,?,?,?)"
                           f" ON CONFLICT({key}, code) DO UPDATE SET count = {table}.count + excluded.count,"
                           f" seconds_sum = {table}.seconds_sum + excluded.seconds_sum", [name, code, n, seconds])
            for (name, le), n in buckets.items():
                db.execute(f"INSERT INTO {bucket_table} ({key}, le, count) VALUES (?,?,?)"
                           f" ON CONFLICT({key}, le) DO UPDATE SET count = {bucket_table}.count + excluded.count",
                           [name, le, n])

    def _request_counts(self, service: str) -> list[tuple[str, int, int]]:
        table, _, key = _TABLES[service]
        return [(str(r[0]), int(r[1]), int(r[2])) for r in self._db.execute(
            f"SELECT {key}, code, count FROM {table} ORDER BY 1, 2")]

    def _latency(self, service: str) -> dict[str, LatencyHistogram]:
        table, bucket_table, key = _TABLES[service]
        out: dict[str, LatencyHistogram] = {}
        for name, seconds, n in self._db.execute(
                f"SELECT {key}, SUM(seconds_sum), SUM(count) FROM {table} GROUP BY 1 ORDER BY 1"):
            out[str(name)] = LatencyHistogram({}, float(seconds or 0.0), int(n or 0))
        for name, le, n in self._db.execute(f"SELECT {key}, le, count FROM {bucket_table}"):
            out.setdefault(str(name), LatencyHistogram({}, 0.0, 0)).buckets[str(le)] = int(n)
        return out
