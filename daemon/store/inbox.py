"""The inbox: every authentic event, stored raw before the web answers 2xx (S9), deduplicated (S8)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from daemon.store.base import StoreBase
from daemon.store.db import write_tx


@dataclass(frozen=True)
class InboxEvent:
    id: int
    source: str
    kind: str
    project_path: str | None
    headers: Mapping[str, str]
    body: bytes
    received_at: float


class InboxStore(StoreBase):
    def add_event(self, *, delivery_key: str, source: str, kind: str, project_path: str | None,
                  headers: Mapping[str, str], body: bytes, received_at: float) -> bool:
        """Store one delivery durably; False when this delivery key was stored before."""
        db = self.db
        with write_tx(db):
            cur = db.execute(
                "INSERT OR IGNORE INTO inbox (delivery_key, source, kind, project_path, headers, body,"
                " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [delivery_key, source, kind, project_path, json.dumps(dict(headers)), body, received_at],
            )
            return cur.rowcount == 1

    def pending_events(self, limit: int = 200) -> list[InboxEvent]:
        rows = self.db.execute(
            "SELECT id, source, kind, project_path, headers, body, received_at FROM inbox"
            " WHERE processed_at IS NULL ORDER BY id LIMIT ?", [limit]).fetchall()
        return [InboxEvent(r[0], r[1], r[2], r[3], json.loads(r[4] or "{}"), bytes(r[5]), r[6])
                for r in rows]

    def mark_processed(self, event_id: int, now: float, error: str | None = None) -> None:
        self.db.execute("UPDATE inbox SET processed_at = ?, error = ? WHERE id = ?", [now, error, event_id])

    def queue_depth(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM inbox WHERE processed_at IS NULL").fetchone()[0])

    def last_events(self) -> list[tuple[str, str, float]]:
        """(project, kind, last received_at) for webhook health."""
        rows = self.db.execute(
            "SELECT project_path, kind, MAX(received_at) FROM inbox WHERE project_path IS NOT NULL"
            " GROUP BY project_path, kind ORDER BY project_path, kind").fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def event_counts(self) -> list[tuple[str, str, int]]:
        rows = self.db.execute(
            "SELECT COALESCE(project_path, ''), kind, COUNT(*) FROM inbox GROUP BY 1, 2").fetchall()
        return [(r[0], r[1], r[2]) for r in rows]
