"""What the operations surface (admin API, dashboard, metrics, admin CLI) needs from storage.

Owns: operator requests (restore an untag, retry a failed one) that the web and the CLI record and the
worker carries out; registry request counters and latency buckets the worker flushes each tick; and the
read-only views the pages show (untags with their saved manifest and restore state, cursor pages,
bytes referenced by untagged images). Claims are single atomic UPDATEs, as everywhere in the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.domain.model import Plan, Untag
from daemon.store.base import StoreBase
from daemon.store.db import write_tx
from daemon.store.plans import _PLAN_COLS, _UNTAG_COLS, _plan, _untag

REQUEST_KINDS = ("restore", "retry")
_REQUEST_COLS = "id, kind, untag_id, state, reason, requested_by, requested_at, finished_at"
_VIEW_COLS = (f"{_UNTAG_COLS}, untags.restored_at, untags.attempts, untags.manifest_digest,"
              " untags.manifest_media_type, LENGTH(untags.manifest_body)")


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


@dataclass(frozen=True)
class UntagView:
    """An untag as the audit pages show it: the row, whether it was restored, its saved manifest."""

    untag: Untag
    restored_at: float | None
    attempts: int
    manifest_digest: str | None
    manifest_media_type: str | None
    manifest_size: int | None

    @property
    def restorable(self) -> bool:
        return self.untag.outcome == "done" and self.manifest_size is not None and self.restored_at is None


@dataclass(frozen=True)
class LatencyHistogram:
    """Per HTTP method: observations per bucket upper bound (not cumulative), their sum and count."""

    buckets: dict[str, int]
    seconds_sum: float
    count: int


def _request(row: Sequence[Any]) -> OperatorRequest:
    return OperatorRequest(id=row[0], kind=row[1], untag_id=row[2], state=row[3], reason=row[4],
                           requested_by=row[5] or "", requested_at=row[6], finished_at=row[7])


def _view(row: Sequence[Any]) -> UntagView:
    return UntagView(untag=_untag(row), restored_at=row[14], attempts=row[15] or 0, manifest_digest=row[16],
                     manifest_media_type=row[17], manifest_size=row[18])


def image_bytes(manifest_body: bytes) -> dict[str, int]:
    """Blob digest -> size for what a saved manifest references: config and layers of an image, or
    the child manifests of an index. Empty when the body is not a manifest the janitor can read."""
    try:
        doc = json.loads(manifest_body)
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[str, int] = {}
    entries = [doc.get("config"), *(doc.get("layers") or []), *(doc.get("manifests") or [])]
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str) and \
                isinstance(entry.get("size"), int):
            out[entry["digest"]] = entry["size"]
    return out


class AdminStore(StoreBase):
    # operator requests --------------------------------------------------------------------------------
    def add_request(self, kind: str, untag_id: int, who: str, now: float) -> tuple[OperatorRequest, bool]:
        """Record a request, unless one of the same kind for this untag is still open: then that one is
        returned (asking twice is asking once). Returns (request, created)."""
        if kind not in REQUEST_KINDS:
            raise ValueError(f"unknown request kind {kind!r}")
        db = self.db
        with write_tx(db):
            row = db.execute(f"SELECT {_REQUEST_COLS} FROM operator_requests WHERE untag_id = ? AND kind = ?"
                             " AND state IN ('pending', 'running') ORDER BY id LIMIT 1",
                             [untag_id, kind]).fetchone()
            if row is not None:
                return _request(row), False
            cur = db.execute("INSERT INTO operator_requests (kind, untag_id, state, requested_by,"
                             " requested_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?)",
                             [kind, untag_id, who, now, now])
            request_id = int(cur.lastrowid or 0)
        found = self.get_request(request_id)
        assert found is not None
        return found, True

    def get_request(self, request_id: int) -> OperatorRequest | None:
        row = self.db.execute(f"SELECT {_REQUEST_COLS} FROM operator_requests WHERE id = ?",
                              [request_id]).fetchone()
        return None if row is None else _request(row)

    def latest_requests(self, untag_ids: Iterable[int]) -> dict[tuple[int, str], OperatorRequest]:
        """The newest request of each kind for each of these untags."""
        ids = sorted(set(untag_ids))
        out: dict[tuple[int, str], OperatorRequest] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self.db.execute(f"SELECT {_REQUEST_COLS} FROM operator_requests WHERE untag_id IN"
                                   f" ({','.join('?' * len(chunk))}) ORDER BY id", chunk)
            for row in rows:
                req = _request(row)
                out[(req.untag_id, req.kind)] = req
        return out

    def recent_requests(self, limit: int = 20) -> list[OperatorRequest]:
        rows = self.db.execute(f"SELECT {_REQUEST_COLS} FROM operator_requests ORDER BY id DESC LIMIT ?",
                               [limit])
        return [_request(r) for r in rows]

    def open_request_count(self) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM operator_requests WHERE state IN ('pending', 'running')")
        return int(row.fetchone()[0])

    def claim_requests(self, now: float, lease_seconds: float, limit: int = 20) -> list[OperatorRequest]:
        """Take open requests for this worker: pending ones, and running ones whose lease ran out (a
        worker died holding them). Each claim is one atomic UPDATE, so two workers never share one."""
        rows = self.db.execute("SELECT id FROM operator_requests WHERE state = 'pending' OR"
                               " (state = 'running' AND lease_until < ?) ORDER BY id LIMIT ?",
                               [now, limit]).fetchall()
        claimed: list[OperatorRequest] = []
        for (request_id,) in rows:
            cur = self.db.execute(
                "UPDATE operator_requests SET state = 'running', lease_until = ?, updated_at = ? WHERE id = ?"
                " AND (state = 'pending' OR (state = 'running' AND lease_until < ?))",
                [now + lease_seconds, now, request_id, now])
            if cur.rowcount == 1:
                found = self.get_request(request_id)
                if found is not None:
                    claimed.append(found)
        return claimed

    def finish_request(self, request_id: int, state: str, reason: str | None, now: float) -> None:
        self.db.execute("UPDATE operator_requests SET state = ?, reason = ?, finished_at = ?, updated_at = ?,"
                        " lease_until = NULL WHERE id = ?", [state, reason, now, now, request_id])

    def requeue_failed_untag(self, untag_id: int, now: float) -> int | None:
        """Retry: a failed untag goes back to pending and its plan is due now (a plan some worker is
        running keeps its lease and picks it up when that runs out). Returns the plan id, or None when
        the untag is not failed (any more)."""
        db = self.db
        with write_tx(db):
            cur = db.execute("UPDATE untags SET outcome = 'pending', reason = NULL, finished_at = NULL"
                             " WHERE id = ? AND outcome = 'failed'", [untag_id])
            if cur.rowcount != 1:
                return None
            plan_id = int(db.execute("SELECT plan_id FROM untags WHERE id = ?", [untag_id]).fetchone()[0])
            db.execute("UPDATE plans SET state = 'ready', due_at = ?, lease_until = NULL, updated_at = ?,"
                       " note = ? WHERE id = ? AND state <> 'running'",
                       [now, now, f"untag {untag_id} retried", plan_id])
        return plan_id

    # views ------------------------------------------------------------------------------------------
    def untag_view(self, untag_id: int) -> UntagView | None:
        row = self.db.execute(f"SELECT {_VIEW_COLS} FROM untags JOIN plans ON plans.id = plan_id"
                              " WHERE untags.id = ?", [untag_id]).fetchone()
        return None if row is None else _view(row)

    def untag_views(self, *, project_path: str | None = None, outcome: str | None = None,
                    since: float | None = None, plan_id: int | None = None, before_id: int | None = None,
                    limit: int = 50, offset: int = 0) -> list[UntagView]:
        """Newest first. ``since`` compares with when the untag finished (or was planned, while
        pending); ``before_id`` is the cursor of the previous page."""
        clauses, args = [], []
        for clause, value in (("untags.project_path = ?", project_path), ("untags.outcome = ?", outcome),
                              ("COALESCE(untags.finished_at, untags.created_at) >= ?", since),
                              ("untags.plan_id = ?", plan_id), ("untags.id < ?", before_id)):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self.db.execute(f"SELECT {_VIEW_COLS} FROM untags JOIN plans ON plans.id = plan_id{where}"
                               " ORDER BY untags.id DESC LIMIT ? OFFSET ?", [*args, limit, offset])
        return [_view(r) for r in rows]

    def plan_page(self, *, state: str | None = None, project_path: str | None = None,
                  before_id: int | None = None, limit: int = 50, offset: int = 0) -> list[Plan]:
        clauses, args = [], []
        for clause, value in (("state = ?", state), ("project_path = ?", project_path),
                              ("id < ?", before_id)):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self.db.execute(f"SELECT {_PLAN_COLS} FROM plans{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                               [*args, limit, offset])
        return [_plan(r) for r in rows]

    def plan_approver(self, plan_id: int) -> str | None:
        row = self.db.execute("SELECT approved_by FROM plans WHERE id = ?", [plan_id]).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def recorded_push_counts(self) -> list[tuple[str, str, int]]:
        """(project, source, n) of pushes the ledger confirmed, including those since untagged, so the
        count only grows (a Prometheus counter)."""
        return [(r[0], r[1] or "", r[2]) for r in self.db.execute(
            "SELECT project_path, source, COUNT(*) FROM push_records WHERE state IN ('confirmed', 'untagged')"
            " GROUP BY 1, 2 ORDER BY 1, 2")]

    def finished_untag_counts(self) -> list[tuple[str, str, int]]:
        """(project, outcome, n) of untags that have an outcome (pending ones are not counted)."""
        return [(r[0], r[1], r[2]) for r in self.db.execute(
            "SELECT project_path, outcome, COUNT(*) FROM untags WHERE outcome <> 'pending'"
            " GROUP BY 1, 2 ORDER BY 1, 2")]

    def restored_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT project_path, COUNT(*) FROM untags WHERE restored_at IS NOT NULL GROUP BY 1")}

    def untagged_image_bytes(self) -> dict[str, int]:
        """Per project: bytes of the blobs (config, layers) that untagged images reference, each blob
        counted once per project, from the manifests saved before each untag (restored ones left out).
        What garbage collection frees at most: blobs another tagged image still uses stay."""
        seen: dict[str, dict[str, int]] = {}
        for project, body in self.db.execute(
                "SELECT project_path, manifest_body FROM untags WHERE outcome = 'done' AND restored_at IS"
                " NULL AND manifest_body IS NOT NULL"):
            seen.setdefault(project, {}).update(image_bytes(bytes(body)))
        return {project: sum(blobs.values()) for project, blobs in seen.items()}

    def daily_created_untagged(self, since: float) -> list[tuple[str, int, int]]:
        """(UTC day, pushes confirmed, untags done) per day since ``since``. A push counts on the day it
        was recorded even after it was untagged, so both series only ever grow."""
        created = dict(self.db.execute(
            "SELECT date(recorded_at, 'unixepoch'), COUNT(*) FROM push_records WHERE state IN"
            " ('confirmed', 'untagged') AND recorded_at >= ? GROUP BY 1", [since]).fetchall())
        untagged = dict(self.db.execute(
            "SELECT date(finished_at, 'unixepoch'), COUNT(*) FROM untags WHERE outcome = 'done'"
            " AND finished_at >= ? GROUP BY 1", [since]).fetchall())
        return [(d, int(created.get(d, 0)), int(untagged.get(d, 0))) for d in sorted(set(created) | set(untagged))]

    def last_registry_event(self) -> float | None:
        row = self.db.execute("SELECT MAX(received_at) FROM inbox WHERE source = 'registry'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def oldest_pending_event(self) -> float | None:
        row = self.db.execute("SELECT MIN(received_at) FROM inbox WHERE processed_at IS NULL").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # registry request metrics (observed in the worker) -------------------------------------------------
    def add_registry_observations(self, counts: Mapping[tuple[str, int], tuple[int, float]],
                                  buckets: Mapping[tuple[str, str], int]) -> None:
        """Add one flush of the worker's in-memory counters: (method, status) -> (requests, seconds)
        and (method, bucket upper bound) -> observations in that bucket."""
        if not counts and not buckets:
            return
        db = self.db
        with write_tx(db):
            for (method, code), (n, seconds) in counts.items():
                db.execute("INSERT INTO registry_requests (method, code, count, seconds_sum) VALUES (?,?,?,?)"
                           " ON CONFLICT(method, code) DO UPDATE SET count = count + excluded.count,"
                           " seconds_sum = seconds_sum + excluded.seconds_sum", [method, code, n, seconds])
            for (method, le), n in buckets.items():
                db.execute("INSERT INTO registry_request_buckets (method, le, count) VALUES (?,?,?)"
                           " ON CONFLICT(method, le) DO UPDATE SET count = count + excluded.count",
                           [method, le, n])

    def registry_request_counts(self) -> list[tuple[str, int, int]]:
        return [(r[0], r[1], r[2]) for r in self.db.execute(
            "SELECT method, code, count FROM registry_requests ORDER BY 1, 2")]

    def registry_latency(self) -> dict[str, LatencyHistogram]:
        out: dict[str, LatencyHistogram] = {}
        for method, seconds, n in self.db.execute(
                "SELECT method, SUM(seconds_sum), SUM(count) FROM registry_requests GROUP BY 1 ORDER BY 1"):
            out[method] = LatencyHistogram({}, float(seconds or 0.0), int(n or 0))
        for method, le, n in self.db.execute("SELECT method, le, count FROM registry_request_buckets"):
            out.setdefault(method, LatencyHistogram({}, 0.0, 0)).buckets[le] = int(n)
        return out
