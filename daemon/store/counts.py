"""Counts across tables for status, metrics and the dashboard: what was pushed against what was
untagged, per project and per day. Derived from storage on every read, so every process agrees.

Read-only: it stores nothing of its own and must not cache (a count another process changed is stale).
"""

from __future__ import annotations

from typing import Any

from daemon.store.base import StoreBase


class CountStore(StoreBase):
    def project_counters(self) -> dict[str, dict[str, Any]]:
        """Per project: created (confirmed push records), untagged, scheduled, held, failed."""
        out: dict[str, dict[str, Any]] = {}

        def bucket(project: str) -> dict[str, Any]:
            return out.setdefault(project, {"created": 0, "untagged": 0, "scheduled": 0, "held": 0,
                                            "failed": 0, "dry_run": 0})

        for project, n in self._db.execute("SELECT project_path, COUNT(*) FROM push_records WHERE"
                                           " state IN ('confirmed', 'untagged') GROUP BY 1"):
            bucket(project)["created"] = n
        for project, outcome, n in self._db.execute("SELECT project_path, outcome, COUNT(*) FROM untags"
                                                    " GROUP BY 1, 2"):
            key = {"done": "untagged", "failed": "failed", "dry_run": "dry_run"}.get(outcome)
            if key:
                bucket(project)[key] += n
        for project, state, n in self._db.execute("SELECT project_path, state, COUNT(*) FROM plans"
                                                  " WHERE state IN ('scheduled', 'held') GROUP BY 1, 2"):
            bucket(project)[state] = n
        for counters in out.values():
            counters["ratio"] = round(counters["untagged"] / counters["created"], 4) if counters[
                "created"] else 0.0
        return out

    def daily_created_untagged(self, since: float) -> list[tuple[str, int, int]]:
        """(UTC day, pushes confirmed, untags done) per day since ``since``. A push counts on the day it
        was recorded even after it was untagged, so both series only ever grow."""
        created = dict(self._db.execute(
            "SELECT date(recorded_at, 'unixepoch'), COUNT(*) FROM push_records WHERE state IN"
            " ('confirmed', 'untagged') AND recorded_at >= ? GROUP BY 1", [since]).fetchall())
        untagged = dict(self._db.execute(
            "SELECT date(finished_at, 'unixepoch'), COUNT(*) FROM untags WHERE outcome = 'done'"
            " AND finished_at >= ? GROUP BY 1", [since]).fetchall())
        return [(d, int(created.get(d, 0)), int(untagged.get(d, 0))) for d in sorted(set(created) | set(untagged))]
