"""Plans and their untags (the audit log). Claims are single atomic UPDATEs, never read-then-write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from daemon.domain.model import Decision, Manifest, Plan, Trigger, Untag
from daemon.store.base import StoreBase
from daemon.store.db import write_tx

_PLAN_COLS = ("id, project_path, trigger_kind, trigger_key, state, created_at, due_at,"
              " (SELECT COUNT(*) FROM untags u WHERE u.plan_id = plans.id), COALESCE(note, '')")
_UNTAG_COLS = ("untags.id, plan_id, untags.project_path, repository, tag, expected_digest, outcome, reason,"
               " untags.created_at, finished_at, method, plans.trigger_kind, push_record_id,"
               " untags.pipeline_id")


def _plan(row: Sequence[Any]) -> Plan:
    return Plan(id=row[0], project_path=row[1], trigger_kind=row[2], trigger_key=row[3], state=row[4],
                created_at=row[5], due_at=row[6], untag_count=row[7], note=row[8])


def _untag(row: Sequence[Any]) -> Untag:
    return Untag(id=row[0], plan_id=row[1], project_path=row[2], repository=row[3], tag=row[4],
                 expected_digest=row[5] or "", outcome=row[6], reason=row[7], created_at=row[8],
                 finished_at=row[9], method=row[10], trigger_kind=row[11], push_record_id=row[12] or 0,
                 pipeline_id=row[13] or 0)


class PlanStore(StoreBase):
    def create_plan(self, trigger: Trigger, decisions: Sequence[Decision], *, state: str, due_at: float,
                    now: float, note: str = "") -> tuple[int, bool]:
        """One plan per trigger key (a trigger raised twice makes one plan). Returns (id, created)."""
        db = self.db
        with write_tx(db):
            cur = db.execute(
                "INSERT OR IGNORE INTO plans (project_path, trigger_kind, trigger_key, ref, mr_iid,"
                " pipeline_id, state, created_at, due_at, updated_at, note) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [trigger.project_path, trigger.kind, trigger.key, trigger.ref, trigger.mr_iid,
                 trigger.pipeline_id, state, now, due_at, now, note])
            if cur.rowcount != 1:
                row = db.execute("SELECT id FROM plans WHERE trigger_key = ?", [trigger.key]).fetchone()
                return int(row[0]), False
            plan_id = int(cur.lastrowid or 0)
            self._insert_untags(plan_id, trigger.project_path, decisions, now)
            return plan_id, True

    def join_plan(self, plan_id: int, decisions: Sequence[Decision], now: float) -> int:
        """Add the decisions for tags the plan does not hold yet (records that arrived after it was
        made), while it has not started. Returns how many joined; 0 when it is too late to join."""
        db = self.db
        with write_tx(db):
            row = db.execute("SELECT project_path, state FROM plans WHERE id = ?", [plan_id]).fetchone()
            if row is None or row[1] not in ("scheduled", "held"):
                return 0
            held = {(r[0], r[1]) for r in db.execute("SELECT repository, tag FROM untags WHERE plan_id = ?",
                                                     [plan_id])}
            fresh = [d for d in decisions if (d.untag.repository, d.untag.tag) not in held]
            self._insert_untags(plan_id, row[0], fresh, now)
            return len(fresh)

    def _insert_untags(self, plan_id: int, project_path: str, decisions: Sequence[Decision],
                       now: float) -> None:
        for d in decisions:
            u = d.untag
            self.db.execute(
                "INSERT INTO untags (plan_id, project_path, push_record_id, pipeline_id, repository,"
                " tag, expected_digest, outcome, reason, attempts, created_at, finished_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,0,?,?)",
                [plan_id, project_path, u.push_record_id, u.pipeline_id, u.repository, u.tag,
                 u.expected_digest, d.outcome, d.reason, now, None if d.outcome == "pending" else now])
            if u.push_record_id:  # the record has a plan now (the TTL queries skip planned records)
                self.db.execute("UPDATE push_records SET planned_at = ? WHERE id = ? AND planned_at IS NULL",
                                [now, u.push_record_id])

    def plan_state(self, trigger_key: str) -> tuple[int, str] | None:
        row = self.db.execute("SELECT id, state FROM plans WHERE trigger_key = ?", [trigger_key]).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def ci_requests_of_pipeline(self, project_path: str, pipeline_id: int) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM plans WHERE project_path = ? AND"
                              " trigger_kind = 'ci_request' AND pipeline_id = ?",
                              [project_path, pipeline_id]).fetchone()
        return int(row[0])

    def cancel_scheduled(self, project_path: str, *, kinds: Sequence[str], ref: str | None = None,
                         mr_iid: int | None = None, now: float, note: str) -> int:
        """Cancel still-scheduled plans (MR reopened, branch recreated). Running plans are not touched."""
        # The cancelled plan gives up its trigger key, so the same trigger raised later plans anew.
        sql = (f"UPDATE plans SET state = 'cancelled', note = ?, updated_at = ?,"
               f" trigger_key = trigger_key || ':cancelled:' || id WHERE project_path = ?"
               f" AND state = 'scheduled' AND trigger_kind IN ({','.join('?' * len(kinds))})")
        args: list[Any] = [note, now, project_path, *kinds]
        if ref is not None:
            sql += " AND ref = ?"
            args.append(ref)
        if mr_iid is not None:
            sql += " AND mr_iid = ?"
            args.append(mr_iid)
        db = self.db
        with write_tx(db):
            cancelled = [int(r[0]) for r in db.execute(sql + " RETURNING id", args).fetchall()]
            # Only the untags of the plans cancelled here: this runs on every pipeline and push hook, and
            # a sweep over all cancelled plans (or all pending untags) grows with the ledger's history.
            for start in range(0, len(cancelled), 500):
                chunk = cancelled[start:start + 500]
                db.execute("UPDATE untags SET outcome = 'skipped', reason = 'cancelled', finished_at = ?"
                           f" WHERE outcome = 'pending' AND plan_id IN ({','.join('?' * len(chunk))})",
                           [now, *chunk])
            return len(cancelled)

    def due_plans(self, now: float, limit: int = 50) -> list[Plan]:
        rows = self.db.execute(
            f"SELECT {_PLAN_COLS} FROM plans WHERE (state IN ('scheduled', 'ready') AND due_at <= ?)"
            " OR (state = 'running' AND lease_until < ?) ORDER BY due_at, id LIMIT ?", [now, now, limit])
        return [_plan(r) for r in rows]

    def claim_plan(self, plan_id: int, now: float, lease_seconds: float) -> bool:
        cur = self.db.execute(
            "UPDATE plans SET state = 'running', lease_until = ?, updated_at = ? WHERE id = ? AND"
            " ((state IN ('scheduled', 'ready') AND due_at <= ?) OR (state = 'running' AND lease_until < ?))",
            [now + lease_seconds, now, plan_id, now, now])
        return cur.rowcount == 1

    def set_plan_state(self, plan_id: int, state: str, now: float, *, note: str | None = None,
                       due_at: float | None = None) -> None:
        self.db.execute("UPDATE plans SET state = ?, updated_at = ?, note = COALESCE(?, note),"
                        " due_at = COALESCE(?, due_at), lease_until = NULL WHERE id = ?",
                        [state, now, note, due_at, plan_id])

    def get_plan(self, plan_id: int) -> Plan | None:
        row = self.db.execute(f"SELECT {_PLAN_COLS} FROM plans WHERE id = ?", [plan_id]).fetchone()
        return None if row is None else _plan(row)

    def list_plans(self, *, state: str | None = None, project_path: str | None = None,
                   limit: int = 100, offset: int = 0) -> list[Plan]:
        where, args = self._filters(state=state, project_path=project_path)
        rows = self.db.execute(f"SELECT {_PLAN_COLS} FROM plans{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                               [*args, limit, offset])
        return [_plan(r) for r in rows]

    def decide_held(self, plan_id: int, approve: bool, who: str, now: float) -> Plan | None:
        """Approve (held -> ready, due now) or reject (held -> cancelled). None if not held."""
        state = "ready" if approve else "cancelled"
        note = f"{'approved' if approve else 'rejected'} by {who}"
        db = self.db
        with write_tx(db):
            cur = db.execute("UPDATE plans SET state = ?, due_at = ?, approved_by = ?, note = ?,"
                             " updated_at = ? WHERE id = ? AND state = 'held'",
                             [state, now, who if approve else None, note, now, plan_id])
            if cur.rowcount != 1:
                return None
            if not approve:
                db.execute("UPDATE untags SET outcome = 'skipped', reason = 'rejected', finished_at = ?"
                           " WHERE plan_id = ? AND outcome = 'pending'", [now, plan_id])
        return self.get_plan(plan_id)

    def plan_trigger(self, plan_id: int) -> Trigger:
        row = self.db.execute("SELECT trigger_kind, project_path, trigger_key, created_at, ref, mr_iid,"
                              " pipeline_id FROM plans WHERE id = ?", [plan_id]).fetchone()
        return Trigger(kind=row[0], project_path=row[1], key=row[2], raised_at=row[3], ref=row[4],
                       mr_iid=row[5], pipeline_id=row[6])

    def is_approved(self, plan_id: int) -> bool:
        row = self.db.execute("SELECT approved_by FROM plans WHERE id = ?", [plan_id]).fetchone()
        return bool(row and row[0])

    # untags -----------------------------------------------------------------------------------------
    def pending_untags(self, plan_id: int) -> list[Untag]:
        rows = self.db.execute(f"SELECT {_UNTAG_COLS} FROM untags JOIN plans ON plans.id = plan_id"
                               " WHERE plan_id = ? AND outcome = 'pending' ORDER BY repository, tag",
                               [plan_id])
        return [_untag(r) for r in rows]

    def plan_untags(self, plan_id: int) -> list[Untag]:
        rows = self.db.execute(f"SELECT {_UNTAG_COLS} FROM untags JOIN plans ON plans.id = plan_id"
                               " WHERE plan_id = ? ORDER BY untags.id", [plan_id])
        return [_untag(r) for r in rows]

    def finish_untag(self, untag_id: int, *, outcome: str, reason: str | None, method: str | None,
                     saved: Manifest | None, now: float) -> None:
        self.db.execute(
            "UPDATE untags SET outcome = ?, reason = ?, method = ?, finished_at = ?,"
            " attempts = attempts + 1, manifest_digest = COALESCE(?, manifest_digest),"
            " manifest_media_type = COALESCE(?, manifest_media_type),"
            " manifest_body = COALESCE(?, manifest_body) WHERE id = ?",
            [outcome, reason, method, now, saved.digest if saved else None,
             saved.media_type if saved else None, saved.body if saved else None, untag_id])

    def mark_started(self, untag_ids: Sequence[int], now: float) -> None:
        for untag_id in untag_ids:
            self.db.execute("UPDATE untags SET started_at = ? WHERE id = ?", [now, untag_id])

    def untags_in_window(self, repository: str, tag: str, at: float, slack: float) -> list[tuple[int, str]]:
        """Done untags of repository:tag whose guard-to-write window (plus ``slack``) holds ``at``:
        (untag id, digest the tag was untagged from)."""
        rows = self.db.execute(
            "SELECT u.id, COALESCE(u.manifest_digest, u.expected_digest) FROM untags u WHERE"
            " u.repository = ? AND u.tag = ? AND u.outcome = 'done' AND u.started_at IS NOT NULL AND"
            " u.started_at - ? <= ? AND u.finished_at + ? >= ?", [repository, tag, slack, at, slack, at])
        return [(int(r[0]), str(r[1] or "")) for r in rows]

    def add_repair(self, untag_id: int, repository: str, tag: str, digest: str, seen_at: float,
                   now: float) -> bool:
        cur = self.db.execute(
            "INSERT OR IGNORE INTO repairs (untag_id, repository, tag, digest, seen_at, state, created_at)"
            " VALUES (?,?,?,?,?,'pending',?)", [untag_id, repository, tag, digest, seen_at, now])
        return cur.rowcount == 1

    def pending_repairs(self, limit: int = 50) -> list[tuple[int, int, str, str, str, str]]:
        """(repair id, untag id, project path, repository, tag, digest to put back)."""
        rows = self.db.execute(
            "SELECT r.id, r.untag_id, u.project_path, r.repository, r.tag, r.digest FROM repairs r"
            " JOIN untags u ON u.id = r.untag_id WHERE r.state = 'pending' ORDER BY r.id LIMIT ?", [limit])
        return [(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5])) for r in rows]

    def finish_repair(self, repair_id: int, state: str, note: str, now: float) -> None:
        self.db.execute("UPDATE repairs SET state = ?, note = ?, finished_at = ? WHERE id = ?",
                        [state, note, now, repair_id])

    def get_untag(self, untag_id: int) -> tuple[Untag, Manifest | None] | None:
        row = self.db.execute(f"SELECT {_UNTAG_COLS}, manifest_digest, manifest_media_type, manifest_body"
                              " FROM untags JOIN plans ON plans.id = plan_id WHERE untags.id = ?",
                              [untag_id]).fetchone()
        if row is None:
            return None
        saved = Manifest(row[14], row[15], bytes(row[16])) if row[16] is not None else None
        return _untag(row), saved

    def list_untags(self, *, project_path: str | None = None, outcome: str | None = None,
                    since: float | None = None, limit: int = 100, offset: int = 0) -> list[Untag]:
        where, args = self._filters(project_path=project_path, outcome=outcome, since=since,
                                    prefix="untags.")
        rows = self.db.execute(f"SELECT {_UNTAG_COLS} FROM untags JOIN plans ON plans.id = plan_id{where}"
                               " ORDER BY untags.id DESC LIMIT ? OFFSET ?", [*args, limit, offset])
        return [_untag(r) for r in rows]

    def untags_done_since(self, project_path: str, since: float) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM untags WHERE project_path = ? AND outcome = 'done'"
                              " AND finished_at >= ?", [project_path, since]).fetchone()
        return int(row[0])

    def mark_restored(self, untag_id: int, now: float) -> None:
        self.db.execute("UPDATE untags SET restored_at = ? WHERE id = ?", [now, untag_id])

    @staticmethod
    def _filters(*, state: str | None = None, project_path: str | None = None, outcome: str | None = None,
                 since: float | None = None, prefix: str = "") -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in ((f"{prefix}project_path", project_path), ("state", state),
                              ("outcome", outcome)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            clauses.append(f"{prefix}created_at >= ?")
            args.append(since)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args
