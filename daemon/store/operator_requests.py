"""Operator requests: an operator's ask (restore an untag, retry a failed one) recorded by the web or
the CLI and carried out by the worker, with its lease while a worker holds it and how it ended.

It must not carry a request out (the worker's operator stage does) nor check whether one makes sense
beyond its kind; claims are single atomic UPDATEs, so two workers never share one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.store.base import StoreBase
from daemon.store.rows import marks

REQUEST_KINDS = ("restore", "retry")
_REQUEST_COLS = "id, kind, untag_id, state, reason, requested_by, requested_at, finished_at"


@dataclass(frozen=True)
class OperatorRequest:
    """An operator asked the worker to restore an untag or retry a failed one.

    ``state``: ``pending`` (recorded), ``running`` (the worker has it), ``done`` or ``failed`` (with
    ``reason`` saying why, in the registry's words where it answered)."""

    id: int
    kind: str
    untag_id: int
    state: str
    reason: str | None
    requested_by: str
    requested_at: float
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


def _request(row: Sequence[Any]) -> OperatorRequest:
    return OperatorRequest(id=row[0], kind=row[1], untag_id=row[2], state=row[3], reason=row[4],
                           requested_by=row[5] or "", requested_at=row[6], finished_at=row[7])


class RequestStore(StoreBase):
    def add_request(self, kind: str, untag_id: int, who: str, now: float) -> tuple[OperatorRequest, bool]:
        """Record a request, unless one of the same kind for this untag is still open: then that one is
        returned (asking twice is asking once). Returns (request, created)."""
        if kind not in REQUEST_KINDS:
            raise ValueError(f"unknown request kind {kind!r}")
        db = self._db
        with self.transaction():
            self._lock_key(f"operator request {kind} {untag_id}")  # two asking at once record one
            row = db.execute(f"SELECT {_REQUEST_COLS} FROM operator_requests WHERE untag_id = ? AND kind = ?"
                             " AND state IN ('pending', 'running') ORDER BY id LIMIT 1",
                             [untag_id, kind]).fetchone()
            if row is not None:
                return _request(row), False
            request_id = int(db.execute("INSERT INTO operator_requests (kind, untag_id, state, requested_by,"
                                        " requested_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?) RETURNING id",
                                        [kind, untag_id, who, now, now]).fetchall()[0][0])
        found = self.get_request(request_id)
        assert found is not None
        return found, True

    def get_request(self, request_id: int) -> OperatorRequest | None:
        row = self._db.execute(f"SELECT {_REQUEST_COLS} FROM operator_requests WHERE id = ?",
                               [request_id]).fetchone()
        return None if row is None else _request(row)

    def latest_requests(self, untag_ids: Iterable[int]) -> dict[tuple[int, str], OperatorRequest]:
        """The newest request of each kind for each of these untags."""
        ids = sorted(set(untag_ids))
        out: dict[tuple[int, str], OperatorRequest] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self._db.execute(f"SELECT {_REQUEST_COLS} FROM operator_requests WHERE untag_id IN"
                                    f" ({marks(len(chunk))}) ORDER BY id", chunk)
            for row in rows:
                req = _request(row)
                out[(req.untag_id, req.kind)] = req
        return out

    def recent_requests(self, limit: int = 20) -> list[OperatorRequest]:
        rows = self._db.execute(f"SELECT {_REQUEST_COLS} FROM operator_requests ORDER BY id DESC LIMIT ?",
                                [limit])
        return [_request(r) for r in rows]

    def open_request_count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM operator_requests WHERE state IN ('pending', 'running')")
        return int(row.fetchone()[0])

    def claim_requests(self, now: float, lease_seconds: float, limit: int = 20) -> list[OperatorRequest]:
        """Take open requests for this worker: pending ones, and running ones whose lease ran out (a
        worker died holding them). The claim is one atomic UPDATE that checks each row is still open, so
        two workers never share one."""
        open_ = "(state = 'pending' OR (state = 'running' AND lease_until < ?))"
        rows = self._claim("operator_requests", open_, [now], "id", limit,
                           "state = 'running', lease_until = ?, updated_at = ?", [now + lease_seconds, now],
                           _REQUEST_COLS)
        return sorted((_request(r) for r in rows), key=lambda r: r.id)

    def finish_request(self, request_id: int, state: str, reason: str | None, now: float) -> None:
        self._db.execute("UPDATE operator_requests SET state = ?, reason = ?, finished_at = ?, updated_at = ?,"
                         " lease_until = NULL WHERE id = ?", [state, reason, now, now, request_id])
