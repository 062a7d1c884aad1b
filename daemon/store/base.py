"""What every part of the store shares: this thread's connection, write transactions, the health probe,
and the few SQL fragments the two engines write differently.

Stores nothing itself. The connection (``_db``) is the parts' own: no method of any part returns it, a
row, a cursor or a driver's object, so that either engine can stand behind the same methods. The parts
write their SQL once, in what SQLite and PostgreSQL both accept (``?`` placeholders, ``ON CONFLICT``,
``RETURNING``, ``IS [NOT] DISTINCT FROM``); where the two differ, the fragment comes from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from daemon.store import db as sqlite_db
from daemon.store import postgres

Pool = sqlite_db.ConnectionPool | postgres.ConnectionPool


class StoreBase:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    @property
    def _db(self) -> Any:
        """This thread's connection: ``execute(sql, params)`` answers a cursor (``fetchone``, ``fetchall``,
        iteration, ``rowcount``) on either engine."""
        return self._pool.get()

    @property
    def _postgres(self) -> bool:
        return self._pool.engine == "postgresql"

    @property
    def _skip_locked(self) -> str:
        """Appended to a subquery that picks rows to claim: on PostgreSQL, rows another transaction is
        claiming are passed over instead of waited for (SQLite has one writer at a time anyway)."""
        return " FOR UPDATE SKIP LOCKED" if self._postgres else ""

    @property
    def _for_update(self) -> str:
        """Appended to a ``SELECT`` inside a transaction that decides a write on what it read: on PostgreSQL
        the rows read stay locked until the transaction ends (on SQLite the write transaction holds them)."""
        return " FOR UPDATE" if self._postgres else ""

    def _claim(self, table: str, open_: str, open_params: list[Any], order: str, limit: int, assign: str,
               assign_params: list[Any], returning: str) -> list[Any]:
        """Claim at most ``limit`` rows of ``table`` that are ``open_`` (an SQL condition), the first in
        ``order``, with ``assign`` (an SQL ``SET`` list), and return their ``returning`` columns: one
        statement, so a claim is whole or not at all, and each row is checked open again as it is updated,
        so two workers never claim one row. The rows are picked first, once (a ``MATERIALIZED`` CTE): in
        ``UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` PostgreSQL may run the
        subquery more than once and claim more than ``n`` rows, which then wait out a lease unworked."""
        return self._db.execute(
            f"WITH picked AS MATERIALIZED (SELECT id FROM {table} WHERE {open_} ORDER BY {order}"
            f" LIMIT ?{self._skip_locked}) UPDATE {table} SET {assign} WHERE id IN (SELECT id FROM picked)"
            f" AND {open_} RETURNING {returning}", [*open_params, limit, *assign_params, *open_params]).fetchall()

    def _greatest(self, *terms: str) -> str:
        """The largest of ``terms`` (SQL expressions), none NULL."""
        return f"{'GREATEST' if self._postgres else 'MAX'}({', '.join(terms)})"

    def _lock_key(self, key: str) -> None:
        """Inside a transaction on PostgreSQL: wait for, then hold until it ends, a lock on ``key``, so that
        a check-then-insert on that key is done by one transaction at a time (on SQLite the write
        transaction already is)."""
        if self._postgres:
            self._db.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", [key])

    def release_connection(self) -> None:
        """Close the calling thread's connection: a short-lived thread that used the store calls this
        before it ends (the next call from that thread would open a new one)."""
        self._pool.release()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (on SQLite taking the write lock up front); nested, a savepoint: what a
        failing inner block wrote is undone while the outer transaction goes on."""
        with self._pool.transaction():
            yield

    def writable(self, now: float, wait: float) -> str | None:
        """None when a row could be stored now, else why not. Proven by storing one: a new connection (what
        a new request thread opens) commits a ``kv`` row (``store_probe``) within ``wait`` seconds, which
        fails as an insert into the inbox would: on SQLite a read-only file, directory or volume, a full
        disk, a file removed or replaced under the running process, or a lock held past ``wait``; on
        PostgreSQL a server that cannot be reached or refuses the write (read-only, out of space) or a
        lock held past ``wait``."""
        return self._pool.probe_write(
            "INSERT INTO kv (key, value, updated_at) VALUES ('store_probe', '', ?)"
            " ON CONFLICT(key) DO UPDATE SET updated_at = excluded.updated_at", [now], wait)

    def has_schema(self) -> bool:
        """Whether the janitor's tables were ever made in this database."""
        return self._pool.has_schema()
