"""Connections and transactions on PostgreSQL (psycopg 3 and its pool), as ``db.py`` does them on SQLite.

Stores nothing itself; only the store's parts may use it, and no connection it makes may leave the store.

- ``PgConnection.execute(sql, params=())`` takes the SQL the parts write for SQLite, with ``?`` placeholders
  (turned into psycopg's ``%s`` outside string literals, quoted names and comments; a literal ``%`` is
  escaped), and returns a cursor with ``fetchone``, ``fetchall``, iteration and ``rowcount``. Python booleans
  are sent as integers (the columns are integers, as on SQLite), and a ``numeric`` result (``SUM`` of
  integers) comes back as an ``int``, or a ``float`` when it has a fraction.
- Outside a transaction every statement commits by itself (autocommit); ``write_tx`` is one transaction,
  nested ones savepoints.
- ``ConnectionPool`` gives each thread one connection of a psycopg pool until the thread releases it, and a
  process forked from the one that made the pool (gunicorn) a pool of its own.
- ``migrate_postgres`` applies ``schema_postgres``'s migrations under an advisory lock: any number of
  processes may start at once on an empty database; one migrates, the others wait and find it done.

The URL is a libpq URL or conninfo (``postgresql://user@host:5432/db?sslmode=verify-full``); its options pass
through to libpq, and a password may be given apart from it (from a secret file or the environment).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import psycopg_pool
from psycopg import pq
from psycopg.adapt import Loader

from daemon import config
from daemon.store.schema_postgres import MIGRATIONS

# Any constant no other application on the database is likely to take: "janitor\0" as 8 bytes.
MIGRATION_LOCK = 0x6A616E69746F7200

_IDLE = pq.TransactionStatus.IDLE


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """``sql`` with every ``?`` placeholder made ``%s`` and every ``%`` made ``%%``, except inside string
    literals ('...'), quoted names ("..."), and comments (-- and /* */), which are left as written."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in ("'", '"'):
            end = i + 1
            while end < n:
                if sql[end] == c:
                    if end + 1 < n and sql[end + 1] == c:  # '' inside '...' is one quote
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i:end + 1].replace("%", "%%"))
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif c == "?":
            out.append("%s")
            i += 1
        elif c == "%":
            out.append("%%")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class _NumericLoader(Loader):
    """``numeric`` (what PostgreSQL's ``SUM`` of integers is) as ``int``, or ``float`` with a fraction,
    where SQLite gives an integer or a real: never a ``Decimal`` the callers do not expect."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        if text in ("NaN", "Infinity", "-Infinity"):
            return float(text)
        return int(text) if "." not in text and "e" not in text.lower() else float(text)


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_loader("numeric", _NumericLoader)


def _param(value: object) -> object:
    return int(value) if isinstance(value, bool) else value


class PgCursor:
    """What ``execute`` answers: the rows of one statement, read as a ``sqlite3`` cursor's are."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cursor.fetchone() if self._cursor.description is not None else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cursor.fetchall() if self._cursor.description is not None else []

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


