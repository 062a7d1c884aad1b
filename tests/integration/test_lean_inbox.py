"""The inbox keeps only the indexes something reads (each one costs every webhook's insert): migration v18
drops the (project_path, kind, received_at) one, and webhook health still knows each kind's last event."""

from daemon.store import open_store
from daemon.store.db import connect
from daemon.store.schema import MIGRATIONS, migrate

DROPPED = "idx_inbox_project_path_kind_received_at"
V17 = next(n for n, step in enumerate(MIGRATIONS, start=1) if step.__name__ == "_v17_last_events")


def _inbox_indexes(db) -> set[str]:
    return {r[1] for r in db.execute("PRAGMA index_list(inbox)").fetchall()}


def test_a_new_database_has_no_index_of_the_inbox_by_project_and_kind(tmp_path):
    store = open_store(str(tmp_path / "janitor.db"))
    assert DROPPED not in _inbox_indexes(store.db)
    assert {"idx_inbox_pending", "idx_inbox_body_key", "idx_inbox_unusable"} <= _inbox_indexes(store.db)
    store.close()


def test_an_upgraded_database_loses_the_index_and_keeps_webhook_health(tmp_path, monkeypatch):
    path = str(tmp_path / "old.db")
    monkeypatch.setattr("daemon.store.schema.MIGRATIONS", MIGRATIONS[:V17])
    db = connect(path)
    assert migrate(db) == V17
    assert DROPPED in _inbox_indexes(db)
    for n, (kind, at) in enumerate((("pipeline", 10.0), ("pipeline", 30.0), ("push", 20.0))):
        db.execute("INSERT INTO inbox (delivery_key, source, kind, project_path, body, received_at)"
                   " VALUES (?, 'gitlab', ?, 'g/app', x'7b7d', ?)", [f"k{n}", kind, at])
    db.close()
    monkeypatch.undo()
    store = open_store(path)
    assert DROPPED not in _inbox_indexes(store.db)
    assert store.last_events() == [("g/app", "pipeline", 30.0), ("g/app", "push", 20.0)]
    assert store.add_event(delivery_key="k3", source="gitlab", kind="push", project_path="g/app", headers={},
                           body=b"{}", received_at=40.0) is True
    assert store.last_events() == [("g/app", "pipeline", 30.0), ("g/app", "push", 40.0)]
    store.close()
