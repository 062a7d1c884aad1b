"""The PostgreSQL schema is the SQLite schema: the same tables, columns (names, types, NOT NULL), primary
keys, indexes (names, columns, unique, partial), foreign keys and counting triggers after all migrations of
each engine, so a migration added to one engine only fails here. Migrations started by five connections at
once on an empty database run once, and the triggers count what the SQLite ones count."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from daemon.store import open_store
from daemon.store.postgres import PgConnection, connect, migrate_postgres
from daemon.store.schema_postgres import MIGRATIONS

# SQLite's declared types (sqlite-utils writes INTEGER, REAL or FLOAT, TEXT, BLOB) as PostgreSQL's.
TYPES = {"INTEGER": "bigint", "REAL": "double precision", "FLOAT": "double precision", "TEXT": "text",
         "BLOB": "bytea"}


def sqlite_schema(db) -> dict[str, object]:
    tables = [row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    columns, pks, indexes, fks = {}, {}, {}, set()
    for table in tables:
        info = db.execute(f"PRAGMA table_info({table})").fetchall()  # cid, name, type, notnull, default, pk
        pk = tuple(row[1] for row in sorted((r for r in info if r[5]), key=lambda r: r[5]))
        pks[table] = pk
        # SQLite lets a column of a composite primary key hold NULL; PostgreSQL never does: both NOT NULL here.
        columns[table] = {row[1]: (TYPES[row[2].upper()], bool(row[3]) or row[1] in pk) for row in info}
        for row in db.execute(f"PRAGMA index_list({table})").fetchall():  # seq, name, unique, origin, partial
            if row[3] == "pk":
                continue
            cols = tuple(r[2] or "<expr>" for r in db.execute(f"PRAGMA index_info({row[1]})").fetchall())
            indexes[row[1]] = (table, cols, bool(row[2]), bool(row[4]))
        for row in db.execute(f"PRAGMA foreign_key_list({table})").fetchall():  # id, seq, table, from, to
            fks.add((table, row[3], row[2], row[4]))
    triggers = {row[0]: row[1] for row in db.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'")}
    return {"tables": tables, "columns": columns, "primary keys": pks, "indexes": indexes,
            "foreign keys": fks, "triggers": triggers}


def postgres_schema(db: PgConnection) -> dict[str, object]:
    tables = [row[0] for row in db.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        " AND table_type = 'BASE TABLE' ORDER BY table_name COLLATE \"C\"")]
    columns: dict[str, dict[str, tuple[str, bool]]] = {table: {} for table in tables}
    for table, name, kind, nullable in db.execute(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"):
        columns[table][name] = (kind, nullable == "NO")
    pks: dict[str, tuple[str, ...]] = {table: () for table in tables}
    indexes = {}
    for table, index, unique, primary, partial, cols in db.execute(
            "SELECT t.relname, i.relname, x.indisunique, x.indisprimary, x.indpred IS NOT NULL,"
            " array(SELECT COALESCE(a.attname, '<expr>') FROM unnest(x.indkey) WITH ORDINALITY AS k(num, pos)"
            "       LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.num ORDER BY k.pos)"
            " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = 'public'"):
        if primary:
            pks[table] = tuple(cols)
        else:
            indexes[index] = (table, tuple(cols), unique, partial)
    fks = set(db.execute(
        "SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text, r.attname"
        " FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
        " JOIN pg_attribute r ON r.attrelid = c.confrelid AND r.attnum = c.confkey[1] WHERE c.contype = 'f'"
        " AND c.connamespace = 'public'::regnamespace").fetchall())
    triggers = dict(db.execute(
        "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace").fetchall())
    return {"tables": tables, "columns": columns, "primary keys": pks, "indexes": indexes,
            "foreign keys": fks, "triggers": triggers}


@pytest.fixture
def sqlite_db(tmp_path):
    store = open_store(str(tmp_path / "janitor.db"))
    yield store.db
    store.close()


@pytest.fixture
def pg(pg_url):
    db = connect(pg_url)
    yield db
    db.close()


def test_both_engines_have_the_same_schema(sqlite_db, pg):
    migrate_postgres(pg)
    want, got = sqlite_schema(sqlite_db), postgres_schema(pg)
    assert len(want["tables"]) > 15 and "schema_version" in want["tables"], want["tables"]
    for part in want:
        assert got[part] == want[part], (
            f"the {part} of the PostgreSQL schema differ from SQLite's: a migration in daemon/store/schema.py"
            " needs its twin in daemon/store/schema_postgres.py (or the reverse)")


def test_text_sorts_by_its_bytes_as_on_sqlite_whatever_the_database_locale(sqlite_db, postgres):
    name = "t_icu_locale"
    with postgres.admin() as admin:  # a database whose own collation sorts "a" before "B"
        admin.execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
                      " LOCALE 'C'")
    db = connect(postgres.url(name))
    try:
        assert db.execute("SELECT 'a' < 'B'").fetchone() == (True,), "the database's own order is not bytes"
        migrate_postgres(db)
        odd = [row[0] for row in db.execute(
            "SELECT c.relname || '.' || a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_collation k ON k.oid = a.attcollation WHERE c.relnamespace = 'public'::regnamespace"
            " AND c.relkind = 'r' AND a.atttypid = 'text'::regtype AND k.collname <> 'C'")]
        assert odd == [], "text columns without COLLATE \"C\" in daemon/store/schema_postgres.py"
        paths = ["grp/b", "Grp/a", "grp/B", "grp/a", "grp/_x", "grp/é", "grp/Z"]
        for i, path in enumerate(paths):
            sql = "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?)"
            sqlite_db.execute(sql, [path, str(i), 0.0])
            db.execute(sql, [path, str(i), 0.0])
        order = "SELECT key FROM kv ORDER BY key"
        want = [row[0] for row in sqlite_db.execute(order)]
        assert [row[0] for row in db.execute(order)] == want
        assert want == ["Grp/a", "grp/B", "grp/Z", "grp/_x", "grp/a", "grp/b", "grp/é"]
    finally:
        db.close()
        postgres.drop_database(name)


def test_the_comparison_sees_a_column_added_to_one_engine_only(sqlite_db, pg):
    migrate_postgres(pg)
    pg.execute("ALTER TABLE plans ADD COLUMN only_here TEXT")
    pg.execute("CREATE UNIQUE INDEX idx_only_here ON kv (value)")
    want, got = sqlite_schema(sqlite_db), postgres_schema(pg)
    assert got["columns"] != want["columns"] and got["indexes"] != want["indexes"]
    assert got["tables"] == want["tables"] and got["primary keys"] == want["primary keys"]


def test_five_connections_migrating_an_empty_database_at_once_apply_each_migration_once(pg_url, pg):
    start = threading.Barrier(5)
    results: list[object] = []

    def run() -> None:
        db = connect(pg_url)
        try:
            start.wait(timeout=30)
            results.append(migrate_postgres(db))
        except Exception as exc:
            results.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=run) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [len(MIGRATIONS)] * 5, results
    versions = [row[0] for row in pg.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    assert migrate_postgres(pg) == len(MIGRATIONS)  # again: nothing to do
    assert pg.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (len(MIGRATIONS),)


# The same writes on both engines, with the SQL written once: the triggers leave the same totals.
DAY1, DAY2 = 1_700_000_000.0, 1_700_000_000.0 + 86_400
STORY = [
    ("INSERT INTO inbox (delivery_key, source, kind, project_path, body, received_at) VALUES (?, 'gitlab',"
     " 'pipeline', ?, ?, ?)", ["k1", "grp/app", b"{}", DAY1]),
    ("INSERT INTO inbox (delivery_key, source, kind, project_path, body, received_at) VALUES (?, 'gitlab',"
     " 'pipeline', ?, ?, ?)", ["k2", "grp/app", b"{}", DAY1 + 5]),
    ("INSERT INTO inbox (delivery_key, source, kind, project_path, body, received_at) VALUES (?, 'registry',"
     " 'push', NULL, ?, ?)", ["k3", b"{}", DAY1]),
    ("UPDATE inbox SET error = ? WHERE delivery_key = ?", ["ValueError: not a pipeline", "k2"]),
    ("UPDATE inbox SET error = ? WHERE delivery_key = ?", ["again", "k2"]),  # already unusable: not counted
    ("INSERT INTO push_records (project_path, pipeline_id, repository, tag, lifetime, state, source, recorded_at)"
     " VALUES ('grp/app', 1, 'grp/app', 'mr-1', 'merge_request', 'expected', 'ci', ?)", [DAY1]),
    ("INSERT INTO push_records (project_path, pipeline_id, repository, tag, lifetime, state, source, recorded_at)"
     " VALUES ('grp/app', 1, 'grp/app', 'mr-2', 'merge_request', 'confirmed', NULL, ?)", [DAY1]),
    ("UPDATE push_records SET state = 'confirmed' WHERE tag = 'mr-1'", []),
    ("UPDATE push_records SET state = 'untagged' WHERE tag = 'mr-1'", []),  # already counted
    ("INSERT INTO plans (id, project_path, trigger_kind, trigger_key, state) VALUES (1, 'grp/app',"
     " 'merge_request_merged', 'grp/app:mr:1', 'running')", []),
    ("INSERT INTO untags (id, plan_id, project_path, repository, tag, outcome) VALUES (1, 1, 'grp/app',"
     " 'grp/app', 'mr-1', 'pending')", []),
    ("INSERT INTO untags (id, plan_id, project_path, repository, tag, outcome, finished_at) VALUES (2, 1,"
     " 'grp/app', 'grp/app', 'mr-2', 'done', ?)", [DAY1]),
    ("UPDATE untags SET outcome = 'failed', finished_at = ? WHERE id = 1", [DAY1]),
    ("UPDATE untags SET outcome = 'failed', reason = 'x' WHERE id = 1", []),  # no transition: not counted
    ("UPDATE untags SET outcome = 'pending' WHERE id = 1", []),
    ("UPDATE untags SET outcome = 'done', finished_at = ? WHERE id = 1", [DAY2]),
    ("UPDATE untags SET restored_at = ? WHERE id = 2", [DAY2]),
    ("UPDATE untags SET restored_at = ? WHERE id = 2", [DAY2 + 1]),  # restored once
    ("DELETE FROM untags", []),  # totals never go down
    ("DELETE FROM inbox", []),
]
COUNTERS = "SELECT name, project_path, label, value, last_at FROM counters ORDER BY name, project_path, label"
DAILY = "SELECT day, project_path, name, value FROM daily_counters ORDER BY day, project_path, name"


def test_the_triggers_count_what_the_sqlite_ones_count(sqlite_db, pg):
    migrate_postgres(pg)
    for sql, params in STORY:
        sqlite_db.execute(sql, params)
        pg.execute(sql, params)
    want = [tuple(row) for row in sqlite_db.execute(COUNTERS).fetchall()]
    got = pg.execute(COUNTERS).fetchall()
    assert got == want
    counted = Counter({(name, label): value for name, _, label, value, _ in got})
    assert counted[("untags", "failed")] == 1 and counted[("untags", "done")] == 2, got
    assert counted[("events", "pipeline")] == 2 and counted[("events_unusable", "")] == 1, got
    assert counted[("pushes_recorded", "ci")] == 1 and counted[("restores", "")] == 1, got
    assert next(row for row in got if row[0] == "events" and row[2] == "pipeline")[4] == DAY1 + 5
    want_daily = [tuple(row) for row in sqlite_db.execute(DAILY).fetchall()]
    assert pg.execute(DAILY).fetchall() == want_daily
    assert ("2023-11-14", "grp/app", "created", 2) in want_daily
    assert ("2023-11-15", "grp/app", "untagged", 1) in want_daily
