"""``registry-janitor backup FILE``: a consistent copy of the running janitor's SQLite store.

The copy is taken with SQLite's online backup API while the web and the worker go on writing (nothing
stops), checked, and only then put at FILE. The store must already exist (exit 2 otherwise: a backup never
creates one); an existing FILE is kept unless ``--force``. PostgreSQL is backed up with its own tools
(``pg_dump -Fc``). Restoring is described in the README ("Backups and retention").
"""

from __future__ import annotations

import sys

import click

from daemon.cli.options import config_option, settings_or_exit
from daemon.config import SQLITE_PREFIX
from daemon.ops.status import human_bytes
from daemon.store import BackupFailed, StoreMissing
from daemon.wiring import build_store


def _fail(message: str, code: int) -> None:
    click.echo(f"registry-janitor: {message}", err=True)
    sys.exit(code)


@click.command()
@config_option
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@click.option("--force", is_flag=True, help="replace FILE when it exists")
def backup(config_path: str | None, file: str, force: bool) -> None:
    """Copy the janitor's SQLite database to FILE while it runs (SQLite's online backup), and check the copy."""
    settings = settings_or_exit(config_path)
    if not settings.storage.url.startswith(SQLITE_PREFIX):
        _fail(f"storage.url {settings.storage.url.partition('://')[0]}://... is not SQLite: back it up with the"
              " database's own tools (for PostgreSQL: pg_dump -Fc)", 2)
    try:
        store = build_store(settings, create=False)
    except StoreMissing as exc:
        _fail(f"{exc} (storage.url {settings.storage.shown_url}); nothing to back up", 2)
        return
    shown = {"at": -1}

    def progress(done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if total > 10_000 and percent != shown["at"]:  # large files only: about 40 MB and more
            shown["at"] = percent
            click.echo(f"\rcopied {done:,} of {total:,} pages ({percent}%)", err=True, nl=done >= total)

    try:
        copy = store.backup_to(file, overwrite=force, progress=progress)
    except FileExistsError:
        _fail(f"{file} exists; give another FILE, or --force to replace it", 1)
        return
    except BackupFailed as exc:
        _fail(f"could not back up {settings.storage.sqlite_path} to {file}: {exc}", 1)
        return
    finally:
        store.close()
    click.echo(f"backed up {settings.storage.sqlite_path} to {file}: {human_bytes(copy['bytes'])}"
               f" ({copy['bytes']:,} bytes), schema version {copy['schema_version']}, check {copy['check']}")


COMMANDS = (backup,)
