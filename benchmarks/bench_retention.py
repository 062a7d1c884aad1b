"""The database stops growing: 1,000,000 events through a janitor with a short retention.

GitLab deliveries as an instance sends them (``EventStream``: merge requests opened, updated, merged or
closed, their pipelines, branch deletions, default-branch pushes and pipelines over 20 projects) are
stored in the inbox of a real SQLite file through the store's own insert (as the web stores them, 2,000
to a transaction), two simulated seconds apart; after each 2,000 the simulated clock goes through their
4,000 seconds as the worker's scheduler would: the real ``Worker.tick()`` every poll interval while it
finds work (at most 50 due plans a tick), every minute otherwise, and the pruning job every ``PRUNE_EVERY``
seconds with its real time budget (``storage.retention``: events 1d, plans 1d, the shortest allowed). A
registry stand-in answers at once, as in ``bench_worker_memory.py``. Every merge request of the stream is
merged or closed within minutes and its branch deleted. The file's size, its pages and free pages, and
the rows of the big tables are printed every 100,000 events.

Exits 1 unless the size levels off (the second half of the events grows the file by less than 10% of its
size at half way), or unless every total (``/metrics``' counters, the status counters, the dashboard's
chart, each kind's last event, the bytes untagged images hold) reads the same before and after the last
prune, which is printed.

    python benchmarks/bench_retention.py [--events 1000000] [--every 100000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_worker_memory import PROJECTS, START, TTL, RegistryStandIn
from common import EventStream, config_dict

from daemon.config import ProjectSettings, Settings, settings_from_dict
from daemon.wiring import build_store, build_worker
from daemon.worker import PRUNE_EVERY

SPACING = 2.0  # simulated seconds between two events
CHUNK = 2_000
STEP = 60.0  # simulated seconds between two looks for work when a tick found none
TABLES = ("inbox", "pipelines", "push_records", "plans", "untags", "merge_requests", "refs")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings_for(db: Path, **sections: dict[str, Any]) -> Settings:
    """``bench_worker_memory``'s janitor (2h TTLs, a registry token) with these sections merged in."""
    raw = config_dict(PROJECTS, db_path=db, dry_run=False, registry_token="bench-registry-token")
    for project in raw["projects"]:
        project["tags"] = [dict(t, ttl=TTL) if "ttl" in t else t for t in project["tags"]]
    for key, values in sections.items():
        raw[key] = {**raw.get(key, {}), **values}
    return settings_from_dict(raw, environ={})


def totals(store, since: float) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {"events": store.event_counts(), "unusable": store.unusable_event_count(),
            "pushes": store.recorded_push_counts(), "untags": store.finished_untag_counts(),
            "projects": store.project_counters(), "chart": store.daily_created_untagged(since),
            "last_events": store.last_events(), "image_bytes": store.untagged_image_bytes(),
            "restored": store.restored_counts()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=100_000, help="print the sizes every this many events")
    args = parser.parse_args()

    import logging
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="bench-retention-"))
    db = workdir / "janitor.db"
    settings = settings_for(db, storage={"retention": {"events": "1d", "plans": "1d"}},
                            defaults={"max_tags_per_plan": 10_000})  # no plan waits for an admin
    store = build_store(settings)
    clock = Clock(START)
    registry = RegistryStandIn()

    def registries(project_path: str, project: ProjectSettings) -> RegistryStandIn:
        return registry

    worker = build_worker(settings, store, registries=registries, clock=clock)
    assert worker.pruner is not None
    poll = settings.worker.poll_interval
    next_prune = START + PRUNE_EVERY
    sizes: list[tuple[int, int]] = []
    stream = EventStream(PROJECTS, start=START).deliveries(args.events)
    started = time.perf_counter()
    fed = 0
    pruned_total: dict[str, int] = {}
    before = after = None
    try:
        while fed < args.events:
            with store.transaction():
                for _ in range(min(CHUNK, args.events - fed)):
                    d = next(stream)
                    store.add_event(delivery_key=f"gitlab:{d.project_path}:idempotency-key:{d.key}", source="gitlab",
                                    kind=d.kind, project_path=d.project_path,
                                    headers={"X-Gitlab-Event": d.header, "Idempotency-Key": d.key},
                                    body=d.body, received_at=START + fed * SPACING)
                    fed += 1
            end = START + fed * SPACING
            last = fed >= args.events
            # The chunk's simulated time as the worker's scheduler spends it: a tick every poll interval
            # while it finds work (each runs at most 50 due plans), otherwise at the next step, and the
            # pruning job every PRUNE_EVERY seconds with its real budget.
            while clock.now < end:
                clock.now = min(clock.now + STEP, end)
                while any(worker.tick().values()):
                    clock.now = min(clock.now + poll, end)
                if clock.now >= next_prune or (last and clock.now >= end):
                    next_prune = clock.now + PRUNE_EVERY
                    if last and clock.now >= end:
                        before = totals(store, START)
                    for kind, n in worker.pruner.run().items():
                        pruned_total[kind] = pruned_total.get(kind, 0) + n
                    if last and clock.now >= end:
                        after = totals(store, START)
            if fed % args.every == 0 or last:
                q = store.db.execute
                pages, free = q("PRAGMA page_count").fetchone()[0], q("PRAGMA freelist_count").fetchone()[0]
                size = os.path.getsize(db)
                sizes.append((fed, size))
                rows = ", ".join(f"{t} {q(f'SELECT COUNT(*) FROM {t}').fetchone()[0]:,}" for t in TABLES)
                print(f"{fed:>9,} events  {time.perf_counter() - started:6.0f}s  file {size / 2**20:7.1f} MiB"
                      f"  pages {pages:,} (free {free:,})  rows: {rows}", flush=True)
    finally:
        store.close()
        shutil.rmtree(workdir, ignore_errors=True)

    print("pruned in all: " + ", ".join(f"{n:,} {kind}" for kind, n in pruned_total.items()))
    assert before is not None and after is not None
    same = before == after
    for name, shown in (("before", before), ("after", after)):
        untags = sum(n for _, _, n in shown["untags"])  # type: ignore[union-attr]
        pushes = sum(n for _, _, n in shown["pushes"])  # type: ignore[union-attr]
        print(f"totals {name} the last prune: {sum(n for _, _, n in shown['events']):,} events,"  # type: ignore[union-attr]
              f" {pushes:,} pushes recorded, {untags:,} untag outcomes")
    print(f"every total the same before and after the last prune: {'PASS' if same else 'FAIL'}")
    half = min(sizes, key=lambda s: abs(s[0] - args.events // 2))
    growth = (sizes[-1][1] - half[1]) / half[1]
    levels = growth < 0.10
    print(f"file growth from {half[0]:,} to {sizes[-1][0]:,} events: {growth:+.1%} of its size at {half[0]:,}"
          f" (target < +10%): {'PASS' if levels else 'FAIL'}")
    return 0 if same and levels else 1


if __name__ == "__main__":
    sys.exit(main())
