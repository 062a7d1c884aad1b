"""Migrations: an old database is brought forward without losing rows; processes racing to migrate a
fresh file (gunicorn workers starting together) all succeed."""

import multiprocessing

from daemon.store import open_store
from daemon.store.db import connect
from daemon.store.schema import MIGRATIONS, migrate


def test_a_version_1_database_keeps_its_rows(tmp_path, monkeypatch):
    path = str(tmp_path / "old.db")
    monkeypatch.setattr("daemon.store.schema.MIGRATIONS", MIGRATIONS[:1])
    db = connect(path)
    assert migrate(db) == 1
    db.execute("INSERT INTO inbox (delivery_key, source, kind, body, received_at) VALUES ('k', 'gitlab',"
               " 'push', x'7b7d', 1.0)")
    db.close()
    monkeypatch.undo()
    store = open_store(path)
    assert store.db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    assert [e.kind for e in store.pending_events()] == ["push"]
    store.close()


def _open(path: str) -> int:
    store = open_store(path)
    version = store.db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    store.close()
    return int(version)


def test_processes_racing_to_migrate_all_succeed(tmp_path):
    path = str(tmp_path / "fresh.db")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        versions = pool.map(_open, [path] * 8)
    assert versions == [len(MIGRATIONS)] * 8
