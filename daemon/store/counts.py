"""Counts across tables for status, metrics and the dashboard: what was pushed against what was
untagged, per project and per day. Created, untagged and dry-run untags are running totals read from the
counter rows (``daemon.store.counters``: they only rise, whatever is pruned); scheduled, held and failed
are how things stand now, counted from the plans and untags. Read from storage on every read, so every
process agrees.

Read-only: it stores nothing of its own and must not cache (a count another process changed is stale).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from daemon.store.counters import CounterStore

_TOTALS = {"done": "untagged", "dry_run": "dry_run"}


class CountStore(CounterStore):
    def project_counters(self) -> dict[str, dict[str, Any]]:
        """Per project: created (pushes ever confirmed), untagged (untags ever done), dry_run (untags ever
        recorded as dry-run), and now: scheduled and held plans, failed untags."""
        out: dict[str, dict[str, Any]] = {}

        def bucket(project: str) -> dict[str, Any]:
            return out.setdefault(project, {"created": 0, "untagged": 0, "scheduled": 0, "held": 0,
                                            "failed": 0, "dry_run": 0})

        for project, _source, n in self.recorded_push_counts():
            bucket(project)["created"] += n
        for project, outcome, n in self.finished_untag_counts():
            key = _TOTALS.get(outcome)
            if key:
                bucket(project)[key] += n
        for project, n in self._db.execute("SELECT project_path, COUNT(*) FROM untags WHERE outcome = 'failed'"
                                           " GROUP BY 1"):
            bucket(project)["failed"] = n
        for project, state, n in self._db.execute("SELECT project_path, state, COUNT(*) FROM plans"
                                                  " WHERE state IN ('scheduled', 'held') GROUP BY 1, 2"):
            bucket(project)[state] = n
        for counters in out.values():
            counters["ratio"] = round(counters["untagged"] / counters["created"], 4) if counters[
                "created"] else 0.0
        return out

    def daily_created_untagged(self, since: float) -> list[tuple[str, int, int]]:
        """(UTC day, pushes confirmed, untags done) per day from the day of ``since`` on. A push counts on
        the day it was recorded, an untag on the day it was done: both series only ever grow."""
        return self.daily_counts(dt.datetime.fromtimestamp(since, dt.UTC).date().isoformat())
