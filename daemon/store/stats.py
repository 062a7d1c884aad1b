"""Counters for status, metrics and the dashboard, derived from storage so every process agrees."""

from __future__ import annotations

from typing import Any

from daemon.store.base import StoreBase


class StatsStore(StoreBase):
    def project_counters(self) -> dict[str, dict[str, Any]]:
        """Per project: created (confirmed push records), untagged, scheduled, held, failed."""
        out: dict[str, dict[str, Any]] = {}

        def bucket(project: str) -> dict[str, Any]:
            return out.setdefault(project, {"created": 0, "untagged": 0, "scheduled": 0, "held": 0,
                                            "failed": 0, "dry_run": 0})

        for project, n in self.db.execute("SELECT project_path, COUNT(*) FROM push_records WHERE"
                                          " state IN ('confirmed', 'untagged') GROUP BY 1"):
            bucket(project)["created"] = n
        for project, outcome, n in self.db.execute("SELECT project_path, outcome, COUNT(*) FROM untags"
                                                   " GROUP BY 1, 2"):
            key = {"done": "untagged", "failed": "failed", "dry_run": "dry_run"}.get(outcome)
            if key:
                bucket(project)[key] += n
        for project, state, n in self.db.execute("SELECT project_path, state, COUNT(*) FROM plans"
                                                 " WHERE state IN ('scheduled', 'held') GROUP BY 1, 2"):
            bucket(project)[state] = n
        for counters in out.values():
            counters["ratio"] = round(counters["untagged"] / counters["created"], 4) if counters[
                "created"] else 0.0
        return out

    def plan_state_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT state, COUNT(*) FROM plans GROUP BY 1")}
