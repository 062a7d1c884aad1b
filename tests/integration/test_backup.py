"""``registry-janitor backup FILE``: a consistent, checked copy of a live SQLite store that another thread
writes to meanwhile, which opens with the counts it had; an existing FILE is kept unless --force; a missing
store is never created (exit 2, no file made)."""

from __future__ import annotations

import threading
from pathlib import Path

import yaml
from click.testing import CliRunner
from support.janitor import SECRET
from support.ops import APP, OTHER, seed

from daemon.cli import main
from daemon.config import load_settings
from daemon.store import open_store
from daemon.store.schema import MIGRATIONS
from daemon.wiring import build_store


def write_config(directory: Path) -> str:
    raw = {"storage": {"url": f"sqlite:///{directory / 'janitor.db'}"},
           "projects": [{"path": APP, "webhook_secret": SECRET}, {"path": OTHER, "webhook_secret": SECRET}]}
    path = directory / "janitor.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def backup(config: str, *args: str):
    return CliRunner().invoke(main, ["backup", *args, "--config", config])


def counts(path: str) -> dict[str, object]:
    store = open_store(path, create=False)
    try:
        rows = store.db.execute
        return {"inbox": rows("SELECT COUNT(*) FROM inbox").fetchone()[0],
                "events": sum(n for _, _, n in store.event_counts()),
                "plans": rows("SELECT COUNT(*) FROM plans").fetchone()[0],
                "untags": rows("SELECT COUNT(*) FROM untags").fetchone()[0]}
    finally:
        store.close()


def test_a_backup_of_a_store_being_written_is_consistent(tmp_path):
    config = write_config(tmp_path)
    store = build_store(load_settings(config))
    seed(store, 1_000_000.0)
    for i in range(3000):  # a store of some size, so the copy takes several steps
        store.add_event(delivery_key=f"bulk-{i}", source="gitlab", kind="push", project_path=APP, headers={},
                        body=b"x" * 2000, received_at=1_000_000.0 + i)
    stop = threading.Event()
    written = []

    def write() -> None:
        while not stop.is_set():
            n = len(written)
            store.add_event(delivery_key=f"live-{n}", source="gitlab", kind="pipeline", project_path=OTHER,
                            headers={}, body=b"y" * 3000, received_at=2_000_000.0 + n)
            written.append(n)
        store.release_connection()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        while len(written) < 20:
            stop.wait(0.01)
        result = backup(config, str(tmp_path / "copy.db"))
    finally:
        stop.set()
        writer.join(30)
    assert result.exit_code == 0, result.output
    assert f"schema version {len(MIGRATIONS)}, check ok" in result.output
    copied = counts(str(tmp_path / "copy.db"))
    assert copied["inbox"] == copied["events"] >= 3004 + 20, "every stored event, and its counter, together"
    assert copied["plans"] == 4 and copied["untags"] == 7
    assert len(written) > 20, "the janitor's store was written to while it was copied"
    assert not list(tmp_path.glob(".copy.db*")), "no partial file is left"


def test_an_existing_file_is_kept_unless_forced(tmp_path):
    config = write_config(tmp_path)
    store = build_store(load_settings(config))
    seed(store, 1_000_000.0)
    store.close()
    target = tmp_path / "copy.db"
    target.write_text("precious")
    result = backup(config, str(target))
    assert result.exit_code == 1 and "exists; give another FILE, or --force" in result.output
    assert target.read_text() == "precious"
    result = backup(config, str(target), "--force")
    assert result.exit_code == 0, result.output
    assert counts(str(target))["plans"] == 4


def test_a_missing_store_is_not_created(tmp_path):
    config = write_config(tmp_path)
    result = backup(config, str(tmp_path / "copy.db"))
    assert result.exit_code == 2 and "no janitor database at" in result.output and "nothing to back up" in result.output
    assert not (tmp_path / "janitor.db").exists() and not (tmp_path / "copy.db").exists()
