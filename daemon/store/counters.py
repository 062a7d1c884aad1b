"""Running totals that only rise, kept in rows of their own (``counters``, ``daily_counters``), and the GitLab
API request counters: what ``/metrics``, ``/api/v1/status``, the dashboard and ``registry-janitor status``
show as totals.

Each change is counted as it happens, in the statement that makes it: the schema's triggers (``_v16_counters``)
add one to ``events`` for every event stored, ``events_unusable`` for every event set aside, ``pushes_recorded``
for every push record that becomes confirmed, and ``untags`` for every outcome an untag reaches (a failed
untag retried to done counts one ``failed`` and one ``done``) and ``restores`` for every image put back, with
``created`` and ``untagged`` per day.
Deleting events, plans, untags or push records (pruning) never lowers a total.

Must not: count by reading the rows counted (they may be pruned), or lower a counter.
"""

from __future__ import annotations

from collections.abc import Mapping

from daemon.store.base import StoreBase
from daemon.store.registry_requests import LatencyHistogram

#: Where the time of each project's last successful catch-up is kept (the ``kv`` table), by project.
_RECONCILE_SUCCESS = "reconcile:last_success:"


class CounterStore(StoreBase):
    def _totals(self, name: str) -> list[tuple[str, str, int]]:
        return [(str(r[0]), str(r[1]), int(r[2])) for r in self._db.execute(
            "SELECT project_path, label, value FROM counters WHERE name = ? ORDER BY 1, 2", [name])]

    def event_counts(self) -> list[tuple[str, str, int]]:
        """(project or '', kind, n) of every event ever stored in the inbox."""
        return self._totals("events")

    def unusable_event_count(self) -> int:
        """How many events were ever set aside as unusable."""
        row = self._db.execute("SELECT SUM(value) FROM counters WHERE name = 'events_unusable'").fetchone()
        return int(row[0] or 0)

    def recorded_push_counts(self) -> list[tuple[str, str, int]]:
        """(project, source, n) of pushes the ledger ever confirmed (by the source that confirmed them)."""
        return self._totals("pushes_recorded")

    def finished_untag_counts(self) -> list[tuple[str, str, int]]:
        """(project, outcome, n): how many times an untag reached each outcome (pending is none)."""
        return self._totals("untags")

    def daily_counts(self, since_day: str) -> list[tuple[str, int, int]]:
        """(UTC day ``YYYY-MM-DD``, pushes confirmed that were recorded that day, untags done that day) for
        every day from ``since_day`` on that has either, summed over projects, oldest first."""
        rows = self._db.execute(
            "SELECT day, SUM(CASE name WHEN 'created' THEN value ELSE 0 END),"
            " SUM(CASE name WHEN 'untagged' THEN value ELSE 0 END) FROM daily_counters WHERE day >= ?"
            " GROUP BY day ORDER BY day", [since_day]).fetchall()
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    # catch-up --------------------------------------------------------------------------------------
    def reconcile_succeeded(self, project_path: str, now: float) -> None:
        """A catch-up of ``project_path`` ran to its end without an error at ``now``."""
        self._db.execute(
            "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            [_RECONCILE_SUCCESS + project_path, repr(float(now)), now])

    def last_reconcile_successes(self) -> dict[str, float]:
        """Project -> when its last successful catch-up ended."""
        rows = self._db.execute("SELECT substr(key, ?), updated_at FROM kv WHERE substr(key, 1, ?) = ?",
                                [len(_RECONCILE_SUCCESS) + 1, len(_RECONCILE_SUCCESS), _RECONCILE_SUCCESS])
        return {str(r[0]): float(r[1]) for r in rows}

    # GitLab API requests ---------------------------------------------------------------------------
    def add_gitlab_observations(self, counts: Mapping[tuple[str, int], tuple[int, float]],
                                buckets: Mapping[tuple[str, str], int]) -> None:
        """Add counted GitLab API requests: (endpoint, status) -> (requests, seconds) and (endpoint, bucket
        upper bound) -> observations in that bucket."""
        if not counts and not buckets:
            return
        db = self._db
        with self.transaction():
            for (endpoint, code), (n, seconds) in counts.items():
                db.execute("INSERT INTO gitlab_requests (endpoint, code, count, seconds_sum) VALUES (?,?,?,?)"
                           " ON CONFLICT(endpoint, code) DO UPDATE SET count = count + excluded.count,"
                           " seconds_sum = seconds_sum + excluded.seconds_sum", [endpoint, code, n, seconds])
            for (endpoint, le), n in buckets.items():
                db.execute("INSERT INTO gitlab_request_buckets (endpoint, le, count) VALUES (?,?,?)"
                           " ON CONFLICT(endpoint, le) DO UPDATE SET count = count + excluded.count",
                           [endpoint, le, n])

    def gitlab_request_counts(self) -> list[tuple[str, int, int]]:
        """(endpoint, status or 0 for no answer, n)."""
        return [(str(r[0]), int(r[1]), int(r[2])) for r in self._db.execute(
            "SELECT endpoint, code, count FROM gitlab_requests ORDER BY 1, 2")]

    def gitlab_latency(self) -> dict[str, LatencyHistogram]:
        out: dict[str, LatencyHistogram] = {}
        for endpoint, seconds, n in self._db.execute(
                "SELECT endpoint, SUM(seconds_sum), SUM(count) FROM gitlab_requests GROUP BY 1 ORDER BY 1"):
            out[str(endpoint)] = LatencyHistogram({}, float(seconds or 0.0), int(n or 0))
        for endpoint, le, n in self._db.execute("SELECT endpoint, le, count FROM gitlab_request_buckets"):
            out.setdefault(str(endpoint), LatencyHistogram({}, 0.0, 0)).buckets[str(le)] = int(n)
        return out
