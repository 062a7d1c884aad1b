"""``copy_store``: every row of one janitor database copied into another, empty one (``registry-janitor
migrate-store``: SQLite to PostgreSQL when a janitor outgrows one node; PostgreSQL to SQLite works too).

What is copied is read from each engine's catalogue, not listed here: every table of the schema except
``schema_version`` (which each database keeps for its own engine's migrations), so a table a later
migration adds is copied too. Both databases must stand at the newest schema this janitor knows
(``open_store`` migrates each forward when it opens it) and hold the same tables with the same columns.

The copy is one transaction of the target, reading one snapshot of the source:
- the target's tables are locked and must be empty (``CopyRefused`` names the rows found otherwise:
  nothing is overwritten or merged);
- tables are copied parents first (by the foreign keys of the target's catalogue: plans before untags,
  untags before operator requests), in batches of ``batch`` rows, ids kept as they are;
- the counting triggers do not run while rows arrive: the running totals (``counters``,
  ``daily_counters``) are copied as they stand, never counted a second time. On PostgreSQL the user
  triggers of the target's tables are disabled for the transaction (``ALTER TABLE ... DISABLE TRIGGER``:
  the tables' owner may, no superuser needed; foreign keys are still checked) and enabled again before it
  commits; on SQLite they are dropped and made again from their own SQL, in the same transaction;
- every table's rows are counted on both sides, and the tables without an ``id`` column (the totals,
  the key-value table, pipelines, refs, merge requests and the other keyed rows) compared row by row;
- on PostgreSQL each identity (or serial) column's sequence is moved past the largest id copied, so the
  next webhook, plan or untag stored gets a new id after the copied ones (SQLite's rowids already do).
Anything that fails rolls the whole transaction back: the target is left as empty as it was.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from daemon import config
from daemon.store import postgres, schema_postgres
from daemon.store import schema as sqlite_schema
from daemon.store.base import StoreBase

#: ``progress(table, rows copied so far, rows to copy)``: called as each table starts and after each batch.
Progress = Callable[[str, int, int], None]

#: Each database keeps its own engine's migration history.
NOT_COPIED = frozenset({"schema_version"})


class CopyRefused(Exception):
    """The copy was not started: the target holds data, or the two schemas differ."""


class CopyFailed(Exception):
    """The copy stopped part way (a row the target refused, a connection lost); nothing was committed."""


@dataclass(frozen=True)
class _Catalogue:
    """What one database's catalogue says: its tables and their columns (in the engine's order), and the
    tables each table's foreign keys point at."""

    columns: dict[str, list[str]]
    parents: dict[str, set[str]]


def copy_store(source: StoreBase, target: StoreBase, *, batch: int = 1000,
               progress: Progress | None = None) -> dict[str, int]:
    """Copy every row of ``source`` into the empty ``target`` (see the module's description); returns the
    rows copied per table, in the order they were copied. ``CopyRefused`` before anything is written (the
    target holds rows, a schema is not the newest, or the two differ); ``CopyFailed`` when the copy
    stopped part way (the target's transaction rolled back)."""
    if batch < 1:
        raise ValueError("batch must be at least 1 row")
    for store, side in ((source, "source"), (target, "target")):
        _check_version(store, side)
    wanted, have = _catalogue(source), _catalogue(target)
    _check_same_tables(wanted, have)
    order = _parents_first(have)
    copied: dict[str, int] = {}
    try:
        with target.transaction():
            _lock(target, order)
            held = {table: n for table in order if (n := _count(target, table))}
            if held:
                found = ", ".join(f"{n:,} row{'s' if n != 1 else ''} in {table}" for table, n in held.items())
                raise CopyRefused(f"the target already holds data: {found}; migrate into an empty database")
            with _snapshot(source), _triggers_off(target, order):
                for table in order:
                    copied[table] = _copy_table(source, target, table, have.columns[table], batch, progress)
                _verify(source, target, order, have.columns)
            _move_sequences(target, order)
    except (CopyRefused, CopyFailed):
        raise
    except Exception as exc:
        if _driver_error(source, target, exc):
            raise CopyFailed(f"{_message(exc)}; nothing was written to the target") from exc
        raise
    return copied


def _driver_error(source: StoreBase, target: StoreBase, exc: BaseException) -> bool:
    return any(store._pool.is_storage_failure(exc) is not None for store in (source, target))


