"""Expired TTL tags are found through the index of unplanned live TTL records, on new and upgraded ledgers."""

from daemon.domain.model import Decision, PlannedUntag, Trigger
from daemon.store import Store
from daemon.store.db import ConnectionPool, write_tx
from daemon.store.schema import MIGRATIONS, migrate

NOW = 1_700_000_000.0


def _record(store: Store, rid: int, project: str, *, recorded_at: float, ttl: float | None = 3600.0,
            state: str = "confirmed") -> None:
    store.db.execute(
        "INSERT INTO push_records (id, project_path, pipeline_id, repository, tag, digest, lifetime, ttl_seconds,"
        " state, source, ref, recorded_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [rid, project, rid, project, f"t{rid}", f"sha256:{rid}", "ttl" if ttl else "branch", ttl, state, "pattern",
         "main", recorded_at, recorded_at])


def _plan_with_untag(store: Store, record_id: int, project: str) -> None:
    store.db.execute("INSERT INTO plans (id, project_path, trigger_kind, trigger_key, state, created_at)"
                     " VALUES (?,?,?,?,?,?)", [record_id, project, "ttl_expired", f"k{record_id}", "dry_run", NOW])
    store.db.execute("INSERT INTO untags (plan_id, project_path, push_record_id, repository, tag, outcome,"
                     " created_at) VALUES (?,?,?,?,?,?,?)",
                     [record_id, project, record_id, project, f"t{record_id}", "dry_run", NOW - 10])


def test_upgrade_marks_records_planned_before_and_ttl_queries_skip_them(tmp_path):
    path = str(tmp_path / "janitor.db")
    store = Store(ConnectionPool(path))
    db = store.db
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
    for version, step in enumerate(MIGRATIONS[:5], start=1):  # a ledger written by the release before v6
        with write_tx(db):
            step(db)
            db.execute("INSERT INTO schema_version VALUES (?, 0)", [version])
    _record(store, 1, "g/planned", recorded_at=NOW - 7200)  # expired, planned (dry-run) before the upgrade
    _plan_with_untag(store, 1, "g/planned")
    _record(store, 2, "g/due", recorded_at=NOW - 7200)  # expired, never planned
    _record(store, 3, "g/later", recorded_at=NOW - 60)  # not expired yet
    _record(store, 4, "g/gone", recorded_at=NOW - 7200, state="untagged")
    _record(store, 5, "g/branch", recorded_at=NOW - 7200, ttl=None)

    assert migrate(db) == len(MIGRATIONS)

    planned = dict(db.execute("SELECT id, planned_at FROM push_records").fetchall())
    assert planned == {1: NOW - 10, 2: None, 3: None, 4: None, 5: None}
    assert store.ttl_projects(NOW) == ["g/due"]
    for project in ("g/planned", "g/later", "g/gone", "g/branch"):
        assert store.candidates(Trigger("ttl_expired", project, "k", NOW)) == []
    assert [r.id for r in store.candidates(Trigger("ttl_expired", "g/due", "k", NOW))] == [2]
    store.close()


def test_a_plan_taking_a_record_marks_it_and_the_next_tick_finds_nothing(tmp_path):
    store = Store(ConnectionPool(str(tmp_path / "janitor.db")))
    migrate(store.db)
    _record(store, 7, "g/app", recorded_at=NOW - 7200)
    _record(store, 8, "g/app", recorded_at=NOW - 7200)
    assert store.ttl_projects(NOW) == ["g/app"]
    trigger = Trigger("ttl_expired", "g/app", "ttl_expired:g/app:1", NOW)
    decisions = [Decision(PlannedUntag(r.id, r.pipeline_id, r.repository, r.tag, r.digest or ""), "pending")
                 for r in store.candidates(trigger)]
    store.create_plan(trigger, decisions, state="scheduled", due_at=NOW, now=NOW)
    assert dict(store.db.execute("SELECT id, planned_at FROM push_records").fetchall()) == {7: NOW, 8: NOW}
    assert store.ttl_projects(NOW + 60) == []
    assert store.candidates(Trigger("ttl_expired", "g/app", "ttl_expired:g/app:2", NOW + 60)) == []
    store.close()


def test_ttl_queries_read_the_expiry_indexes():
    store = Store(ConnectionPool(":memory:"))
    migrate(store.db)
    sql = []
    store.db.conn.set_trace_callback(sql.append)
    store.ttl_projects(NOW)
    store.candidates(Trigger("ttl_expired", "g/app", "k", NOW))
    store.db.conn.set_trace_callback(None)
    plans = [" ".join(r[3] for r in store.db.execute("EXPLAIN QUERY PLAN " + s)) for s in sql]
    assert "idx_push_records_ttl_due" in plans[0] and "SCAN push_records" not in plans[0]
    assert "idx_push_records_ttl_live" in plans[1] and "SCAN push_records" not in plans[1]
