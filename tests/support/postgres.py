"""A real, throwaway PostgreSQL server for the test session (Debian's `postgresql` package).

`PostgresCluster(base).start()` runs `initdb` into a temporary folder and `pg_ctl start` on a free TCP port
of 127.0.0.1 (its unix socket in that folder too), trust authentication for local connections only, and
`stop()` (also run at interpreter exit) stops it and removes the folder. It does not flush commits to disk
unless made with `durable=True` (a benchmark's server: PostgreSQL's own defaults). PostgreSQL refuses to
run as root: as root, the binaries run as the `postgres` OS user and the folder belongs to it.

`url(name)` is the libpq URL of database `name`; `create_database(name)` / `drop_database(name)` make and
remove one, fast (a per-test database); `create_database(name, migrated=True)` copies a template database
the janitor's PostgreSQL migrations were applied to once per session.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

INSTALL_HINT = "install it with: apt-get install -y postgresql"
TEMPLATE = "janitor_migrated_template"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def find_bin_dir() -> Path:
    """The newest `/usr/lib/postgresql/<major>/bin` holding `initdb`; `pytest.fail` (never a skip) when
    PostgreSQL is not installed."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "pg_ctl").is_file()]
    if not found:
        pytest.fail(f"PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); {INSTALL_HINT}",
                    pytrace=False)

    def major(bin_dir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name)) or (0,)

    return max(found, key=major)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    def __init__(self, base: Path | None = None, *, durable: bool = False) -> None:
        self.bin_dir = find_bin_dir()
        self.durable = durable
        # Not under pytest's tmp_path: that folder is root's alone (0700) and the server runs as `postgres`.
        self.base = Path(tempfile.mkdtemp(prefix="janitor-pg-", dir=base))
        self.data = self.base / "data"
        self.socket_dir = self.base / "socket"
        self.log = self.base / "postgres.log"
        self.port = 0
        self._as_root = os.geteuid() == 0
        self._lock = threading.Lock()
        self._template_ready = False
        self._running = False

    # -- the server ---------------------------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        self.socket_dir.mkdir()
        if self._as_root:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(f"no `postgres` OS user to run PostgreSQL as (running as root); {INSTALL_HINT}",
                            pytrace=False)
            for path in (self.base, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                  "--locale=C", "--no-sync")
        atexit.register(self.stop)
        # fsync, synchronous_commit and full_page_writes off: a throwaway server that no test expects to
        # survive a crash of the machine is faster without them. Never do this on a real server; a benchmark
        # asks for `durable` (PostgreSQL's defaults: each commit flushed to disk before it returns).
        options = f"-p {{port}} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        last_error = ""
        for _ in range(5):  # the free port may be taken by someone else before the server binds it
            self.port = free_port()
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                          "-o", options.format(port=self.port), "start")
            except RuntimeError as exc:
                last_error = str(exc)
                continue
            self._running = True
            return self
        raise RuntimeError(f"PostgreSQL did not start: {last_error}")

    def stop(self) -> None:
        with self._lock:
            if self._running:
                self._running = False
                with contextlib.suppress(Exception):
                    self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            shutil.rmtree(self.base, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.base, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
                               f"{chr(10) + log if log else ''}")

    # -- databases ----------------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def admin(self):  # -> psycopg.Connection, autocommit (CREATE DATABASE runs outside transactions)
        import psycopg

        return psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10)

    def create_database(self, name: str, *, migrated: bool = False) -> str:
        """Make database `name` (empty, or a copy of the migrated template); returns its URL."""
        check_name(name)
        template = "template0"
        if migrated:
            self._ensure_template()
            template = TEMPLATE
        with self.admin() as conn:
            for attempt in range(20):  # a copy fails while someone else is still connected to the template
                try:
                    conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
                    break
                except Exception as exc:
                    if "is being accessed by other users" not in str(exc) or attempt == 19:
                        raise
                    time.sleep(0.05)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        check_name(name)
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _ensure_template(self) -> None:
        with self._lock:
            if self._template_ready:
                return
            from daemon.store.postgres import connect, migrate_postgres

            with self.admin() as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
                conn.execute(f"CREATE DATABASE {TEMPLATE} TEMPLATE template0")
            db = connect(self.url(TEMPLATE))
            try:
                migrate_postgres(db)
            finally:
                db.close()
            self._template_ready = True


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"database name {name!r}: lower-case letters, digits and '_', at most 63")