def _message(exc: BaseException) -> str:
    """What the database said, on one line, any password in it masked."""
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return config.redact(text)


# -- schema --------------------------------------------------------------------------------------------


def _newest(store: StoreBase) -> int:
    return len(schema_postgres.MIGRATIONS if store._postgres else sqlite_schema.MIGRATIONS)


def _check_version(store: StoreBase, side: str) -> None:
    row = store._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    version, newest = int(row[0] or 0) if row else 0, _newest(store)
    if version > newest:
        raise CopyRefused(f"the {side}'s schema is version {version} of {store._pool.engine}, newer than this"
                          f" janitor's {newest}: run migrate-store of the release that wrote it")
    if version < newest:
        raise CopyRefused(f"the {side}'s schema is version {version} of {store._pool.engine}, not the newest"
                          f" ({newest}): open it with this release first (it migrates when opened)")


def _catalogue(store: StoreBase) -> _Catalogue:
    db = store._db
    columns: dict[str, list[str]] = {}
    parents: dict[str, set[str]] = {}
    if store._postgres:
        rows = db.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c"
            " JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
            " WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"
            " ORDER BY c.table_name, c.ordinal_position").fetchall()
        for table, column in rows:
            columns.setdefault(str(table), []).append(str(column))
        for child, parent in db.execute(
                "SELECT c.relname, p.relname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
                " JOIN pg_class p ON p.oid = k.confrelid WHERE k.contype = 'f'"
                " AND c.relnamespace = current_schema()::regnamespace").fetchall():
            parents.setdefault(str(child), set()).add(str(parent))
    else:
        tables = [str(r[0]) for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
            " ORDER BY name").fetchall()]
        for table in tables:
            columns[table] = [str(r[1]) for r in db.execute(f"PRAGMA table_info({_quote(table)})").fetchall()]
            parents[table] = {str(r[2]) for r in db.execute(f"PRAGMA foreign_key_list({_quote(table)})").fetchall()}
    for table in NOT_COPIED:
        columns.pop(table, None)
    return _Catalogue(columns, {t: {p for p in parents.get(t, set()) if p != t and p in columns} for t in columns})


def _check_same_tables(source: _Catalogue, target: _Catalogue) -> None:
    problems = []
    if only := sorted(set(source.columns) - set(target.columns)):
        problems.append(f"tables only in the source: {', '.join(only)}")
    if only := sorted(set(target.columns) - set(source.columns)):
        problems.append(f"tables only in the target: {', '.join(only)}")
    for table in sorted(set(source.columns) & set(target.columns)):
        mine, theirs = set(source.columns[table]), set(target.columns[table])
        if mine != theirs:
            problems.append(f"{table} has columns {', '.join(sorted(mine ^ theirs))} on one side only")
    if problems:
        raise CopyRefused("the two schemas differ (" + "; ".join(problems) + "): both must be this release's")


def _parents_first(catalogue: _Catalogue) -> list[str]:
    """The tables, each after those its foreign keys point at (by name otherwise); a cycle, were one ever
    made, is broken by name."""
    order: list[str] = []
    left = sorted(catalogue.columns)
    while left:
        ready = [t for t in left if not (catalogue.parents[t] - set(order))] or left[:1]
        order.extend(ready)
        left = [t for t in left if t not in ready]
    return order


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- the copy ------------------------------------------------------------------------------------------


def _lock(target: StoreBase, tables: Sequence[str]) -> None:
    """On PostgreSQL, no one else reads or writes the target's tables until the copy commits (a janitor
    started too early waits); SQLite's write transaction already holds the whole file."""
    if target._postgres and tables:
        target._db.execute(f"LOCK TABLE {', '.join(_quote(t) for t in tables)} IN ACCESS EXCLUSIVE MODE")


def _count(store: StoreBase, table: str) -> int:
    row = store._db.execute(f"SELECT COUNT(*) FROM {_quote(table)}").fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def _snapshot(source: StoreBase) -> Iterator[None]:
    """One read transaction of the source around the whole copy: every table as of one moment."""
    db = source._db
    if source._postgres:
        db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    else:
        db.execute("BEGIN")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            db.execute("ROLLBACK")


