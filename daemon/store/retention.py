"""Pruning: what the janitor no longer needs leaves storage, one small batch (one transaction) at a time,
and ``backup_to``: a consistent copy of the live database.

Each ``prune_*`` walks its table from the oldest rows upward (ids, or SQLite's rowids, are in order of
arrival; on PostgreSQL the tables without an id, pipelines and refs, are swept by their condition instead),
from ``after`` (0 for a new pass) over at most ``limit`` rows, and deletes those of them that are due and
that nothing can still need. It returns what it deleted and where the next batch starts: None when the
pass reached rows too new to be due (start again from 0 next time). No index is added for this: the
walks follow the primary keys.

What goes (``before``: the cutoff of the retention that applies):
  events         processed and applied inbox events received before ``before`` (``storage.retention.events``)
  unusable       events set aside as unusable received before ``before`` (``storage.retention.plans``)
  plans          finished plans (done, cancelled, dry_run) last changed before ``before``, with their untags and
                 those untags' finished restore/retry requests and race repairs; never a plan with an untag
                 pending, failed (an operator may retry it), finished or restored since ``before``, with a
                 restore, retry or repair still open, or whose merge request's note is not yet settled
  push_records   records whose tag is gone (untagged) or was never pushed (dropped), or whose push a later
                 pipeline of the same ref and MR overwrote (confirmed, branch or merge request lifetime: the
                 newer record stands for it), last changed before ``before``, that no kept untag names
  merge_requests merged or closed before ``before``, their trigger raised and its plan pruned, that no expected
                 or confirmed record names (by iid or source branch), with no note pending
  pipelines      finished pipelines last heard of before ``before`` that no push record names, except each
                 project's newest pipeline that names its default branch
  refs           branches deleted before ``before`` that no push record names
  observations   registry pushes seen before ``before``
Kept for good: confirmed and expected push records (they describe tags in the registry: S4 reads them) but
the overwritten ones above, open merge requests and those something may still raise a trigger for, the
merge-request notes (the row that refuses a second note), live refs, unfinished pipelines, held,
scheduled, ready and running plans.

Counters never fall: they are rows of their own (``daemon.store.counters``). What status reads from the
pruned rows is kept elsewhere first: each kind's last event (``counters.last_at``) and, for
``untagged_image_bytes``, the bytes of the blobs only the pruned untags referenced (``image_bytes_pruned``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from daemon.store.base import StoreBase
from daemon.store.db import ConnectionPool as SqlitePool
from daemon.store.rows import marks
from daemon.store.untags import image_bytes

#: (what was deleted, by kind: rows) and where the next batch of the pass starts (None: the pass is done).
Batch = tuple[dict[str, int], int | None]

_FINISHED_PLANS = "('done', 'cancelled', 'dry_run')"
_FINISHED_PIPELINES = "('success', 'failed', 'canceled', 'skipped')"
# A finished plan something may still need: an untag pending, failed (retry), recently finished or
# restored, with an open restore/retry request or a pending race repair; a merge request's note unsettled.
# Its two parameters are both the cutoff.
_PLAN_NEEDED = (
    "EXISTS (SELECT 1 FROM untags u WHERE u.plan_id = p.id AND (u.outcome IN ('pending', 'failed')"
    " OR COALESCE(u.finished_at, 0) >= ? OR COALESCE(u.restored_at, 0) >= ?"
    " OR EXISTS (SELECT 1 FROM operator_requests o WHERE o.untag_id = u.id AND o.state IN ('pending', 'running'))"
    " OR EXISTS (SELECT 1 FROM repairs x WHERE x.untag_id = u.id AND x.state = 'pending')))"
    " OR (p.state = 'done' AND p.trigger_kind IN ('merge_request_merged', 'merge_request_closed')"
    " AND p.mr_iid IS NOT NULL AND p.mr_note_checked IS DISTINCT FROM p.updated_at)"
    " OR EXISTS (SELECT 1 FROM mr_notes n WHERE n.project_path = p.project_path AND n.mr_iid = p.mr_iid"
    " AND n.plan_id = p.id AND n.state IN ('pending', 'sending'))"
)

# A confirmed record whose tag a later pipeline of the same ref (and MR) pushed again with the same
# lifetime: that push overwrote it, and the newer record stands for it in every trigger that covers it
# (by ref or MR) and as a live owner (S4: the same ref, the same MR). Not for pipeline or TTL lifetimes,
# whose triggers name their own pipeline or record. (``+``: looked up by tag or ref, not by pipeline or MR.)
_SUPERSEDED = (
    "(state = 'confirmed' AND lifetime IN ('branch', 'merge_request') AND EXISTS (SELECT 1 FROM push_records n"
    " WHERE n.repository = push_records.repository AND n.tag = push_records.tag AND n.project_path ="
    " push_records.project_path AND n.state = 'confirmed' AND +n.pipeline_id > push_records.pipeline_id AND"
    " n.lifetime = push_records.lifetime AND n.ref IS NOT DISTINCT FROM push_records.ref AND +n.mr_iid IS NOT"
    " DISTINCT FROM push_records.mr_iid))"
)
# A merged or closed MR nothing needs any more: its trigger raised (``trigger_raised``: a hook saying it
# again raises nothing), its plan pruned, no record its trigger could still cover (by iid, or its source
# branch's), no note pending. Should a hook bring it back, its trigger finds no record: no plan, no note
# (the MR's ``mr_notes`` row, which refuses a second note, stays).
_MR_DONE = (
    "state IN ('merged', 'closed') AND trigger_raised = state AND NOT EXISTS (SELECT 1 FROM plans p WHERE"
    " p.trigger_key = (CASE WHEN merge_requests.state = 'merged' THEN 'merge_request_merged:' ELSE"
    " 'merge_request_closed:' END || merge_requests.project_path || ':' || CAST(merge_requests.iid AS TEXT)))"
    " AND NOT EXISTS (SELECT 1 FROM push_records r WHERE r.project_path = merge_requests.project_path AND"
    " r.mr_iid = merge_requests.iid AND r.state IN ('expected', 'confirmed')) AND NOT EXISTS (SELECT 1 FROM"
    " push_records r WHERE r.project_path = merge_requests.project_path AND r.ref = merge_requests.source_branch"
    " AND r.state IN ('expected', 'confirmed')) AND NOT EXISTS (SELECT 1 FROM mr_notes n WHERE n.project_path ="
    " merge_requests.project_path AND n.mr_iid = merge_requests.iid AND n.state IN ('pending', 'sending'))"
)


class BackupFailed(Exception):
    """The copy could not be made or failed its check (what SQLite or the file system said)."""


class RetentionStore(StoreBase):
    def _window(self, table: str, key: str, age: str, after: int, before: float, limit: int) -> tuple[int, bool]:
        """The last key of the next ``limit`` rows after ``after`` (in key order) whose ``age`` column is
        before ``before``, and whether the walk stops there (a row too new, or the table's end)."""
        rows = self._db.execute(f"SELECT {key}, {age} FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?",
                                [after, limit]).fetchall()
        upper = after
        for row in rows:
            if row[1] is not None and float(row[1]) >= before:
                return upper, True
            upper = int(row[0])
        return upper, len(rows) < limit

    def _walk(self, table: str, key: str, age: str, after: int, before: float, limit: int,
              delete: Callable[[int, int], dict[str, int]]) -> Batch:
        with self.transaction():
            upper, done = self._window(table, key, age, after, before, limit)
            deleted = delete(after, upper) if upper > after else {}
        return deleted, None if done else upper

    # events ----------------------------------------------------------------------------------------
    def prune_events(self, after: int, before: float, limit: int) -> Batch:
        """Applied events (processed, no error) received before ``before``; events not yet applied, and
        those set aside as unusable, stay."""
        def delete(low: int, high: int) -> dict[str, int]:
            cur = self._db.execute("DELETE FROM inbox WHERE id > ? AND id <= ? AND processed_at IS NOT NULL"
                                   " AND error IS NULL", [low, high])
            return {"events": cur.rowcount}
        return self._walk("inbox", "id", "received_at", after, before, limit, delete)

    def prune_unusable_events(self, after: int, before: float, limit: int) -> Batch:
        """Events set aside as unusable received before ``before`` (their own partial index: few rows)."""
        with self.transaction():
            rows = self._db.execute("SELECT id, received_at FROM inbox WHERE error IS NOT NULL AND id > ?"
                                    " ORDER BY id LIMIT ?", [after, limit]).fetchall()
            due = [int(r[0]) for r in rows if float(r[1]) < before]
            if due:
                self._db.execute(f"DELETE FROM inbox WHERE id IN ({marks(len(due))})", due)
        return {"unusable_events": len(due)}, None if len(rows) < limit else int(rows[-1][0])

    # plans and their untags ------------------------------------------------------------------------
    def prune_plans(self, after: int, before: float, limit: int) -> Batch:
        """Finished plans last changed before ``before`` that nothing needs, with their untags."""
        def delete(low: int, high: int) -> dict[str, int]:
            db = self._db
            ids = [int(r[0]) for r in db.execute(
                f"SELECT p.id FROM plans p WHERE p.id > ? AND p.id <= ? AND p.state IN {_FINISHED_PLANS}"
                f" AND p.updated_at < ? AND NOT ({_PLAN_NEEDED})", [low, high, before, before, before])]
            if not ids:
                return {}
            self._keep_image_bytes(ids)
            untags = f"SELECT id FROM untags WHERE plan_id IN ({marks(len(ids))})"
            db.execute(f"DELETE FROM operator_requests WHERE untag_id IN ({untags})", ids)
            db.execute(f"DELETE FROM repairs WHERE untag_id IN ({untags})", ids)
            gone = db.execute(f"DELETE FROM untags WHERE plan_id IN ({marks(len(ids))})", ids).rowcount
            db.execute(f"DELETE FROM plans WHERE id IN ({marks(len(ids))})", ids)
            return {"plans": len(ids), "untags": gone}
        return self._walk("plans", "id", "created_at", after, before, limit, delete)

    def _keep_image_bytes(self, plan_ids: Sequence[int]) -> None:
        """Before these plans' untags go: add to each project's ``image_bytes_pruned`` the bytes of the blobs
        that only they reference among the untagged images not restored (``untagged_image_bytes`` reads
        both, so it stays what it was)."""
        db = self._db
        leaving: dict[str, dict[str, int]] = {}
        for project, body in db.execute(
                f"SELECT project_path, manifest_body FROM untags WHERE plan_id IN ({marks(len(plan_ids))}) AND"
                " outcome = 'done' AND restored_at IS NULL AND manifest_body IS NOT NULL", list(plan_ids)):
            leaving.setdefault(str(project), {}).update(image_bytes(bytes(body)))
        for project, blobs in leaving.items():
            if not blobs:
                continue
            for (body,) in db.execute(
                    f"SELECT manifest_body FROM untags WHERE project_path = ? AND outcome = 'done' AND restored_at"
                    f" IS NULL AND manifest_body IS NOT NULL AND plan_id NOT IN ({marks(len(plan_ids))})",
                    [project, *plan_ids]):
                for digest in image_bytes(bytes(body)):
                    blobs.pop(digest, None)
            if blobs:
                db.execute("INSERT INTO counters (name, project_path, label, value) VALUES"
                           " ('image_bytes_pruned', ?, '', ?) ON CONFLICT (name, project_path, label)"
                           " DO UPDATE SET value = counters.value + excluded.value", [project, sum(blobs.values())])

    # the ledger ------------------------------------------------------------------------------------
    def prune_push_records(self, after: int, before: float, limit: int) -> Batch:
        """Records untagged or dropped, or superseded, last changed before ``before``, that no untag names."""
        def delete(low: int, high: int) -> dict[str, int]:
            cur = self._db.execute(
                "DELETE FROM push_records WHERE id > ? AND id <= ? AND updated_at < ? AND NOT EXISTS"
                " (SELECT 1 FROM untags u WHERE u.push_record_id = push_records.id) AND (state IN"
                f" ('untagged', 'dropped') OR {_SUPERSEDED})", [low, high, before])
            return {"push_records": cur.rowcount}
        return self._walk("push_records", "id", "recorded_at", after, before, limit, delete)

    def prune_pipelines(self, after: int, before: float, limit: int) -> Batch:
        """Finished pipelines last heard of before ``before`` that no push record names; each project's
        newest pipeline naming its default branch stays (``default_branch`` reads it)."""
        if self._postgres:
            return self._sweep(
                "pipelines", f"status IN {_FINISHED_PIPELINES} AND updated_at < ? AND (default_branch IS NULL OR"
                " EXISTS (SELECT 1 FROM pipelines n WHERE n.project_path = pipelines.project_path AND"
                " n.default_branch IS NOT NULL AND n.pipeline_id > pipelines.pipeline_id)) AND NOT EXISTS"
                " (SELECT 1 FROM push_records r WHERE r.project_path = pipelines.project_path AND r.pipeline_id ="
                " pipelines.pipeline_id)", before, after, limit)

        def delete(low: int, high: int) -> dict[str, int]:
            db = self._db
            projects = [str(r[0]) for r in db.execute(
                "SELECT DISTINCT project_path FROM pipelines WHERE rowid > ? AND rowid <= ?", [low, high])]
            keep = [int(r[0]) for r in (db.execute(
                "SELECT rowid FROM pipelines WHERE project_path = ? AND default_branch IS NOT NULL"
                " ORDER BY pipeline_id DESC LIMIT 1", [p]).fetchone() for p in projects) if r is not None]
            cur = db.execute(
                f"DELETE FROM pipelines WHERE rowid > ? AND rowid <= ? AND status IN {_FINISHED_PIPELINES}"
                f" AND updated_at < ? AND rowid NOT IN ({marks(len(keep))}) AND NOT EXISTS (SELECT 1 FROM"
                " push_records r WHERE r.project_path = pipelines.project_path AND r.pipeline_id ="
                " pipelines.pipeline_id)", [low, high, before, *keep])
            return {"pipelines": cur.rowcount}
        # Heard of in no particular order of rowid: the walk goes to the end of the table.
        return self._walk("pipelines", "rowid", "NULL", after, before, limit, delete)

    def prune_refs(self, after: int, before: float, limit: int) -> Batch:
        """Branches deleted before ``before`` that no push record names (an unknown ref is asked of GitLab)."""
        if self._postgres:
            return self._sweep(
                "refs", "live = 0 AND COALESCE(deleted_at, updated_at) < ? AND NOT EXISTS (SELECT 1 FROM"
                " push_records r WHERE r.project_path = refs.project_path AND r.ref = refs.ref)", before, after, limit)

        def delete(low: int, high: int) -> dict[str, int]:
            cur = self._db.execute(
                "DELETE FROM refs WHERE rowid > ? AND rowid <= ? AND live = 0 AND COALESCE(deleted_at,"
                " updated_at) < ? AND NOT EXISTS (SELECT 1 FROM push_records r WHERE r.project_path ="
                " refs.project_path AND r.ref = refs.ref)", [low, high, before])
            return {"refs": cur.rowcount}
        return self._walk("refs", "rowid", "NULL", after, before, limit, delete)

    def prune_merge_requests(self, after: int, before: float, limit: int) -> Batch:
        """Merge requests merged or closed before ``before`` whose trigger was raised and whose plan is gone,
        that no expected or confirmed record names (by iid or source branch), with no note unsettled."""
        if self._postgres:
            return self._sweep("merge_requests", f"updated_at < ? AND {_MR_DONE}", before, after, limit)

        def delete(low: int, high: int) -> dict[str, int]:
            cur = self._db.execute(f"DELETE FROM merge_requests WHERE rowid > ? AND rowid <= ? AND updated_at < ?"
                                   f" AND {_MR_DONE}", [low, high, before])
            return {"merge_requests": cur.rowcount}
        return self._walk("merge_requests", "rowid", "NULL", after, before, limit, delete)

    def _sweep(self, table: str, due: str, before: float, after: int, limit: int) -> Batch:
        """On PostgreSQL, for a table without an id to walk (``rowid`` is SQLite's): delete at most ``limit``
        of the rows for which ``due`` (with the cutoff as its one parameter) holds; the pass goes on
        (``after`` + 1) while a batch was full."""
        with self.transaction():
            gone = self._db.execute(f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE {due}"
                                    " LIMIT ?)", [before, limit]).rowcount
        return {table: gone}, after + 1 if gone >= limit else None

    def prune_observations(self, after: int, before: float, limit: int) -> Batch:
        def delete(low: int, high: int) -> dict[str, int]:
            cur = self._db.execute("DELETE FROM observations WHERE id > ? AND id <= ? AND seen_at < ?",
                                   [low, high, before])
            return {"observations": cur.rowcount}
        return self._walk("observations", "id", "seen_at", after, before, limit, delete)

    # backup ----------------------------------------------------------------------------------------
    def backup_to(self, target: str, *, overwrite: bool = False, pages: int = 1024,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Copy this database, while others go on writing to it, to the file ``target`` with SQLite's online
        backup API (``pages`` at a time; a write in between makes it copy again what changed), check the
        copy (``quick_check``) and only then put it in place. Returns the copy's size in bytes, its schema
        version and the check's answer ('ok' when sound). ``FileExistsError`` when ``target`` exists and
        ``overwrite`` is not given; ``BackupFailed`` when the copy could not be made or is not sound."""
        if not isinstance(self._pool, SqlitePool):
            raise BackupFailed("backup copies an SQLite store; back up PostgreSQL with pg_dump -Fc")
        path = Path(target)
        if path.exists() and not overwrite:
            raise FileExistsError(target)
        partial = path.with_name(f".{path.name}.partial")
        partial.unlink(missing_ok=True)
        source = sqlite3.connect(f"{Path(self._pool.path).absolute().as_uri()}?mode=ro", uri=True, timeout=30.0,
                                 isolation_level=None)
        try:
            # One read transaction across every step: the copy is the snapshot it began with (WAL lets the
            # writers go on), instead of starting over each time another connection writes.
            source.execute("BEGIN")
            source.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            copy = sqlite3.connect(str(partial))
            try:
                source.backup(copy, pages=pages,
                              progress=(lambda _status, left, total: progress(total - left, total))
                              if progress is not None else None)
                version = copy.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
                check = "; ".join(str(r[0]) for r in copy.execute("PRAGMA quick_check"))
            finally:
                copy.close()
            if check != "ok":
                raise BackupFailed(f"the copy failed its check: {check}")
            os.replace(partial, path)
        except (sqlite3.Error, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise BackupFailed(str(exc) or exc.__class__.__name__) from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            source.close()
        return {"bytes": path.stat().st_size, "schema_version": int(version or 0), "check": check}
