"""The PostgreSQL connection layer against a real server: the SQL the parts write for SQLite (``?``
placeholders, ``%`` in it) runs unchanged, nested transactions undo only their savepoint, each thread keeps
one pooled connection until it releases it, a forked process gets a pool of its own, and values come back
as the SQLite store gives them."""

from __future__ import annotations

import os
import threading

import psycopg
import pytest

from daemon.store.postgres import ConnectionPool, connect, migrate_postgres, redact, translate, write_tx


@pytest.fixture
def pg(pg_url):
    db = connect(pg_url)
    db.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, note TEXT, flag BIGINT)")
    yield db
    db.close()


def notes(db) -> list[tuple[int, str]]:
    return [tuple(row) for row in db.execute("SELECT id, note FROM t ORDER BY id")]


@pytest.mark.parametrize(("sql", "want"), [
    ("SELECT ? , ?", "SELECT %s , %s"),
    ("SELECT '?' , ?", "SELECT '?' , %s"),
    ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
    ('SELECT "a?b" FROM t WHERE x = ?', 'SELECT "a?b" FROM t WHERE x = %s'),
    ("SELECT 1 % 2, '50%', ?", "SELECT 1 %% 2, '50%%', %s"),
    ("SELECT ? -- why? 100%\n, ?", "SELECT %s -- why? 100%%\n, %s"),
    ("SELECT /* ? */ ?", "SELECT /* ? */ %s"),
    ("SELECT strftime('%s', 'now')", "SELECT strftime('%%s', 'now')"),
])
def test_question_marks_become_placeholders_only_outside_literals(sql, want):
    assert translate(sql) == want


def test_the_sql_written_for_sqlite_runs_with_its_literals_untouched(pg):
    pg.execute("INSERT INTO t (id, note) VALUES (?, ?)", [1, "what? 100%"])
    pg.execute("INSERT INTO t (id, note) VALUES (?, 'why? 50% off')", [2])
    assert pg.execute("SELECT note, '?', 7 % 4 FROM t WHERE id = ? AND note LIKE '%?%'", [1]).fetchone() == (
        "what? 100%", "?", 3)
    assert notes(pg) == [(1, "what? 100%"), (2, "why? 50% off")]
    cursor = pg.execute("UPDATE t SET note = ? WHERE id IN (?, ?)", ["x", 1, 2])
    assert cursor.rowcount == 2 and cursor.fetchone() is None and cursor.fetchall() == []
    assert [row for row in pg.execute("SELECT id FROM t ORDER BY id")] == [(1,), (2,)]


def test_values_come_back_as_the_sqlite_store_gives_them(pg):
    pg.execute("INSERT INTO t (id, note, flag) VALUES (?, ?, ?)", [2**62, None, True])
    assert pg.execute("SELECT id, note, flag FROM t").fetchone() == (2**62, None, 1)
    total = pg.execute("SELECT SUM(id), SUM(flag) + 0.5 FROM t").fetchone()
    assert total == (2**62, 1.5) and type(total[0]) is int and type(total[1]) is float
    assert pg.execute("SELECT ?::bytea", [b"\x00body"]).fetchone() == (b"\x00body",)


def test_an_inner_transaction_that_fails_undoes_only_its_own_writes(pg):
    with write_tx(pg):
        assert pg.in_transaction
        pg.execute("INSERT INTO t (id, note) VALUES (1, 'outer')")
        with pytest.raises(psycopg.errors.UniqueViolation), write_tx(pg):
            pg.execute("INSERT INTO t (id, note) VALUES (2, 'inner')")
            pg.execute("INSERT INTO t (id, note) VALUES (1, 'again')")  # fails: the savepoint is undone
        with pytest.raises(RuntimeError), write_tx(pg):
            pg.execute("INSERT INTO t (id, note) VALUES (3, 'inner')")
            raise RuntimeError("the block fails")
        with write_tx(pg):
            pg.execute("INSERT INTO t (id, note) VALUES (4, 'inner kept')")
        pg.execute("INSERT INTO t (id, note) VALUES (5, 'outer after')")  # the transaction goes on
    assert not pg.in_transaction
    assert notes(pg) == [(1, "outer"), (4, "inner kept"), (5, "outer after")]