class PgConnection:
    """One PostgreSQL connection, in autocommit mode outside ``write_tx``."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.depth = 0  # write_tx nesting: 0 outside, 1 in the transaction, more in savepoints

    def execute(self, sql: str, params: Sequence[object] = ()) -> PgCursor:
        if isinstance(params, dict):
            raise TypeError("named parameters are not supported: use ? placeholders")
        return PgCursor(self.conn.execute(translate(sql), [_param(p) for p in params]))

    def executescript(self, sql: str) -> None:
        """Run statements as written (no placeholders: ``?`` and ``%`` are left alone), several at once."""
        self.conn.execute(sql.encode())

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != _IDLE

    @property
    def usable(self) -> bool:
        return not self.conn.closed and not self.conn.broken

    def close(self) -> None:
        self.conn.close()


@contextlib.contextmanager
def write_tx(db: PgConnection) -> Iterator[PgConnection]:
    """One transaction (BEGIN ... COMMIT, ROLLBACK when the block raises); nested use becomes a savepoint:
    what a failing inner block wrote is undone while the outer transaction goes on."""
    if db.depth or db.in_transaction:
        name = f"janitor_sp{db.depth}"
        db.conn.execute(f"SAVEPOINT {name}")
        db.depth += 1
        try:
            yield db
        except BaseException:
            if db.usable:
                db.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                db.conn.execute(f"RELEASE SAVEPOINT {name}")
            raise
        finally:
            db.depth -= 1
        db.conn.execute(f"RELEASE SAVEPOINT {name}")
        return
    db.conn.execute("BEGIN")
    db.depth = 1
    try:
        yield db
    except BaseException:
        if db.usable and db.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    finally:
        db.depth = 0
    db.conn.execute("COMMIT")


def connect(url: str, *, password: str | None = None, connect_timeout: float = 30.0,
            application_name: str = "registry-janitor") -> PgConnection:
    """A connection of its own (not from a pool), for migrations, checks and probes."""
    conn = psycopg.connect(url, **_connect_kwargs(password, connect_timeout, application_name))
    _configure(conn)
    return PgConnection(conn)


def _connect_kwargs(password: str | None, connect_timeout: float, application_name: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": max(1, round(connect_timeout)),
                              "application_name": application_name}
    if password is not None:
        kwargs["password"] = password
    return kwargs


def redact(url: str) -> str:
    """``url`` with any password in it replaced by ``***``, for messages and logs."""
    return config.redact(url)


class ConnectionPool:
    """One connection per thread, taken from a psycopg pool of at most ``max_size`` connections to ``url``
    and kept until the thread releases it (each thread holds one, so ``max_size`` bounds the threads that
    use the store at once: a thread beyond it waits ``timeout`` seconds, then fails saying so)."""

    engine = "postgresql"

    def __init__(self, url: str, *, password: str | None = None, max_size: int = 20, timeout: float = 30.0,
                 application_name: str = "registry-janitor") -> None:
        self.url = url
        self.password = password
        self.max_size = max_size
        self.timeout = timeout
        self.application_name = application_name
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # A forked child must never close (or let the garbage collector close) its parent's connections:
        # closing one ends the parent's session on the shared socket. It keeps them here, unused.
        self._inherited: list[object] = []
        self._pool = self._new_pool()

    def _new_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        return psycopg_pool.ConnectionPool(
            self.url, min_size=1, max_size=self.max_size, timeout=self.timeout, open=True, configure=_configure,
            kwargs=_connect_kwargs(self.password, self.timeout, self.application_name),
            name=f"janitor-{os.getpid()}", check=psycopg_pool.ConnectionPool.check_connection)

    def get(self) -> PgConnection:
        if os.getpid() != self._pid:  # forked (gunicorn): never share a connection across processes
            with self._lock:
                if os.getpid() != self._pid:
                    self._inherited.append((self._pool, self._local))
                    self._pid = os.getpid()
                    self._local = threading.local()
                    self._pool = self._new_pool()
        db: PgConnection | None = getattr(self._local, "db", None)
        if db is not None and not db.usable:  # the server ended it (restart, idle timeout): take another
            self.release()
            db = None
        if db is None:
            try:
                conn = self._pool.getconn()
            except psycopg_pool.PoolTimeout as exc:
                raise psycopg_pool.PoolTimeout(
                    f"no PostgreSQL connection to {redact(self.url)} within {self.timeout:g}s: all {self.max_size}"
                    " are held by other threads (raise the pool's size) or the server does not answer") from exc
            db = PgConnection(conn)
            self._local.db = db
        return db

    def release(self) -> None:
        """Give the calling thread's connection back to the pool, if it has one (a thread that ends calls
        this); one left in a transaction is rolled back by the pool."""
        db: PgConnection | None = getattr(self._local, "db", None)
        if db is None:
            return
        self._local.db = None
        db.depth = 0
        with contextlib.suppress(psycopg.Error, psycopg_pool.PoolTimeout):
            self._pool.putconn(db.conn)

    @contextlib.contextmanager
    def probe_connection(self, wait: float) -> Iterator[PgConnection]:
        """A new connection (what a new thread would open), not from the pool, that gives up on connecting
        and on locks after ``wait`` seconds, and on any statement after twice that."""
        db = connect(self.url, password=self.password, connect_timeout=wait,
                     application_name=f"{self.application_name}-probe")
        try:
            millis = max(1, int(wait * 1000))
            db.conn.execute(f"SET lock_timeout = {millis}")
            db.conn.execute(f"SET statement_timeout = {2 * millis}")  # a lock not granted says so first
            yield db
        finally:
            db.close()

    def close(self) -> None:
        with self._lock:
            self._local = threading.local()
            if os.getpid() == self._pid:
                self._pool.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction of the calling thread's connection (``write_tx``)."""
        with write_tx(self.get()):
            yield

    def in_transaction(self) -> bool:
        return self.get().in_transaction

    def has_schema(self) -> bool:
        """Whether the janitor's tables were ever made in this database."""
        return schema_version(self.get()) > 0

    def probe_write(self, sql: str, params: list[object], wait: float) -> str | None:
        """None when ``sql`` committed in a transaction of a new connection (``probe_connection``: it gives
        up on connecting, on locks and on the statement after ``wait`` seconds or so), else why not."""
        try:
            with self.probe_connection(wait) as db, write_tx(db):
                db.execute(sql, params)
        except (psycopg.Error, OSError) as exc:
            return redact(str(exc).strip()) or exc.__class__.__name__
        return None

    @staticmethod
    def is_storage_failure(exc: BaseException) -> bool | None:
        """True when ``exc`` is a failure of PostgreSQL itself (the connection or server gone, a lock or
        serialization conflict, out of space), False when it refused a value or a constraint, None when
        it is not PostgreSQL's."""
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return True
        if not isinstance(exc, psycopg.Error):
            return None
        return not isinstance(exc, psycopg.IntegrityError | psycopg.DataError | psycopg.ProgrammingError)


def schema_version(db: PgConnection) -> int:
    """The newest migration applied to the database, 0 when none was (or it holds no janitor tables)."""
    row = db.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    return int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])  # type: ignore[index]


def migrate_postgres(db: PgConnection) -> int:
    """Bring the database to the newest version; returns that version. Each migration runs in one
    transaction with its version row, holding a transaction-scoped advisory lock, so that processes
    starting at once on an empty database apply each migration once: the others wait for the lock and
    then find it applied."""
    for version, step in enumerate(MIGRATIONS, start=1):
        if schema_version(db) >= version:
            continue
        with write_tx(db):
            db.execute("SELECT pg_advisory_xact_lock(?)", [MIGRATION_LOCK])
            db.executescript("CREATE TABLE IF NOT EXISTS schema_version"
                             " (version BIGINT PRIMARY KEY, applied_at DOUBLE PRECISION)")
            if schema_version(db) >= version:
                continue
            db.executescript(step)
            db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, extract(epoch FROM now()))",
                       [version])
    return len(MIGRATIONS)