@contextlib.contextmanager
def _triggers_off(target: StoreBase, tables: Sequence[str]) -> Iterator[None]:
    """The target's own triggers (the counting ones) do not fire while rows arrive, inside its transaction:
    if the block raises, the transaction's rollback restores them."""
    db = target._db
    if target._postgres:
        enabled = [(str(t), str(n)) for t, n in db.execute(
            "SELECT c.relname, g.tgname FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid"
            " WHERE NOT g.tgisinternal AND g.tgenabled <> 'D' AND c.relnamespace = current_schema()::regnamespace"
            " ORDER BY 1, 2").fetchall() if str(t) in tables]
        for table, name in enabled:
            db.execute(f"ALTER TABLE {_quote(table)} DISABLE TRIGGER {_quote(name)}")
        yield
        for table, name in enabled:
            db.execute(f"ALTER TABLE {_quote(table)} ENABLE TRIGGER {_quote(name)}")
        return
    made = [(str(n), str(s)) for n, s in db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND sql IS NOT NULL ORDER BY name").fetchall()]
    for name, _ in made:
        db.execute(f"DROP TRIGGER {_quote(name)}")
    yield
    for _, sql in made:
        db.execute(sql)


def _batches(store: StoreBase, sql: str, size: int) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of ``sql`` ``size`` at a time, streamed (never the whole table in memory)."""
    if store._postgres:
        with store._db.conn.cursor(name="janitor_copy") as cursor:
            cursor.execute(postgres.translate(sql))
            while rows := cursor.fetchmany(size):
                yield [tuple(r) for r in rows]
        return
    cursor = store._db.execute(sql)
    while rows := cursor.fetchmany(size):
        yield [tuple(r) for r in rows]


def _insert_many(target: StoreBase, sql: str, rows: list[tuple[Any, ...]]) -> None:
    if target._postgres:
        with target._db.conn.cursor() as cursor:
            cursor.executemany(postgres.translate(sql), rows)
    else:
        target._db.conn.executemany(sql, rows)


def _copy_table(source: StoreBase, target: StoreBase, table: str, columns: list[str], batch: int,
                progress: Progress | None) -> int:
    total = _count(source, table)
    names = ", ".join(_quote(c) for c in columns)
    select = f"SELECT {names} FROM {_quote(table)}"
    insert = f"INSERT INTO {_quote(table)} ({names}) VALUES ({', '.join('?' for _ in columns)})"
    done = 0
    if progress is not None:
        progress(table, 0, total)
    for rows in _batches(source, select, batch):
        try:
            _insert_many(target, insert, rows)
        except Exception as exc:
            if not _driver_error(source, target, exc):
                raise
            raise CopyFailed(f"the target refused a row of {table} (rows {done + 1:,} to {done + len(rows):,}):"
                             f" {_message(exc)}; nothing was written to the target") from exc
        done += len(rows)
        if progress is not None:
            progress(table, done, total)
    return done


def _verify(source: StoreBase, target: StoreBase, tables: Sequence[str], columns: dict[str, list[str]]) -> None:
    """Every table holds as many rows on both sides; the keyed tables (no ``id`` column: the running
    totals among them) hold the same rows."""
    for table in tables:
        have, wanted = _count(target, table), _count(source, table)
        if have != wanted:
            raise CopyFailed(f"{table} holds {have:,} rows after the copy, the source {wanted:,}; nothing was"
                             " written to the target")
        if "id" in columns[table]:
            continue
        select = f"SELECT {', '.join(_quote(c) for c in columns[table])} FROM {_quote(table)}"
        if _rows_of(source, select) != _rows_of(target, select):
            raise CopyFailed(f"{table} differs from the source after the copy; nothing was written to the target")


def _rows_of(store: StoreBase, sql: str) -> collections.Counter[tuple[Any, ...]]:
    return collections.Counter(row for rows in _batches(store, sql, 1000) for row in rows)


def _move_sequences(target: StoreBase, tables: Sequence[str]) -> None:
    """On PostgreSQL, each identity or serial column's next value comes after the largest copied."""
    if not target._postgres:
        return
    db = target._db
    found = db.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND (is_identity = 'YES' OR column_default LIKE 'nextval(%') ORDER BY 1, 2").fetchall()
    for table, column in found:
        if str(table) not in tables:
            continue
        db.execute(f"SELECT setval(pg_get_serial_sequence(?, ?), COALESCE(MAX({_quote(str(column))}), 0) + 1, false)"
                   f" FROM {_quote(str(table))}", [_quote(str(table)), str(column)])
