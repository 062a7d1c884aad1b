"""Ignored deliveries: how many authentic GitLab deliveries the web answered ``200 ignored``, per reason
(``unconfigured_project``, ``unused_kind``), with the last one's time, project and kind, for the metrics
and the dashboard's webhook health.

A counter that only rises: one upsert per ignored delivery, in whichever web process answered it, so
every process reads the same numbers. It must not decide what is ignored (the webhook route does) nor
keep the deliveries themselves (nothing about them is stored in the inbox).
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.store.base import StoreBase


@dataclass(frozen=True)
class IgnoredCount:
    """``count`` deliveries ignored for ``reason``; the last at ``last_at``, about ``last_project`` (None
    when it named none) and of ``last_kind``."""

    reason: str
    count: int
    last_at: float
    last_project: str | None
    last_kind: str


class IgnoredStore(StoreBase):
    def count_ignored(self, reason: str, project_path: str | None, kind: str, now: float) -> None:
        """One more delivery ignored for ``reason``."""
        self._db.execute(
            "INSERT INTO ignored_deliveries (reason, count, last_at, last_project, last_kind)"
            " VALUES (?, 1, ?, ?, ?) ON CONFLICT(reason) DO UPDATE SET count = ignored_deliveries.count + 1,"
            " last_at = excluded.last_at, last_project = excluded.last_project, last_kind = excluded.last_kind",
            [reason, now, project_path, kind])

    def ignored_counts(self) -> list[IgnoredCount]:
        """Every reason ever counted, by reason."""
        rows = self._db.execute("SELECT reason, count, last_at, last_project, last_kind FROM ignored_deliveries"
                                " ORDER BY reason").fetchall()
        return [IgnoredCount(str(r[0]), int(r[1]), float(r[2]), None if r[3] is None else str(r[3]),
                             str(r[4] or "")) for r in rows]
