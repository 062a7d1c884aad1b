"""Worker memory after 100,000 events vs after 1,000, each in a fresh process.

SPEC 13: the worker's memory after 100,000 events is <= 1.3x its memory after 1,000. The inbox of a
real SQLite file (WAL) is filled with GitLab deliveries as an instance sends them (``EventStream``:
merge requests opened, updated, merged or closed, their pipelines pending -> running -> finished,
branch deletions, default-branch pushes and pipelines; about 65% pipeline, 20% merge request, 15% push
hooks over 20 projects, GitLab's documented payloads with their ids varied). A fresh process then runs
the real ``Worker.tick()`` on a simulated clock (a minute per tick while events wait, then long enough
for grace periods and TTLs to pass) until everything the events imply has been planned and carried out.

Registry calls are not what this measures: the projects have a registry token, but the worker is given
a registry stand-in object that answers at once, without network (every tag exists at a digest
derived from its name; untags succeed when that digest is the one expected). The real registry
client, its token cache and its session are not exercised here (``bench_untag.py`` drives them).

RSS is read from ``/proc/self/statm`` at the end and as the peak (``VmHWM``); the 100,000-event
run also prints its RSS every 10,000 events, to show a plateau or a slope. Exits 1 when the peak ratio
exceeds 1.3. Not part of pytest or ``.ci/run``.

    python benchmarks/bench_worker_memory.py [--events 100000] [--small 1000]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from common import EventStream, config_dict, verdict

from daemon.config import ProjectSettings, settings_from_dict
from daemon.registry.errors import NoDeletePermissionError
from daemon.registry.types import Manifest, OnSaved, UntagRequest, UntagResult

PROJECTS = 20
TTL = "2h"  # preview tags expire within the run, so TTL triggers fire too
START = 1_700_000_000.0
MAX_TICKS = 20_000


class RegistryStandIn:
    """A registry in which every tag exists at a digest derived from its name. Keeps no state."""

    @staticmethod
    def digest(repository: str, ref: str) -> str:
        return "sha256:" + hashlib.sha256(f"{repository}:{ref}".encode()).hexdigest()

    def head(self, repository: str, ref: str) -> str | None:
        return self.digest(repository, ref)

    def untag(self, requests_: Sequence[UntagRequest], *, method: str = "auto",
              dry_run: bool = False, on_saved: OnSaved | None = None) -> list[UntagResult]:
        out = []
        for r in requests_:
            if r.expected_digest != self.digest(r.repository, r.tag):
                out.append(UntagResult(r, "skipped", "superseded"))
                continue
            saved = Manifest(r.expected_digest, "application/vnd.oci.image.manifest.v1+json", b"{}")
            if not dry_run and on_saved is not None:  # kept before the write, as the real client does
                on_saved(r, saved, "placeholder")
            out.append(UntagResult(r, "dry_run" if dry_run else "done", method="placeholder", saved=saved))
        return out

    def get_manifest(self, repository: str, ref: str) -> Manifest | None:
        return Manifest(self.digest(repository, ref), "application/vnd.oci.image.manifest.v1+json", b"{}")

    def put_manifest(self, repository: str, ref: str, manifest: Manifest) -> str:
        return manifest.digest

    def tag_count(self, repository: str) -> int | None:
        return None

    def untag_refusal(self, repository: str, method: str = "auto") -> NoDeletePermissionError | None:
        return None

    def restore(self, repository: str, tag: str, manifest: Manifest) -> None:
        return None


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_kib() -> int:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries the spawning parent's peak
    into it across exec, and the parent here has just filled an inbox."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def settings_for(db: Path):  # type: ignore[no-untyped-def]
    raw = config_dict(PROJECTS, db_path=db, dry_run=False, registry_token="bench-registry-token")
    for project in raw["projects"]:
        project["tags"] = [dict(t, ttl=TTL) if "ttl" in t else t for t in project["tags"]]
    return settings_from_dict(raw, environ={})


def feed(db: Path, events: int) -> None:
    """Store ``events`` deliveries in the inbox as the web does (one row each), in one transaction."""
    from daemon.wiring import build_store

    build_store(settings_for(db)).close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    rows = []
    for n, d in enumerate(EventStream(PROJECTS, start=START).deliveries(events)):
        headers = {"X-Gitlab-Event": d.header, "Idempotency-Key": d.key, "Content-Type": "application/json"}
        rows.append((f"gitlab:idempotency-key:{d.key}", "gitlab", d.kind, d.project_path, json.dumps(headers),
                     d.body, START + n * 2.0))
        if len(rows) == 5000:
            conn.executemany("INSERT INTO inbox (delivery_key, source, kind, project_path, headers, body,"
                             " received_at) VALUES (?,?,?,?,?,?,?)", rows)
            rows = []
    conn.executemany("INSERT INTO inbox (delivery_key, source, kind, project_path, headers, body, received_at)"
                     " VALUES (?,?,?,?,?,?,?)", rows)
    conn.execute("COMMIT")
    conn.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def work(db: Path, events: int) -> dict[str, object]:
    """The worker's side, in this (fresh) process: tick until the events and their consequences are done."""
    import logging

    from daemon.wiring import build_store, build_worker

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = settings_for(db)
    store = build_store(settings)
    clock = Clock(START)
    registry = RegistryStandIn()

    def registries(project_path: str, project: ProjectSettings) -> RegistryStandIn:
        return registry

    worker = build_worker(settings, store, registries=registries, clock=clock)
    baseline = rss_kib()
    curve: list[tuple[int, int]] = []
    done = ticks = plans = 0
    next_mark = 10_000
    started = time.perf_counter()
    while store.queue_depth():
        counts = worker.tick()
        ticks += 1
        done += counts["events"]
        plans += counts["plans"]
        clock.now += 60
        if done >= next_mark:
            curve.append((done, rss_kib()))
            next_mark += 10_000
    # Then time passes (five minutes a tick) until grace periods, TTLs and the hourly budget have run
    # their course: every plan the events implied has run, except those held for an admin.
    drained_at = clock.now
    while ticks < MAX_TICKS and (clock.now < drained_at + 6 * 3600 or store.due_plans(clock.now + 3600, limit=1)):
        counts = worker.tick()
        ticks += 1
        plans += counts["plans"]
        clock.now += 300
    gc.collect()
    states = dict(store.db.execute("SELECT state, COUNT(*) FROM plans GROUP BY 1").fetchall())
    return {"events": done, "ticks": ticks, "plans_run": plans, "plans": states,
            "records": store.db.execute("SELECT COUNT(*) FROM push_records").fetchone()[0],
            "seconds": round(time.perf_counter() - started, 1), "rss_start_kib": baseline,
            "rss_kib": rss_kib(), "peak_kib": peak_kib(), "curve": curve, "objects": len(gc.get_objects())}


