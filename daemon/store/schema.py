"""Versioned migrations of the SQLite schema: every table the parts store in, and ``schema_version``
(which migrations ran). Append a function, never edit a released one.

Each migration runs once, in a transaction with its version row, so a database of any earlier version
is brought forward without loss (later releases add tables and columns to existing files).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

from daemon.store.db import write_tx


def _v1(db: sqlite_utils.Database) -> None:
    db.table("inbox").create(
        {"id": int, "delivery_key": str, "source": str, "kind": str, "project_path": str,
         "headers": str, "body": bytes, "received_at": float, "processed_at": float, "error": str},
        pk="id", not_null={"delivery_key", "source", "kind", "body", "received_at"},
    )
    db.table("inbox").create_index(["delivery_key"], unique=True)
    db.execute("CREATE INDEX idx_inbox_pending ON inbox(id) WHERE processed_at IS NULL")
    db.table("inbox").create_index(["project_path", "kind", "received_at"])

    db.table("pipelines").create(
        {"project_path": str, "pipeline_id": int, "iid": int, "ref": str, "sha": str, "status": str,
         "is_tag": int, "mr_iid": int, "default_branch": str, "created_at": float, "updated_at": float},
        pk=("project_path", "pipeline_id"), not_null={"ref", "status"},
    )
    db.table("pipelines").create_index(["project_path", "ref"])
    db.table("pipelines").create_index(["project_path", "mr_iid"])

    db.table("push_records").create(
        {"id": int, "project_path": str, "pipeline_id": int, "repository": str, "tag": str,
         "digest": str, "lifetime": str, "ttl_seconds": float, "state": str, "source": str, "ref": str,
         "mr_iid": int, "recorded_at": float, "updated_at": float},
        pk="id", not_null={"project_path", "pipeline_id", "repository", "tag", "lifetime", "state"},
    )
    db.table("push_records").create_index(["project_path", "pipeline_id", "repository", "tag"], unique=True)
    db.table("push_records").create_index(["repository", "tag"])
    db.table("push_records").create_index(["project_path", "ref"])
    db.table("push_records").create_index(["project_path", "mr_iid"])
    db.execute("CREATE INDEX idx_push_records_ttl ON push_records(project_path, recorded_at) "
               "WHERE ttl_seconds IS NOT NULL")

    db.table("observations").create(
        {"id": int, "repository": str, "tag": str, "digest": str, "seen_at": float}, pk="id")
    db.table("observations").create_index(["repository", "tag", "seen_at"])

    db.table("merge_requests").create(
        {"project_path": str, "iid": int, "source_branch": str, "source_project_id": int,
         "target_project_id": int, "state": str, "updated_at": float},
        pk=("project_path", "iid"),
    )
    db.table("merge_requests").create_index(["project_path", "source_branch"])
    db.table("refs").create({"project_path": str, "ref": str, "live": int, "updated_at": float},
                      pk=("project_path", "ref"))

    db.table("plans").create(
        {"id": int, "project_path": str, "trigger_kind": str, "trigger_key": str, "ref": str,
         "mr_iid": int, "pipeline_id": int, "state": str, "created_at": float, "due_at": float,
         "updated_at": float, "lease_until": float, "note": str, "approved_by": str},
        pk="id", not_null={"project_path", "trigger_kind", "trigger_key", "state"},
    )
    db.table("plans").create_index(["trigger_key"], unique=True)
    db.table("plans").create_index(["state", "due_at"])
    db.table("plans").create_index(["project_path", "state"])

    db.table("untags").create(
        {"id": int, "plan_id": int, "project_path": str, "push_record_id": int, "pipeline_id": int,
         "repository": str, "tag": str, "expected_digest": str, "outcome": str, "reason": str,
         "method": str, "attempts": int, "created_at": float, "finished_at": float,
         "manifest_digest": str, "manifest_media_type": str, "manifest_body": bytes,
         "restored_at": float},
        pk="id", not_null={"plan_id", "project_path", "repository", "tag", "outcome"},
        foreign_keys=[("plan_id", "plans", "id")],
    )
    db.table("untags").create_index(["plan_id", "outcome"])
    db.table("untags").create_index(["project_path", "finished_at"])
    db.table("untags").create_index(["outcome", "finished_at"])

    db.table("kv").create({"key": str, "value": str, "updated_at": float}, pk="key")


def _v2_ci_records(db: sqlite_utils.Database) -> None:
    # CI records pushed without a digest wait for the worker's HEAD; find them without a scan.
    db.execute("CREATE INDEX idx_push_records_unresolved_ci ON push_records(id)"
               " WHERE state = 'expected' AND source = 'ci'")


def _v3_race_repair(db: sqlite_utils.Database) -> None:
    # When each untag's guard read happened: a push landing between it and the write is repaired.
    db.table("untags").add_column("started_at", float)
    db.table("repairs").create(
        {"id": int, "untag_id": int, "repository": str, "tag": str, "digest": str, "seen_at": float,
         "state": str, "note": str, "created_at": float, "finished_at": float},
        pk="id", not_null={"untag_id", "repository", "tag", "digest", "state"},
    )
    db.table("repairs").create_index(["untag_id", "digest"], unique=True)
    db.execute("CREATE INDEX idx_repairs_pending ON repairs(id) WHERE state = 'pending'")


def _v4_operations(db: sqlite_utils.Database) -> None:
    # Restores and retries operators ask for (API, CLI, dashboard), carried out by the worker.
    db.table("operator_requests").create(
        {"id": int, "kind": str, "untag_id": int, "state": str, "reason": str, "requested_by": str,
         "requested_at": float, "updated_at": float, "lease_until": float, "finished_at": float},
        pk="id", not_null={"kind", "untag_id", "state", "requested_at"},
        foreign_keys=[("untag_id", "untags", "id")],
    )
    db.execute("CREATE INDEX idx_operator_requests_open ON operator_requests(id)"
               " WHERE state IN ('pending', 'running')")
    db.table("operator_requests").create_index(["untag_id", "kind"])
    # Registry request counters and latency buckets, flushed by the worker each tick (metrics read them).
    db.table("registry_requests").create(
        {"method": str, "code": int, "count": int, "seconds_sum": float}, pk=("method", "code"))
    db.table("registry_request_buckets").create({"method": str, "le": str, "count": int},
                                                pk=("method", "le"))


def _v5_untags_by_record(db: sqlite_utils.Database) -> None:
    # "Has this push record been planned already?" is asked per TTL candidate every tick.
    db.table("untags").create_index(["push_record_id"])


def _v6_ttl_expiry(db: sqlite_utils.Database) -> None:
    # Every worker tick asks which projects hold TTL tags that expired and were never planned, and each
    # TTL trigger asks for them in its project. Expiry is recorded_at + ttl_seconds and "never planned" a
    # NOT EXISTS over untags, so both walked every TTL record ever pushed, dry-run and skipped ones
    # included. A record now remembers when a plan first took it, and two partial indexes hold only the
    # live TTL records no plan took yet, by expiry.
    db.table("push_records").add_column("planned_at", float)
    db.execute("UPDATE push_records SET planned_at = (SELECT COALESCE(MIN(u.created_at), 0) FROM untags u"
               " WHERE u.push_record_id = push_records.id)"
               " WHERE EXISTS (SELECT 1 FROM untags u WHERE u.push_record_id = push_records.id)")
    db.execute("CREATE INDEX idx_push_records_ttl_due ON push_records(recorded_at + ttl_seconds)"
               " WHERE ttl_seconds IS NOT NULL AND state = 'confirmed' AND planned_at IS NULL")
    db.execute("CREATE INDEX idx_push_records_ttl_live ON push_records(project_path, recorded_at + ttl_seconds)"
               " WHERE ttl_seconds IS NOT NULL AND state IN ('expected', 'confirmed') AND planned_at IS NULL")
    db.execute("DROP INDEX idx_push_records_ttl")  # v1's index of every TTL record: no query reads it now


def _v7_open_merge_requests(db: sqlite_utils.Database) -> None:
    # Every plan asks which of the project's merge requests are open (their branches are live, S4); the
    # primary key gave every merge request the project ever had.
    db.table("merge_requests").create_index(["project_path", "state"])


def _v8_project_problems(db: sqlite_utils.Database) -> None:
    # What the worker found wrong with a project's setup (a registry token without delete), shown by
    # status, the dashboard and the metrics until an untag of the project succeeds.
    db.table("project_problems").create(
        {"project_path": str, "kind": str, "message": str, "since": float, "updated_at": float},
        pk=("project_path", "kind"), not_null={"message", "since", "updated_at"},
    )


def _v9_delivery_keys(db: sqlite_utils.Database) -> None:
    # GitLab delivery keys are scoped by project ('gitlab:<project>:<header>:<value>'), and each delivery
    # keeps a key of its body: before GitLab 17.4 a resend comes with a new X-Gitlab-Event-UUID and no
    # Idempotency-Key, and is found by its body within a day.
    db.execute("UPDATE inbox SET delivery_key = 'gitlab:' || project_path || ':' || substr(delivery_key, 8)"
               " WHERE source = 'gitlab' AND project_path IS NOT NULL AND delivery_key LIKE 'gitlab:%'")
    db.table("inbox").add_column("body_key", str)
    db.execute("CREATE INDEX idx_inbox_body_key ON inbox(body_key, received_at) WHERE body_key IS NOT NULL")
    # Authentic deliveries answered 200 'ignored' (GitLab disables a hook that answers 4xx), per reason.
    db.table("ignored_deliveries").create(
        {"reason": str, "count": int, "last_at": float, "last_project": str, "last_kind": str},
        pk="reason", not_null={"count", "last_at"},
    )


def _v10_mr_notes(db: sqlite_utils.Database) -> None:
    # At most one note per merge request (mr_note: true), with where its sending stands. No foreign key to
    # plans: a pruned plan leaves its merge request's note, so that no second one is ever posted.
    db.table("mr_notes").create(
        {"id": int, "project_path": str, "mr_iid": int, "plan_id": int, "state": str, "attempts": int,
         "note_id": int, "detail": str, "created_at": float, "updated_at": float, "due_at": float,
         "lease_until": float},
        pk="id", not_null={"project_path", "mr_iid", "plan_id", "state", "created_at", "updated_at", "due_at"},
    )
    db.table("mr_notes").create_index(["project_path", "mr_iid"], unique=True)
    db.execute("CREATE INDEX idx_mr_notes_open ON mr_notes(due_at, id) WHERE state IN ('pending', 'sending')")
    # When the notes step last looked at a done plan of a merge request (the plan's updated_at then): the
    # partial index holds only those done since, so each tick reads the few new ones. Plans done before
    # this migration count as looked at: turning mr_note on never comments on merge requests of the past.
    db.table("plans").add_column("mr_note_checked", float)
    db.execute("UPDATE plans SET mr_note_checked = updated_at WHERE state = 'done'")
    db.execute("CREATE INDEX idx_plans_mr_note ON plans(state, id) WHERE state = 'done' AND trigger_kind IN"
               " ('merge_request_merged', 'merge_request_closed') AND mr_iid IS NOT NULL"
               " AND mr_note_checked IS NOT updated_at")


def _v11_triggers_from_state(db: sqlite_utils.Database) -> None:
    # Which merge or close trigger was raised for each merge request (its state alone cannot say: a lost
    # merge hook followed by an update stored "merged" with no trigger). Where a plan of that trigger
    # exists, it was raised; otherwise the next hook or catch-up raises it (one plan per trigger key).
    db.table("merge_requests").add_column("trigger_raised", str)
    db.execute("UPDATE merge_requests SET trigger_raised = state WHERE state IN ('merged', 'closed') AND EXISTS"
               " (SELECT 1 FROM plans p WHERE p.project_path = merge_requests.project_path AND p.mr_iid ="
               " merge_requests.iid AND p.trigger_kind = CASE merge_requests.state WHEN 'merged' THEN"
               " 'merge_request_merged' ELSE 'merge_request_closed' END)")
    # When a branch's deletion was received: only a pipeline created after it shows the branch came back.
    db.table("refs").add_column("deleted_at", float)
    db.execute("UPDATE refs SET deleted_at = updated_at WHERE live = 0")
    # A finished pipeline's records still only expected wait for their resolution before any plan takes
    # them; the worker looks for those whose resolution failed or was interrupted. Where the registry
    # may not be read at all (no credential, or one refused), the pipeline says so and they do not wait.
    db.execute("CREATE INDEX idx_push_records_expected ON push_records(id) WHERE state = 'expected'")
    db.table("pipelines").add_column("unresolvable_at", float)
    # A merge-request pipeline's source branch, which GitLab's $CI_COMMIT_REF_SLUG names even where the
    # pipeline runs on refs/merge-requests/<iid>/head (a fork's MR pipeline run in the target project).
    db.table("pipelines").add_column("source_branch", str)


def _v12_plan_holders(db: sqlite_utils.Database) -> None:
    # Which worker holds a running plan (its process on its machine, and the claim): the holder renews
    # the lease while it works, and a worker restarted on the same machine takes back at once what its
    # dead predecessor held. Plans claimed before this migration have none and wait for their lease.
    db.table("plans").add_column("lease_holder", str)


def _v13_unusable_events(db: sqlite_utils.Database) -> None:
    # Events the worker set aside as unusable (their error kept) are listed and counted by status, the
    # dashboard and the metrics on every read: the few of them, without reading every stored body.
    db.execute("CREATE INDEX idx_inbox_unusable ON inbox(id) WHERE error IS NOT NULL")


def _v14_reconcile_requests(db: sqlite_utils.Database) -> None:
    # An operator's ask for a catch-up now (the CLI or the admin API records it; a worker runs it with the
    # daemon's own settings): one project or all (project_path NULL), its lease while a worker runs it,
    # and what it found (JSON: per project, the summary and the ids of the plans it made).
    db.table("reconcile_requests").create(
        {"id": int, "project_path": str, "state": str, "requested_by": str, "requested_at": float,
         "finished_at": float, "lease_until": float, "result": str, "updated_at": float},
        pk="id", not_null={"state", "requested_at", "updated_at"},
    )
    db.execute("CREATE INDEX idx_reconcile_requests_open ON reconcile_requests(id)"
               " WHERE state IN ('pending', 'running')")


def _v15_plan_rejections(db: sqlite_utils.Database) -> None:
    # Who rejected a plan (held, or scheduled and not started), as ``approved_by`` records who approved one.
    db.table("plans").add_column("rejected_by", str)


def _v16_counters(db: sqlite_utils.Database) -> None:
    # Running totals kept in rows of their own, so that pruning events, plans, untags and push records never
    # lowers them and a retried untag never moves one from failed to done (Prometheus counters only rise).
    # Triggers count each change in the statement that makes it (same transaction, nothing to forget):
    #   events           (project, kind)    an event stored in the inbox
    #   events_unusable  (project, '')      an event set aside as unusable (its error kept)
    #   pushes_recorded  (project, source)  a push record becoming confirmed (or untagged, straight from expected)
    #   untags           (project, outcome) an untag reaching an outcome, each time it does (failed, then done)
    #   restores         (project, '')      an untagged image put back
    # and per UTC day and project: created (the day the push was recorded) and untagged (the day it was done).
    # The totals start from the rows present now, so an upgraded janitor keeps what it showed.
    db.execute("CREATE TABLE counters (name TEXT NOT NULL, project_path TEXT NOT NULL, label TEXT NOT NULL,"
               " value INTEGER NOT NULL, PRIMARY KEY (name, project_path, label))")
    db.execute("CREATE TABLE daily_counters (day TEXT NOT NULL, project_path TEXT NOT NULL, name TEXT NOT NULL,"
               " value INTEGER NOT NULL, PRIMARY KEY (day, project_path, name))")
    db.execute("INSERT INTO counters (name, project_path, label, value) SELECT 'events', COALESCE(project_path, ''),"
               " kind, COUNT(*) FROM inbox GROUP BY 2, 3")
    db.execute("INSERT INTO counters (name, project_path, label, value) SELECT 'events_unusable',"
               " COALESCE(project_path, ''), '', COUNT(*) FROM inbox WHERE error IS NOT NULL GROUP BY 2")
    db.execute("INSERT INTO counters (name, project_path, label, value) SELECT 'pushes_recorded', project_path,"
               " COALESCE(source, ''), COUNT(*) FROM push_records WHERE state IN ('confirmed', 'untagged')"
               " GROUP BY 2, 3")
    db.execute("INSERT INTO counters (name, project_path, label, value) SELECT 'untags', project_path, outcome,"
               " COUNT(*) FROM untags WHERE outcome <> 'pending' GROUP BY 2, 3")
    db.execute("INSERT INTO counters (name, project_path, label, value) SELECT 'restores', project_path, '',"
               " COUNT(*) FROM untags WHERE restored_at IS NOT NULL GROUP BY 2")
    db.execute("INSERT INTO daily_counters (day, project_path, name, value) SELECT date(recorded_at, 'unixepoch'),"
               " project_path, 'created', COUNT(*) FROM push_records WHERE state IN ('confirmed', 'untagged')"
               " AND recorded_at IS NOT NULL GROUP BY 1, 2")
    db.execute("INSERT INTO daily_counters (day, project_path, name, value) SELECT date(finished_at, 'unixepoch'),"
               " project_path, 'untagged', COUNT(*) FROM untags WHERE outcome = 'done' AND finished_at IS NOT NULL"
               " GROUP BY 1, 2")

    def bump(name: str, project: str, label: str) -> str:
        return (f"INSERT INTO counters (name, project_path, label, value) VALUES ('{name}', {project}, {label}, 1)"
                " ON CONFLICT (name, project_path, label) DO UPDATE SET value = value + 1;")

    def bump_day(name: str, at: str) -> str:
        return ("INSERT INTO daily_counters (day, project_path, name, value) VALUES"
                f" (date(COALESCE({at}, CAST(strftime('%s', 'now') AS REAL)), 'unixepoch'), NEW.project_path,"
                f" '{name}', 1) ON CONFLICT (day, project_path, name) DO UPDATE SET value = value + 1;")

    event_project = "COALESCE(NEW.project_path, '')"
    recorded = "NEW.state IN ('confirmed', 'untagged')"
    push = (bump("pushes_recorded", "NEW.project_path", "COALESCE(NEW.source, '')")
            + bump_day("created", "NEW.recorded_at"))
    untag = bump("untags", "NEW.project_path", "NEW.outcome")
    untagged = bump_day("untagged", "NEW.finished_at")
    triggers = {
        "count_events": ("AFTER INSERT ON inbox", bump("events", event_project, "NEW.kind")),
        "count_unusable_events": ("AFTER UPDATE OF error ON inbox WHEN NEW.error IS NOT NULL AND OLD.error IS NULL",
                                  bump("events_unusable", event_project, "''")),
        "count_pushes_inserted": (f"AFTER INSERT ON push_records WHEN {recorded}", push),
        "count_pushes_confirmed": (f"AFTER UPDATE OF state ON push_records WHEN {recorded}"
                                   " AND OLD.state NOT IN ('confirmed', 'untagged')", push),
        "count_untags_inserted": ("AFTER INSERT ON untags WHEN NEW.outcome <> 'pending'", untag),
        "count_untags_finished": ("AFTER UPDATE OF outcome ON untags WHEN NEW.outcome <> 'pending'"
                                  " AND NEW.outcome IS NOT OLD.outcome", untag),
        "count_untagged_inserted": ("AFTER INSERT ON untags WHEN NEW.outcome = 'done'", untagged),
        "count_untagged_finished": ("AFTER UPDATE OF outcome ON untags WHEN NEW.outcome = 'done'"
                                    " AND NEW.outcome IS NOT OLD.outcome", untagged),
        "count_restores": ("AFTER UPDATE OF restored_at ON untags WHEN NEW.restored_at IS NOT NULL"
                           " AND OLD.restored_at IS NULL", bump("restores", "NEW.project_path", "''")),
    }
    for name, (when, body) in triggers.items():
        db.execute(f"CREATE TRIGGER {name} {when} BEGIN {body} END")
    # Requests to GitLab's API per endpoint and status, with latency buckets, as registry_requests keeps them.
    db.table("gitlab_requests").create(
        {"endpoint": str, "code": int, "count": int, "seconds_sum": float}, pk=("endpoint", "code"))
    db.table("gitlab_request_buckets").create({"endpoint": str, "le": str, "count": int}, pk=("endpoint", "le"))


def _v17_last_events(db: sqlite_utils.Database) -> None:
    # When each (project, kind) last had an event stored, kept in its ``events`` counter row by the trigger
    # that counts it, so that webhook health and the quiet-hook check survive pruning of the inbox (and the
    # webhook's insert gains no statement). Seeded from the events stored now.
    db.execute("ALTER TABLE counters ADD COLUMN last_at REAL")
    db.execute("UPDATE counters SET last_at = seen.at FROM (SELECT COALESCE(project_path, '') AS project, kind,"
               " MAX(received_at) AS at FROM inbox GROUP BY 1, 2) AS seen WHERE counters.name = 'events'"
               " AND counters.project_path = seen.project AND counters.label = seen.kind")
    db.execute("DROP TRIGGER count_events")
    db.execute("CREATE TRIGGER count_events AFTER INSERT ON inbox BEGIN INSERT INTO counters (name, project_path,"
               " label, value, last_at) VALUES ('events', COALESCE(NEW.project_path, ''), NEW.kind, 1, NEW.received_at)"
               " ON CONFLICT (name, project_path, label) DO UPDATE SET value = value + 1,"
               " last_at = MAX(COALESCE(last_at, excluded.last_at), excluded.last_at); END")


def _v18_lean_inbox(db: sqlite_utils.Database) -> None:
    # Every webhook's insert updates each index of the inbox. Webhook health reads each (project, kind)'s
    # last event from its counter row now (v17), so the index kept for that query only costs.
    db.execute("DROP INDEX IF EXISTS idx_inbox_project_path_kind_received_at")


def _v19_workers(db: sqlite_utils.Database) -> None:
    # Several workers on one database: a row per worker process (its heartbeat and the plan it runs), the
    # registry's token bucket shared by all of them, and the budget each running plan holds.
    db.execute("CREATE TABLE workers (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,"
               " started_at REAL NOT NULL, beat_at REAL NOT NULL, plan_id INTEGER)")
    db.execute("CREATE INDEX idx_workers_beat_at ON workers(beat_at)")
    db.execute("CREATE TABLE rate_buckets (name TEXT PRIMARY KEY, tokens REAL NOT NULL, updated_at REAL NOT NULL)")
    db.execute("CREATE TABLE budget_holds (project_path TEXT NOT NULL, plan_id INTEGER NOT NULL, holder TEXT NOT NULL,"
               " count INTEGER NOT NULL, held_at REAL NOT NULL, PRIMARY KEY (project_path, plan_id))")
    db.execute("CREATE INDEX idx_budget_holds_plan_id ON budget_holds(plan_id)")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1, _v2_ci_records, _v3_race_repair, _v4_operations, _v5_untags_by_record, _v6_ttl_expiry,
    _v7_open_merge_requests, _v8_project_problems, _v9_delivery_keys, _v10_mr_notes,
    _v11_triggers_from_state, _v12_plan_holders, _v13_unusable_events, _v14_reconcile_requests,
    _v15_plan_rejections, _v16_counters, _v17_last_events, _v18_lean_inbox,
    _v19_workers,
]


def migrate(db: sqlite_utils.Database) -> int:
    """Bring ``db`` to the newest version; returns that version."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    current = row[0] or 0
    for version, step in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        with write_tx(db):
            # Another process (a second gunicorn worker) may have applied it while this one waited.
            if (db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0) >= version:
                continue
            step(db)
            db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, strftime('%s','now'))",
                       [version])
    return len(MIGRATIONS)
