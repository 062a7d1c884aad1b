"""Row mappers the parts share: the columns each domain object is read from and how a row becomes one.

Stores nothing and runs no SQL; only the store's parts import it, and what it returns are domain objects
(never rows), so nothing of the database's shape leaves the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from daemon.domain.model import Pipeline, Plan, PushRecord, Untag

RECORD_COLS = ("id, project_path, pipeline_id, repository, tag, digest, lifetime, state, source, ref,"
               " mr_iid, recorded_at, ttl_seconds")
PIPELINE_COLS = ("project_path, pipeline_id, ref, sha, status, iid, is_tag, mr_iid, default_branch,"
                 " created_at")
PLAN_COLS = ("id, project_path, trigger_kind, trigger_key, state, created_at, due_at,"
             " (SELECT COUNT(*) FROM untags u WHERE u.plan_id = plans.id), COALESCE(note, '')")
# Read from ``untags JOIN plans ON plans.id = plan_id``: an untag names the kind of trigger that planned it.
UNTAG_COLS = ("untags.id, plan_id, untags.project_path, repository, tag, expected_digest, outcome, reason,"
              " untags.created_at, finished_at, method, plans.trigger_kind, push_record_id,"
              " untags.pipeline_id")


def to_record(row: Sequence[Any]) -> PushRecord:
    return PushRecord(id=row[0], project_path=row[1], pipeline_id=row[2], repository=row[3], tag=row[4],
                      digest=row[5], lifetime=row[6], state=row[7], source=row[8], ref=row[9],
                      mr_iid=row[10], recorded_at=row[11], ttl_seconds=row[12])


def to_pipeline(row: Sequence[Any]) -> Pipeline:
    return Pipeline(project_path=row[0], pipeline_id=row[1], ref=row[2], sha=row[3] or "", status=row[4],
                    iid=row[5], is_tag=bool(row[6]), mr_iid=row[7], default_branch=row[8],
                    created_at=row[9] or 0.0)


def to_plan(row: Sequence[Any]) -> Plan:
    return Plan(id=row[0], project_path=row[1], trigger_kind=row[2], trigger_key=row[3], state=row[4],
                created_at=row[5], due_at=row[6], untag_count=row[7], note=row[8])


def to_untag(row: Sequence[Any]) -> Untag:
    return Untag(id=row[0], plan_id=row[1], project_path=row[2], repository=row[3], tag=row[4],
                 expected_digest=row[5] or "", outcome=row[6], reason=row[7], created_at=row[8],
                 finished_at=row[9], method=row[10], trigger_kind=row[11], push_record_id=row[12] or 0,
                 pipeline_id=row[13] or 0)


def marks(n: int) -> str:
    """``?,?,...``: ``n`` placeholders for an ``IN (...)`` list."""
    return ",".join("?" * n)


def filters(*, state: str | None = None, project_path: str | None = None, outcome: str | None = None,
            since: float | None = None, prefix: str = "") -> tuple[str, list[Any]]:
    """A ``WHERE`` clause (empty without filters) and its arguments for the list pages; ``prefix``
    names the table whose ``project_path`` and ``created_at`` are meant in a join."""
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
