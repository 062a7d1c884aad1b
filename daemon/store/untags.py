"""Untags: each tag a plan removes or keeps, with its outcome and why, the manifest saved before it was
removed (so it can be put back) and when it was restored. This is the audit log.

It must not decide an outcome (the executor does) nor talk to the registry; reads join the plan only for
the kind of trigger that planned each untag. Each outcome an untag reaches is counted (``untags``,
``untagged`` per day), and each restore (``restores``), by the schema's triggers in the statement that
sets it (``daemon.store.counters``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from daemon.domain.model import Manifest, Untag
from daemon.store.base import StoreBase
from daemon.store.rows import UNTAG_COLS, filters, marks, to_untag

_VIEW_COLS = (f"{UNTAG_COLS}, untags.restored_at, untags.attempts, untags.manifest_digest,"
              " untags.manifest_media_type, LENGTH(untags.manifest_body)")


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


def _view(row: Sequence[Any]) -> UntagView:
    return UntagView(untag=to_untag(row), restored_at=row[14], attempts=row[15] or 0, manifest_digest=row[16],
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


class UntagStore(StoreBase):
    # untags -----------------------------------------------------------------------------------------
    def pending_untags(self, plan_id: int) -> list[Untag]:
        rows = self._db.execute(f"SELECT {UNTAG_COLS} FROM untags JOIN plans ON plans.id = plan_id"
                                " WHERE plan_id = ? AND outcome = 'pending' ORDER BY repository, tag",
                                [plan_id])
        return [to_untag(r) for r in rows]

    def plan_untags(self, plan_id: int) -> list[Untag]:
        rows = self._db.execute(f"SELECT {UNTAG_COLS} FROM untags JOIN plans ON plans.id = plan_id"
                                " WHERE plan_id = ? ORDER BY untags.id", [plan_id])
        return [to_untag(r) for r in rows]

    def finish_untag(self, untag_id: int, *, outcome: str, reason: str | None, method: str | None,
                     saved: Manifest | None, now: float) -> None:
        self._db.execute(
            "UPDATE untags SET outcome = ?, reason = ?, method = ?, finished_at = ?,"
            " attempts = attempts + 1, manifest_digest = COALESCE(?, manifest_digest),"
            " manifest_media_type = COALESCE(?, manifest_media_type),"
            " manifest_body = COALESCE(?, manifest_body) WHERE id = ?",
            [outcome, reason, method, now, saved.digest if saved else None,
             saved.media_type if saved else None, saved.body if saved else None, untag_id])

    def save_untag_manifest(self, untag_id: int, manifest: Manifest, method: str) -> bool:
        """Keep the manifest a pending untag is about to remove, and the method about to write, before the
        write is sent: an untag interrupted after this still has them. False when the untag is not
        pending (nothing is kept)."""
        cur = self._db.execute(
            "UPDATE untags SET manifest_digest = ?, manifest_media_type = ?, manifest_body = ?, method = ?"
            " WHERE id = ? AND outcome = 'pending'",
            [manifest.digest, manifest.media_type, manifest.body, method, untag_id])
        return cur.rowcount == 1

    def saved_before_write(self, plan_id: int) -> dict[int, tuple[Manifest, str | None]]:
        """The plan's pending untags that kept a manifest before a write an interruption cut short:
        untag id -> (that manifest, the method that was about to write)."""
        rows = self._db.execute("SELECT id, manifest_digest, manifest_media_type, manifest_body, method FROM untags"
                                " WHERE plan_id = ? AND outcome = 'pending' AND manifest_body IS NOT NULL",
                                [plan_id])
        return {int(r[0]): (Manifest(r[1], r[2], bytes(r[3])), r[4]) for r in rows}

    def plan_progressed(self, plan_id: int) -> bool:
        """Whether any untag of the plan was started or settled: the plan got past its bulk guard once."""
        row = self._db.execute("SELECT EXISTS (SELECT 1 FROM untags WHERE plan_id = ? AND"
                               " (outcome != 'pending' OR started_at IS NOT NULL))", [plan_id]).fetchone()
        return bool(row[0])

    def mark_started(self, untag_ids: Sequence[int], now: float) -> None:
        """One write for a batch of untags about to be sent."""
        with self.transaction():
            for start in range(0, len(untag_ids), 500):
                chunk = untag_ids[start:start + 500]
                self._db.execute(f"UPDATE untags SET started_at = ? WHERE id IN ({marks(len(chunk))})",
                                 [now, *chunk])

    def untags_in_window(self, repository: str, tag: str, at: float, slack: float) -> list[tuple[int, str]]:
        """Done untags of repository:tag whose guard-to-write window (plus ``slack``) holds ``at``:
        (untag id, digest the tag was untagged from)."""
        rows = self._db.execute(
            "SELECT u.id, COALESCE(u.manifest_digest, u.expected_digest) FROM untags u WHERE"
            " u.repository = ? AND u.tag = ? AND u.outcome = 'done' AND u.started_at IS NOT NULL AND"
            " u.started_at - ? <= ? AND u.finished_at + ? >= ?", [repository, tag, slack, at, slack, at])
        return [(int(r[0]), str(r[1] or "")) for r in rows]

    def get_untag(self, untag_id: int) -> tuple[Untag, Manifest | None] | None:
        row = self._db.execute(f"SELECT {UNTAG_COLS}, manifest_digest, manifest_media_type, manifest_body"
                               " FROM untags JOIN plans ON plans.id = plan_id WHERE untags.id = ?",
                               [untag_id]).fetchone()
        if row is None:
            return None
        saved = Manifest(row[14], row[15], bytes(row[16])) if row[16] is not None else None
        return to_untag(row), saved

    def list_untags(self, *, project_path: str | None = None, outcome: str | None = None,
                    since: float | None = None, limit: int = 100, offset: int = 0) -> list[Untag]:
        where, args = filters(project_path=project_path, outcome=outcome, since=since, prefix="untags.")
        rows = self._db.execute(f"SELECT {UNTAG_COLS} FROM untags JOIN plans ON plans.id = plan_id{where}"
                                " ORDER BY untags.id DESC LIMIT ? OFFSET ?", [*args, limit, offset])
        return [to_untag(r) for r in rows]

    def untags_done_since(self, project_path: str, since: float) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM untags WHERE project_path = ? AND outcome = 'done'"
                               " AND finished_at >= ?", [project_path, since]).fetchone()
        return int(row[0])

    def mark_restored(self, untag_id: int, now: float) -> None:
        self._db.execute("UPDATE untags SET restored_at = ? WHERE id = ?", [now, untag_id])

    def requeue_failed_untag(self, untag_id: int, now: float) -> int | None:
        """Retry: a failed untag goes back to pending and its plan is due now (a plan some worker is
        running keeps its lease and picks it up when that runs out). Returns the plan id, or None when
        the untag is not failed (any more)."""
        db = self._db
        with self.transaction():
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
        row = self._db.execute(f"SELECT {_VIEW_COLS} FROM untags JOIN plans ON plans.id = plan_id"
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
        rows = self._db.execute(f"SELECT {_VIEW_COLS} FROM untags JOIN plans ON plans.id = plan_id{where}"
                                " ORDER BY untags.id DESC LIMIT ? OFFSET ?", [*args, limit, offset])
        return [_view(r) for r in rows]

    def restored_counts(self) -> dict[str, int]:
        """Per project: how many untagged images were ever put back (a running total, ``counters``)."""
        return {str(r[0]): int(r[1]) for r in self._db.execute(
            "SELECT project_path, value FROM counters WHERE name = 'restores' AND label = ''")}

    def untagged_image_bytes(self) -> dict[str, int]:
        """Per project: bytes of the blobs (config, layers) that untagged images reference, each blob
        counted once per project, from the manifests saved before each untag (restored ones left out).
        What garbage collection frees at most: blobs another tagged image still uses stay. Blobs of
        untags pruned since (``daemon.store.retention``) are counted by what pruning kept of them."""
        seen: dict[str, dict[str, int]] = {}
        for project, body in self._db.execute(
                "SELECT project_path, manifest_body FROM untags WHERE outcome = 'done' AND restored_at IS"
                " NULL AND manifest_body IS NOT NULL"):
            seen.setdefault(project, {}).update(image_bytes(bytes(body)))
        out = {project: sum(blobs.values()) for project, blobs in seen.items()}
        for project, pruned in self._db.execute("SELECT project_path, value FROM counters WHERE"
                                                " name = 'image_bytes_pruned' AND label = ''"):
            out[str(project)] = out.get(str(project), 0) + int(pruned)
        return out