def run_child(db: Path, events: int) -> dict[str, object]:
    out = subprocess.run([sys.executable, __file__, "--work", str(db), "--events", str(events)],
                         capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"worker run failed ({out.returncode}):\n{out.stdout}\n{out.stderr[-3000:]}")
    result: dict[str, object] = json.loads(line.removeprefix("RESULT "))
    result["warnings"] = sum(1 for x in out.stderr.splitlines() if x.startswith("WARNING"))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events in the big run")
    parser.add_argument("--small", type=int, default=1_000, help="events in the small run")
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)  # the child's side
    args = parser.parse_args()
    if args.work:
        print("RESULT " + json.dumps(work(args.work, args.events)))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="bench-worker-memory-"))
    results = {}
    try:
        for events in (args.small, args.events):
            db = workdir / f"janitor-{events}.db"
            started = time.perf_counter()
            feed(db, events)
            fed = time.perf_counter() - started
            results[events] = run_child(db, events)
            r = results[events]
            print(f"{events:>7,} events (fed in {fed:.0f}s, worked in {r['seconds']}s, {r['ticks']} ticks): "
                  f"{r['records']:,} push records, plans {r['plans']}; "
                  f"RSS {r['rss_kib'] / 1024:.1f} MiB (after setup {r['rss_start_kib'] / 1024:.1f}), "
                  f"peak {r['peak_kib'] / 1024:.1f} MiB, {r['objects']:,} Python objects")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    small, big = results[args.small], results[args.events]
    curve = big["curve"]
    assert isinstance(curve, list)
    print("RSS along the big run: " + ", ".join(f"{n // 1000}k {kib / 1024:.1f}" for n, kib in curve) + " MiB")
    verdict("RSS at the end, big / small", int(big["rss_kib"]) / int(small["rss_kib"]), 1.3, at_most=True)  # type: ignore[call-overload]
    ok = verdict("peak RSS, big / small", int(big["peak_kib"]) / int(small["peak_kib"]), 1.3, at_most=True)  # type: ignore[call-overload]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
