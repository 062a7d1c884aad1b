"""``registry-janitor migrate-store --from URL --to URL``: the janitor's whole database copied into another,
empty one, to move from SQLite to PostgreSQL (or back).

The source must exist (it is never created: exit 2 otherwise) and is brought to this release's schema
first; the target is made (an SQLite file) or given the janitor's tables (a PostgreSQL database that
exists) and must hold no rows: otherwise exit 1 and nothing is written. What is copied and how
(one transaction, ids kept, the running totals as they stand) is ``daemon.store.copy``. Progress goes to
stderr one table at a time; no message shows a password (``user:***@``, ``password=***``). Stop the
janitor (at least its worker) first: what it stores after the copy began is not copied. The README's
"Moving to PostgreSQL" gives the steps.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click
from pydantic import ValidationError

from daemon.config import StorageSettings, redact
from daemon.store import CopyFailed, CopyRefused, Store, StoreMissing, copy_store
from daemon.wiring import build_storage

URL_HELP = "sqlite:///path/janitor.db (relative to the current folder, or sqlite:////absolute) or postgresql://..."


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"registry-janitor: {message}", err=True)
    sys.exit(code)


def _storage(option: str, url: str) -> StorageSettings:
    """The storage ``url`` names, checked as ``storage.url`` is in the config (exit 2 when it names none)."""
    try:
        return StorageSettings(url=url)
    except ValidationError as exc:
        why = "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
        _fail(f"{option}: {redact(why)}", 2)


def _same_database(source: StorageSettings, target: StorageSettings) -> bool:
    if source.is_postgres or target.is_postgres:
        return source.url == target.url
    return Path(source.sqlite_path).resolve() == Path(target.sqlite_path).resolve()


def _open(option: str, storage: StorageSettings, *, create: bool) -> Store:
    try:
        return build_storage(storage, create=create)
    except StoreMissing as exc:
        _fail(f"{option}: {redact(str(exc))}; check the URL (the source is never created)", 2)
    except Exception as exc:  # whatever keeps the database from being opened: the connection, the file
        why = redact(" ".join(str(exc).split())) or exc.__class__.__name__
        _fail(f"{option}: cannot open {storage.shown_url}: {why}", 2)


@click.command("migrate-store")
@click.option("--from", "source_url", required=True, metavar="URL", help=f"the janitor's database now: {URL_HELP}")
@click.option("--to", "target_url", required=True, metavar="URL",
              help="an empty database to copy it into (a PostgreSQL database must exist; its password may come "
                   "from PGPASSWORD or ~/.pgpass instead of the URL)")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000),
              help="rows written per statement")
def migrate_store(source_url: str, target_url: str, batch: int) -> None:
    """Copy the janitor's database (ledger, plans, audit, counters, watermarks) into an empty one; exit 1 when
    the target holds data (nothing is overwritten), 2 when the source is missing or a URL is wrong."""
    source_settings = _storage("--from", source_url)
    target_settings = _storage("--to", target_url)
    shown_source, shown_target = source_settings.shown_url, target_settings.shown_url
    if _same_database(source_settings, target_settings):
        _fail(f"--from and --to both name {shown_source}; copy into another, empty database", 2)
    source = _open("--from", source_settings, create=False)
    try:
        target = _open("--to", target_settings, create=True)
        try:
            click.echo(f"copying {shown_source} to {shown_target}", err=True)
            copied = copy_store(source, target, batch=batch, progress=_progress())
        except (CopyRefused, CopyFailed) as exc:
            _fail(f"{redact(str(exc))} ({shown_target})", 1)
        finally:
            target.close()
    finally:
        source.close()
    rows = sum(copied.values())
    hint = ("set storage.url to it" + (" (and its password as storage.password_file)"
                                       if target_settings.is_postgres else ""))
    click.echo(f"copied {rows:,} rows in {len(copied)} tables from {shown_source} to {shown_target};"
               f" {hint} and start the janitor")


def _progress() -> Callable[[str, int, int], None]:
    """Each table's line on stderr when it is done; on a terminal, its count as it goes too."""
    live = sys.stderr.isatty()

    def show(table: str, done: int, total: int) -> None:
        if done >= total:
            click.echo(f"{chr(13) if live else ''}  {table}: {done:,} row{'' if done == 1 else 's'}", err=True)
        elif live and done:
            click.echo(f"\r  {table}: {done:,} of {total:,} rows ({100 * done // total}%)", err=True, nl=False)

    return show


COMMANDS = (migrate_store,)
