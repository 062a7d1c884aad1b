"""Running totals that only rise, kept in rows of their own (``counters``, ``daily_counters``): what
``/metrics``, ``/api/v1/status``, the dashboard and ``registry-janitor status`` show as totals. (GitLab API
request counters live with the registry's, in ``registry_requests``.)

Each change is counted as it happens, in the statement that makes it: the schema's triggers (``_v16_counters``)
add one to ``events`` for every event stored (and keep when the last of each project and kind was,
``last_at``: ``_v17_last_events``), ``events_unusable`` for every event set aside, ``pushes_recorded``
for every push record that becomes confirmed, and ``untags`` for every outcome an untag reaches (a failed
untag retried to done counts one ``failed`` and one ``done``) and ``restores`` for every image put back, with
``created`` and ``untagged`` per day.
Deleting events, plans, untags or push records (pruning) never lowers a total.

Must not: count by reading the rows counted (they may be pruned), or lower a counter.
"""

from __future__ import annotations

from daemon.store.base import StoreBase


class CounterStore(StoreBase):
    def _totals(self, name: str) -> list[tuple[str, str, int]]:
        return [(str(r[0]), str(r[1]), int(r[2])) for r in self._db.execute(
            "SELECT project_path, label, value FROM counters WHERE name = ? ORDER BY 1, 2", [name])]

    def event_counts(self) -> list[tuple[str, str, int]]:
        """(project or '', kind, n) of every event ever stored in the inbox."""
        return self._totals("events")

    def last_events(self) -> list[tuple[str, str, float]]:
        """(project, kind, when its last event was stored) for webhook health: kept in the ``events``
        counter rows, so pruning the inbox leaves it."""
        rows = self._db.execute(
            "SELECT project_path, label, last_at FROM counters WHERE name = 'events' AND project_path <> ''"
            " AND last_at IS NOT NULL ORDER BY project_path, label").fetchall()
        return [(str(r[0]), str(r[1]), float(r[2])) for r in rows]

    def last_registry_event(self) -> float | None:
        """When the last registry notification was stored."""
        row = self._db.execute("SELECT MAX(last_at) FROM counters WHERE name = 'events' AND project_path = ''"
                               " AND label = 'registry_push'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

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