def test_an_outer_transaction_that_fails_undoes_everything_and_others_see_only_commits(pg, pg_url):
    other = connect(pg_url)
    try:
        with pytest.raises(RuntimeError), write_tx(pg):
            pg.execute("INSERT INTO t (id, note) VALUES (1, 'gone')")
            with write_tx(pg):
                pg.execute("INSERT INTO t (id, note) VALUES (2, 'gone too')")
            assert notes(other) == [], "uncommitted writes are not seen by another connection"
            raise RuntimeError("fails")
        assert notes(pg) == [] and not pg.in_transaction
        pg.execute("INSERT INTO t (id, note) VALUES (3, 'autocommitted')")
        assert notes(other) == [(3, "autocommitted")]
    finally:
        other.close()


def test_each_thread_keeps_one_connection_until_it_releases_it(pg_url, pg):
    pool = ConnectionPool(pg_url, max_size=4, timeout=5)
    try:
        mine = pool.get()
        assert pool.get() is mine
        seen: dict[str, object] = {}

        def work() -> None:
            db = pool.get()
            seen["same"] = pool.get() is db
            seen["pid"] = db.execute("SELECT pg_backend_pid()").fetchone()
            pool.release()
            seen["after"] = getattr(pool._local, "db", None)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join(timeout=30)
        assert seen["same"] is True and seen["after"] is None
        assert seen["pid"] != mine.execute("SELECT pg_backend_pid()").fetchone()
        with write_tx(mine):
            mine.execute("INSERT INTO t (id, note) VALUES (1, 'pooled')")
        assert notes(pg) == [(1, "pooled")]
        pool.release()
        assert pool.get() is not mine
    finally:
        pool.close()


def test_a_thread_beyond_the_pool_size_fails_saying_what_to_do(pg_url):
    pool = ConnectionPool(pg_url.replace("postgres@", "postgres:s3cret@"), max_size=1, timeout=1)
    try:
        pool.get()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                pool.get()
            except Exception as exc:
                failure.append(exc)

        thread = threading.Thread(target=work)
        thread.start()
        thread.join(timeout=30)
        assert failure and "raise the pool's size" in str(failure[0]), failure
        assert "s3cret" not in str(failure[0]) and "postgres:***@" in str(failure[0])
    finally:
        pool.close()


def test_a_forked_process_gets_connections_of_its_own(pg_url, pg):
    pool = ConnectionPool(pg_url, max_size=2, timeout=5)
    try:
        parent = pool.get().execute("SELECT pg_backend_pid()").fetchone()[0]
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            code = 1
            try:
                db = pool.get()
                db.execute("INSERT INTO t (id, note) VALUES (?, 'child')", [os.getpid()])
                os.write(write, str(db.execute("SELECT pg_backend_pid()").fetchone()[0]).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        child_backend = int(os.read(read, 64) or b"0")
        os.close(read)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_backend not in (0, parent)
        assert pool.get().execute("SELECT pg_backend_pid()").fetchone()[0] == parent, "the parent's connection lives"
        assert notes(pg) == [(child, "child")]
    finally:
        pool.close()


def test_the_probe_connection_is_new_and_gives_up_on_a_held_lock(pg_url, pg):
    pool = ConnectionPool(pg_url, max_size=2, timeout=5)
    try:
        holder = pool.get()
        with write_tx(holder):
            holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
            with pool.probe_connection(0.3) as probe:
                assert probe is not holder
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    probe.execute("INSERT INTO t (id, note) VALUES (1, 'probe')")
    finally:
        pool.close()


def test_a_migrated_database_from_the_template_has_the_tables(postgres):
    url = postgres.create_database("t_from_template", migrated=True)
    db = connect(url)
    try:
        version = db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        assert version >= 1 and migrate_postgres(db) == version
        assert db.execute("SELECT COUNT(*) FROM counters").fetchone() == (0,)
    finally:
        db.close()
        postgres.drop_database("t_from_template")


@pytest.mark.parametrize(("url", "want"), [
    ("postgresql://app:s3cret@db:5432/janitor?sslmode=require", "postgresql://app:***@db:5432/janitor?sslmode=require"),
    ("postgres://app@db/janitor", "postgres://app@db/janitor"),
    ("postgresql://db/janitor?user=app&password=s3cret&sslmode=require",
     "postgresql://db/janitor?user=app&password=***&sslmode=require"),
    ("host=db user=app password='s3 cret' dbname=janitor", "host=db user=app password=*** dbname=janitor"),
])
def test_passwords_are_kept_out_of_messages(url, want):
    assert redact(url) == want
