"""Reconcile requests: an operator's ask for a catch-up from the GitLab API now, recorded by the web or
the CLI and run by a worker with the daemon's own settings, with its lease while a worker holds it and
what it found.

It must not run a catch-up (``daemon.ingest.catchup`` does) nor judge which projects one covers; claims are
single atomic UPDATEs, so two workers never both take one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from daemon.store.base import StoreBase

_COLS = "id, project_path, state, requested_by, requested_at, finished_at, result"
_OPEN = "state = 'pending' OR (state = 'running' AND lease_until < ?)"


@dataclass(frozen=True)
class ReconcileRequest:
    """An operator asked for a catch-up of one project (``project_path``) or of all (None).

    ``state``: ``pending`` (recorded), ``running`` (a worker has it), ``done`` (it ran: ``result`` holds
    per project what it found, each project's own failure among them) or ``failed`` (the run itself broke:
    ``result["error"]`` says why)."""

    id: int
    project_path: str | None
    state: str
    requested_by: str
    requested_at: float
    finished_at: float | None = None
    result: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


def _reconcile_request(row: Sequence[Any]) -> ReconcileRequest:
    result = json.loads(row[6]) if row[6] else None
    return ReconcileRequest(id=row[0], project_path=row[1], state=row[2], requested_by=row[3] or "",
                            requested_at=row[4], finished_at=row[5],
                            result=result if isinstance(result, dict) else None)


class ReconcileRequestStore(StoreBase):
    def add_reconcile_request(self, project_path: str | None, who: str,
                              now: float) -> tuple[ReconcileRequest, bool]:
        """Record a request, unless one for the same project (or for all) is still open: then that one is
        returned (asking twice is asking once). Returns (request, created)."""
        db = self._db
        with self.transaction():
            self._lock_key(f"reconcile request {project_path!r}")  # two asking at once record one
            row = db.execute(f"SELECT {_COLS} FROM reconcile_requests WHERE project_path IS NOT DISTINCT FROM ?"
                             " AND state IN"
                             " ('pending', 'running') ORDER BY id LIMIT 1", [project_path]).fetchone()
            if row is not None:
                return _reconcile_request(row), False
            request_id = int(db.execute("INSERT INTO reconcile_requests (project_path, state, requested_by,"
                                        " requested_at, updated_at) VALUES (?, 'pending', ?, ?, ?) RETURNING id",
                                        [project_path, who, now, now]).fetchall()[0][0])
        found = self.get_reconcile_request(request_id)
        assert found is not None
        return found, True

    def get_reconcile_request(self, request_id: int) -> ReconcileRequest | None:
        row = self._db.execute(f"SELECT {_COLS} FROM reconcile_requests WHERE id = ?", [request_id]).fetchone()
        return None if row is None else _reconcile_request(row)

    def claim_reconcile_request(self, now: float, lease_seconds: float) -> ReconcileRequest | None:
        """Take the oldest open request for this worker: a pending one, or a running one whose lease ran
        out (a worker died running it). One atomic UPDATE each, so two workers never take the same one."""
        rows = self._claim("reconcile_requests", f"({_OPEN})", [now], "id", 1,
                           "state = 'running', lease_until = ?, updated_at = ?", [now + lease_seconds, now], _COLS)
        return _reconcile_request(rows[0]) if rows else None

    def renew_reconcile_request(self, request_id: int, until: float, now: float) -> None:
        """Keep the lease of a request this worker is still running."""
        self._db.execute("UPDATE reconcile_requests SET lease_until = ?, updated_at = ? WHERE id = ? AND"
                         " state = 'running'", [until, now, request_id])

    def finish_reconcile_request(self, request_id: int, state: str, result: dict[str, Any], now: float) -> None:
        if state not in ("done", "failed"):
            raise ValueError(f"a reconcile request finishes done or failed, not {state!r}")
        self._db.execute("UPDATE reconcile_requests SET state = ?, result = ?, finished_at = ?, updated_at = ?,"
                         " lease_until = NULL WHERE id = ?",
                         [state, json.dumps(result, sort_keys=True), now, now, request_id])
