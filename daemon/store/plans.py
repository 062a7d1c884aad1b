"""Plans: one per trigger, with its state, due time, lease and approval or rejection, created in one
transaction with the untags the planner decided on (and joined by those of records that arrived later).

Claims are single atomic UPDATEs, never read-then-write, so two workers never run one plan. A claim
names its holder; the holder renews its lease while it works (``renew_plan_lease``), and takes back what
an earlier holder left (``take_back_plan``), each only while the plan is still held as it was. An
operator's decision (``decide_plan``) is one such UPDATE too, so a rejection never cancels a plan a
worker has claimed. It must not decide what a plan holds (the planner does), carry one out (the executor
does), or judge a holder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from daemon.domain.model import Decision, Plan, Trigger
from daemon.store.base import StoreBase
from daemon.store.rows import PLAN_COLS, filters, marks, to_plan


class PlanStore(StoreBase):
    def create_plan(self, trigger: Trigger, decisions: Sequence[Decision], *, state: str, due_at: float,
                    now: float, note: str = "") -> tuple[int, bool]:
        """One plan per trigger key (a trigger raised twice makes one plan). Returns (id, created)."""
        db = self._db
        with self.transaction():
            # The unique index on the trigger key decides between two workers planning one trigger at once.
            made = db.execute(
                "INSERT INTO plans (project_path, trigger_kind, trigger_key, ref, mr_iid, pipeline_id, state,"
                " created_at, due_at, updated_at, note) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
                " RETURNING id",
                [trigger.project_path, trigger.kind, trigger.key, trigger.ref, trigger.mr_iid,
                 trigger.pipeline_id, state, now, due_at, now, note]).fetchall()  # all: SQLite ends the statement
            if not made:
                row = db.execute("SELECT id FROM plans WHERE trigger_key = ?", [trigger.key]).fetchone()
                return int(row[0]), False
            plan_id = int(made[0][0])
            self._insert_untags(plan_id, trigger.project_path, decisions, now)
            return plan_id, True

    def join_plan(self, plan_id: int, decisions: Sequence[Decision], now: float) -> int:
        """Add the decisions for tags the plan does not hold yet (records that arrived after it was
        made), while it has not started. Returns how many joined; 0 when it is too late to join."""
        db = self._db
        with self.transaction():
            # Locked on PostgreSQL until the transaction ends: a worker's claim waits, never runs a plan
            # while untags join it.
            row = db.execute(f"SELECT project_path, state FROM plans WHERE id = ?{self._for_update}",
                             [plan_id]).fetchone()
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
            self._db.execute(
                "INSERT INTO untags (plan_id, project_path, push_record_id, pipeline_id, repository,"
                " tag, expected_digest, outcome, reason, attempts, created_at, finished_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,0,?,?)",
                [plan_id, project_path, u.push_record_id, u.pipeline_id, u.repository, u.tag,
                 u.expected_digest, d.outcome, d.reason, now, None if d.outcome == "pending" else now])
            if u.push_record_id:  # the record has a plan now (the TTL queries skip planned records)
                self._db.execute("UPDATE push_records SET planned_at = ? WHERE id = ? AND planned_at IS NULL",
                                 [now, u.push_record_id])

    def plan_state(self, trigger_key: str) -> tuple[int, str] | None:
        row = self._db.execute("SELECT id, state FROM plans WHERE trigger_key = ?", [trigger_key]).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def ci_requests_of_pipeline(self, project_path: str, pipeline_id: int) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM plans WHERE project_path = ? AND"
                               " trigger_kind = 'ci_request' AND pipeline_id = ?",
                               [project_path, pipeline_id]).fetchone()
        return int(row[0])

    def cancel_scheduled(self, project_path: str, *, kinds: Sequence[str], ref: str | None = None,
                         mr_iid: int | None = None, now: float, note: str) -> int:
        """Cancel still-scheduled plans (MR reopened, branch recreated). Running plans are not touched."""
        # The cancelled plan gives up its trigger key, so the same trigger raised later plans anew.
        sql = (f"UPDATE plans SET state = 'cancelled', note = ?, updated_at = ?,"
               f" trigger_key = trigger_key || ':cancelled:' || id WHERE project_path = ?"
               f" AND state = 'scheduled' AND trigger_kind IN ({marks(len(kinds))})")
        args: list[Any] = [note, now, project_path, *kinds]
        if ref is not None:
            sql += " AND ref = ?"
            args.append(ref)
        if mr_iid is not None:
            sql += " AND mr_iid = ?"
            args.append(mr_iid)
        db = self._db
        with self.transaction():
            cancelled = [int(r[0]) for r in db.execute(sql + " RETURNING id", args).fetchall()]
            # Only the untags of the plans cancelled here: this runs on every pipeline and push hook, and
            # a sweep over all cancelled plans (or all pending untags) grows with the ledger's history.
            for start in range(0, len(cancelled), 500):
                chunk = cancelled[start:start + 500]
                db.execute("UPDATE untags SET outcome = 'skipped', reason = 'cancelled', finished_at = ?"
                           f" WHERE outcome = 'pending' AND plan_id IN ({marks(len(chunk))})",
                           [now, *chunk])
            return len(cancelled)

    def due_plans(self, now: float, limit: int = 50) -> list[Plan]:
        rows = self._db.execute(
            f"SELECT {PLAN_COLS} FROM plans WHERE (state IN ('scheduled', 'ready') AND due_at <= ?)"
            " OR (state = 'running' AND lease_until < ?) ORDER BY due_at, id LIMIT ?", [now, now, limit])
        return [to_plan(r) for r in rows]

    def plan_came_due(self, since: float, now: float) -> bool:
        """Whether a plan became due after ``since`` and by ``now`` (scheduled or ready with its due time
        between them, or running with a lease that ran out between them): work a worker's pass that
        started at ``since`` could not have found due. Reads the (state, due_at) index only."""
        row = self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM plans WHERE state IN ('scheduled', 'ready') AND due_at > ? AND due_at <= ?)"
            " OR EXISTS (SELECT 1 FROM plans WHERE state = 'running' AND lease_until >= ? AND lease_until < ?)",
            [since, now, since, now]).fetchone()
        return bool(row[0])

    def claim_plan(self, plan_id: int, now: float, lease_seconds: float, holder: str | None = None) -> bool:
        """Take a due plan (or one whose lease ran out) for ``lease_seconds``, held by ``holder``."""
        cur = self._db.execute(
            "UPDATE plans SET state = 'running', lease_until = ?, lease_holder = ?, updated_at = ? WHERE id = ?"
            " AND ((state IN ('scheduled', 'ready') AND due_at <= ?) OR (state = 'running' AND lease_until < ?))",
            [now + lease_seconds, holder, now, plan_id, now, now])
        return cur.rowcount == 1

    def renew_plan_lease(self, plan_id: int, holder: str, now: float, lease_seconds: float) -> bool:
        """Extend the lease of a plan ``holder`` runs; False when the plan is no longer held by it (another
        worker took it over, or it is not running any more)."""
        cur = self._db.execute(
            f"UPDATE plans SET lease_until = {self._greatest('COALESCE(lease_until, 0)', '?')} WHERE id = ?"
            " AND state = 'running' AND lease_holder = ?", [now + lease_seconds, plan_id, holder])
        return cur.rowcount == 1

    def running_plan_holders(self) -> list[tuple[int, str]]:
        """(plan id, holder) of every running plan whose holder is known."""
        rows = self._db.execute("SELECT id, lease_holder FROM plans WHERE state = 'running'"
                                " AND lease_holder IS NOT NULL ORDER BY id")
        return [(int(r[0]), str(r[1])) for r in rows]

    def take_back_plan(self, plan_id: int, held_by: str, holder: str, now: float, lease_seconds: float) -> bool:
        """Hand a running plan from ``held_by`` (a holder found gone) to ``holder``, lease or not; False
        when it is not held by ``held_by`` any more."""
        cur = self._db.execute(
            "UPDATE plans SET lease_until = ?, lease_holder = ?, updated_at = ? WHERE id = ? AND state = 'running'"
            " AND lease_holder = ?", [now + lease_seconds, holder, now, plan_id, held_by])
        return cur.rowcount == 1

    def set_plan_state(self, plan_id: int, state: str, now: float, *, note: str | None = None,
                       due_at: float | None = None) -> None:
        self._db.execute("UPDATE plans SET state = ?, updated_at = ?, note = COALESCE(?, note),"
                         " due_at = COALESCE(?, due_at), lease_until = NULL, lease_holder = NULL WHERE id = ?",
                         [state, now, note, due_at, plan_id])

    def get_plan(self, plan_id: int) -> Plan | None:
        row = self._db.execute(f"SELECT {PLAN_COLS} FROM plans WHERE id = ?", [plan_id]).fetchone()
        return None if row is None else to_plan(row)

    def list_plans(self, *, state: str | None = None, project_path: str | None = None,
                   limit: int = 100, offset: int = 0) -> list[Plan]:
        where, args = filters(state=state, project_path=project_path)
        rows = self._db.execute(f"SELECT {PLAN_COLS} FROM plans{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                                [*args, limit, offset])
        return [to_plan(r) for r in rows]

    def decide_plan(self, plan_id: int, approve: bool, who: str, now: float) -> Plan | None:
        """Approve (held -> ready, due now) or reject (held, or scheduled and not started -> cancelled, its
        pending untags skipped ``rejected``). One UPDATE checks the state and writes it, so a plan a
        worker claims meanwhile (``claim_plan`` makes it ``running``) is never cancelled under it. None
        when the plan is not in a state the decision applies to."""
        db = self._db
        with self.transaction():
            if approve:
                cur = db.execute("UPDATE plans SET state = 'ready', due_at = ?, approved_by = ?, note = ?,"
                                 " updated_at = ? WHERE id = ? AND state = 'held'",
                                 [now, who, f"approved by {who}", now, plan_id])
            else:
                cur = db.execute("UPDATE plans SET state = 'cancelled', rejected_by = ?, note = ?, updated_at = ?"
                                 " WHERE id = ? AND (state = 'held' OR (state = 'scheduled'"
                                 " AND lease_holder IS NULL AND (lease_until IS NULL OR lease_until < ?)))",
                                 [who, f"rejected by {who}", now, plan_id, now])
            if cur.rowcount != 1:
                return None
            if not approve:
                db.execute("UPDATE untags SET outcome = 'skipped', reason = 'rejected', finished_at = ?"
                           " WHERE plan_id = ? AND outcome = 'pending'", [now, plan_id])
        return self.get_plan(plan_id)

    def plan_trigger(self, plan_id: int) -> Trigger:
        row = self._db.execute("SELECT trigger_kind, project_path, trigger_key, created_at, ref, mr_iid,"
                               " pipeline_id FROM plans WHERE id = ?", [plan_id]).fetchone()
        return Trigger(kind=row[0], project_path=row[1], key=row[2], raised_at=row[3], ref=row[4],
                       mr_iid=row[5], pipeline_id=row[6])

    def is_approved(self, plan_id: int) -> bool:
        row = self._db.execute("SELECT approved_by FROM plans WHERE id = ?", [plan_id]).fetchone()
        return bool(row and row[0])

    def plan_page(self, *, state: str | None = None, project_path: str | None = None,
                  before_id: int | None = None, limit: int = 50, offset: int = 0) -> list[Plan]:
        clauses, args = [], []
        for clause, value in (("state = ?", state), ("project_path = ?", project_path),
                              ("id < ?", before_id)):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._db.execute(f"SELECT {PLAN_COLS} FROM plans{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                                [*args, limit, offset])
        return [to_plan(r) for r in rows]

    def plan_approver(self, plan_id: int) -> str | None:
        row = self._db.execute("SELECT approved_by FROM plans WHERE id = ?", [plan_id]).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def plan_rejecter(self, plan_id: int) -> str | None:
        row = self._db.execute("SELECT rejected_by FROM plans WHERE id = ?", [plan_id]).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def last_plan_id(self) -> int:
        row = self._db.execute("SELECT MAX(id) FROM plans").fetchone()
        return int(row[0] or 0)

    def plans_after(self, project_path: str, plan_id: int) -> list[Plan]:
        """The project's plans made after ``plan_id`` (inside one write transaction: the ones it made)."""
        rows = self._db.execute(f"SELECT {PLAN_COLS} FROM plans WHERE project_path = ? AND id > ? ORDER BY id",
                                [project_path, plan_id])
        return [to_plan(r) for r in rows]

    def plan_state_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._db.execute("SELECT state, COUNT(*) FROM plans GROUP BY 1")}
