"""Connections and transactions: one SQLite connection per thread, WAL, immediate write transactions.

Stores nothing itself; only the store's parts may use it, and no connection it makes may leave the store.

WAL lets the web process append to the inbox while the worker reads. ``synchronous=NORMAL`` in WAL mode
keeps every committed transaction across a killed process (S9 is about SIGKILL, not power loss; set
``JANITOR_SQLITE_SYNC=FULL`` to also survive power loss at some cost in webhook throughput).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils


def connect(path: str) -> sqlite_utils.Database:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    sync = os.environ.get("JANITOR_SQLITE_SYNC", "NORMAL").upper()
    conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'FULL' else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return sqlite_utils.Database(conn)


@contextlib.contextmanager
def write_tx(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """A transaction that takes the write lock up front (BEGIN IMMEDIATE), so two writers queue on the
    busy timeout instead of failing on a lock upgrade; nested use becomes a savepoint."""
    conn = db.conn
    if conn.in_transaction:
        with db.atomic():
            yield db
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class ConnectionPool:
    """One connection per thread for one database file."""

    engine = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite_utils.Database] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._file: tuple[int, int] | None = None  # (device, inode) of the file the first connection opened

    def get(self) -> sqlite_utils.Database:
        if os.getpid() != self._pid:  # forked (gunicorn): never share a connection across processes
            self._pid = os.getpid()
            self._local = threading.local()
            self._all = []
        db = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path)
            if self._file is None and self.path != ":memory:":
                self._file = _file_identity(self.path)
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    @contextlib.contextmanager
    def probe_connection(self, wait: float) -> Iterator[sqlite3.Connection]:
        """A new connection to the file this pool's connections opened, for proving it writable: opened
        read-write and never created (a removed file or directory is not made again, empty), waiting at
        most ``wait`` seconds for the write lock. ``sqlite3.OperationalError`` when the file at ``path`` is
        gone or is not the one this pool opened (replaced, or its directory removed: the pool's connections
        write to a file nobody will read again); ``:memory:`` is the calling thread's own connection."""
        if self.path == ":memory:":
            yield self.get().conn
            return
        self.get()
        try:
            now_there = _file_identity(self.path)
        except OSError as exc:
            raise sqlite3.OperationalError(f"database file {self.path} is gone: {exc.strerror}") from exc
        if now_there != self._file:
            raise sqlite3.OperationalError(f"database file {self.path} was replaced since it was opened")
        conn = sqlite3.connect(f"{Path(self.path).absolute().as_uri()}?mode=rw", uri=True, timeout=wait,
                               isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction of the calling thread's connection (``write_tx``)."""
        with write_tx(self.get()):
            yield

    def in_transaction(self) -> bool:
        return bool(self.get().conn.in_transaction)

    def has_schema(self) -> bool:
        """Whether the janitor's tables were ever made in this database."""
        row = self.get().execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")
        return row.fetchone() is not None

    def probe_write(self, sql: str, params: list[object], wait: float) -> str | None:
        """None when ``sql`` committed on a new connection (``probe_connection``) that took the write lock
        within ``wait`` seconds, else why not."""
        try:
            with self.probe_connection(wait) as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(sql, params)
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            return str(exc) or exc.__class__.__name__
        return None

    @staticmethod
    def is_storage_failure(exc: BaseException) -> bool | None:
        """True when ``exc`` is a failure of SQLite itself (locked, I/O, disk full, a damaged file), False
        when it refused a value or a constraint, None when it is not SQLite's."""
        if not isinstance(exc, sqlite3.Error):
            return None
        return not isinstance(
            exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.InterfaceError | sqlite3.ProgrammingError)

    def release(self) -> None:
        """Close the calling thread's connection, if it has one (a thread that ends calls this)."""
        db = getattr(self._local, "db", None)
        if db is None:
            return
        self._local.db = None
        with self._lock:
            self._all = [other for other in self._all if other is not db]
        with contextlib.suppress(sqlite3.Error):
            db.close()

    def close(self) -> None:
        with self._lock:
            for db in self._all:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._all.clear()
        self._local = threading.local()


def _file_identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino
