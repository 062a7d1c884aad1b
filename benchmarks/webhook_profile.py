"""Where a webhook's time goes: ``registry-janitor web`` under gunicorn with ``daemon.server.gunicorn_options``
(the same options as the measured rounds), each request timed by stage, for ``bench_webhooks.py``.

Every worker process wraps the stages of ``POST /webhooks/gitlab`` and records per stage its wall time and
the CPU time of the thread that ran it (``time.thread_time``): wall minus CPU is time spent waiting (for
the write lock, the disk, another thread holding the GIL). With ``--cprofile`` each request thread also
runs under ``cProfile``. A worker writes what it recorded to ``OUT/<pid>.json`` (and ``.prof``) when it
exits; :func:`report` adds the files up and prints them. ``cProfile`` counts each thread's CPU time, so that
its functions show what they cost, not how long they waited.

    python benchmarks/webhook_profile.py --config FILE --out DIR [--cprofile]

The stages wrap functions by name, so the timed build is the code under test, not a copy of it; the
timing itself costs a few microseconds per stage, and ``cProfile`` far more (its figures are for
comparing functions with each other, not with the measured rounds).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import pstats
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from daemon.config import load_settings
from daemon.server import gunicorn_options
from daemon.wiring import build_app

#: (label, module, attribute): what each stage wraps. Nested stages are also counted in the outer ones.
STAGES = (
    ("JSON parse (load_json)", "daemon.web.webhooks", "load_json"),
    ("strict parse (parse_gitlab)", "daemon.web.webhooks", "parse_gitlab"),
    ("delivery keys", "daemon.web.webhooks", "gitlab_delivery_keys"),
    ("store: add_event (queue, turn, write)", "daemon.store.inbox", "InboxStore.add_event"),
    ("store: write of one batch", "daemon.store.inbox", "InboxStore._write_batch"),
)
REQUEST = "whole request in the app (WSGI call)"


class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stages: dict[str, list[float]] = {}  # label -> [calls, wall seconds, cpu seconds]
        self.batch_sizes: dict[int, int] = {}
        self.local = threading.local()
        self.profiles: list[cProfile.Profile] = []

    def add(self, label: str, wall: float, cpu: float) -> None:
        with self.lock:
            entry = self.stages.setdefault(label, [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += wall
            entry[2] += cpu

    def dump(self, out: Path) -> None:
        with self.lock:
            data = {"stages": self.stages, "batch_sizes": self.batch_sizes}
        (out / f"{os.getpid()}.json").write_text(json.dumps(data))
        if self.profiles:
            merged: pstats.Stats | None = None
            for profile in self.profiles:
                profile.create_stats()
                if merged is None:
                    merged = pstats.Stats(profile)
                else:
                    merged.add(profile)
            if merged is not None:
                merged.dump_stats(str(out / f"{os.getpid()}.prof"))


TALLY = _Tally()


def _timed(label: str, func: Callable[..., Any], *, batches: bool = False) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return func(*args, **kwargs)
        finally:
            TALLY.add(label, time.perf_counter() - wall, time.thread_time() - cpu)
            if batches:
                size = len(args[-1])  # the batch
                with TALLY.lock:
                    TALLY.batch_sizes[size] = TALLY.batch_sizes.get(size, 0) + 1
    return wrapper


def instrument() -> None:
    import importlib

    for label, module_name, attribute in STAGES:
        owner: Any = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, _timed(label, getattr(owner, name), batches=name == "_write_batch"))


def _wsgi(app: Flask, cprofile: bool) -> Callable[..., Any]:
    inner = app.wsgi_app

    def timed(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        profile = None
        if cprofile:
            profile = getattr(TALLY.local, "profile", None)
            if profile is None:
                profile = TALLY.local.profile = cProfile.Profile(time.thread_time)
                with TALLY.lock:
                    TALLY.profiles.append(profile)
            profile.enable()
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return inner(environ, start_response)
        finally:
            TALLY.add(REQUEST, time.perf_counter() - wall, time.thread_time() - cpu)
            if profile is not None:
                profile.disable()
    return timed


class _ProfiledGunicorn(BaseApplication):
    def __init__(self, config: str, out: Path, cprofile: bool) -> None:
        self.settings = load_settings(config)
        self.out = out
        self.cprofile = cprofile
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)
        out = self.out
        self.cfg.set("worker_exit", lambda server, worker: TALLY.dump(out))

    def load(self) -> Flask:
        instrument()
        app = build_app(self.settings)
        app.wsgi_app = _wsgi(app, self.cprofile)  # type: ignore[method-assign]
        return app


def report(out: Path, *, cprofile: bool, top: int = 25) -> None:
    """Print the stages the workers recorded in ``out``, per request, and with ``cprofile`` the functions
    that took the most time of their own."""
    stages: dict[str, list[float]] = {}
    batch_sizes: dict[int, int] = {}
    for path in sorted(out.glob("*.json")):
        data = json.loads(path.read_text())
        for label, (calls, wall, cpu) in data["stages"].items():
            entry = stages.setdefault(label, [0, 0.0, 0.0])
            entry[0] += calls
            entry[1] += wall
            entry[2] += cpu
        for size, count in data["batch_sizes"].items():
            batch_sizes[int(size)] = batch_sizes.get(int(size), 0) + count
    requests = stages.get(REQUEST, [0])[0]
    if not requests:
        print("profile: no request was recorded")
        return
    print(f"where a webhook's time goes ({requests} requests, {len(list(out.glob('*.json')))} workers; "
          "per request, microseconds):")
    print(f"  {'stage':44} {'calls/req':>9} {'wall':>8} {'cpu':>8} {'waiting':>8}")
    for label in [REQUEST] + [s[0] for s in STAGES]:
        if label not in stages:
            continue
        calls, wall, cpu = stages[label]
        print(f"  {label:44} {calls / requests:9.2f} {wall / requests * 1e6:8.0f} {cpu / requests * 1e6:8.0f}"
              f" {(wall - cpu) / requests * 1e6:8.0f}")
    if batch_sizes:
        total = sum(batch_sizes.values())
        mean = sum(size * count for size, count in batch_sizes.items()) / total
        print(f"  batches written: {total}, deliveries per batch: mean {mean:.2f}, max {max(batch_sizes)}")
    if cprofile:
        profiles = sorted(out.glob("*.prof"))
        if profiles:
            stats = pstats.Stats(str(profiles[0]))
            for path in profiles[1:]:
                stats.add(str(path))
            print(f"cProfile of the request threads, in CPU time (every worker; top {top} by own time):")
            stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the janitor config")
    parser.add_argument("--out", required=True, type=Path, help="directory for each worker's figures")
    parser.add_argument("--cprofile", action="store_true", help="also run each request under cProfile")
    args = parser.parse_args()
    os.environ["JANITOR_CONFIG"] = args.config
    _ProfiledGunicorn(args.config, args.out, args.cprofile).run()


if __name__ == "__main__":
    main()
