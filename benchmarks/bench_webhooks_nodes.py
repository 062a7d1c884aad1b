"""Webhook intake on one and two web nodes: SQLite one node, PostgreSQL one node and PostgreSQL two nodes,
each against the bare route with as many nodes, measured in one run (issue #16).

Every node is a ``registry-janitor web`` of its own (its own gunicorn, ``daemon.server.gunicorn_options``:
2 workers x 4 threads), on a port of its own; the bare route (``bare_webhook_app.py``) runs as one and as two
such gunicorns. The PostgreSQL server is a throwaway one (``tests/support/postgres.py``) started with
PostgreSQL's defaults for durability (fsync and synchronous commit on: every 2xx is on disk), one database
shared by both PostgreSQL nodes, migrated by the first to start. ``wrk`` sends the load of
``bench_webhooks.py`` (the same Lua script); on two nodes two ``wrk`` run at once, one per node, with half
the connections each, and their 2xx answers per second are summed. Each round measures every setup in
turn (bare 1, SQLite 1, PostgreSQL 1, bare 2, PostgreSQL 2); figures are medians over the rounds.

Both nodes run on this one machine: on a 2-core machine two nodes share the same two cores, so the second
node shows what PostgreSQL's shared store costs and allows, not what a second machine would add.

Durability on PostgreSQL: after the rounds a Python client sends a batch to each PostgreSQL node at once,
recording every answer, then both nodes are killed with SIGKILL at once; the database must hold exactly the
deliveries answered 2xx. For the wrk rounds each store must hold every 2xx answer (plus at most the requests
wrk abandoned in flight). Exits 1 when a ratio misses SPEC 13's 0.6x or durability fails. Not part of
pytest or ``.ci/run``.

    python benchmarks/bench_webhooks_nodes.py [--duration 10] [--rounds 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_webhooks import exact_batch, inbox_keys, lua_script, wrk
from bench_webhooks import start as start_server
from common import REPO, config_dict, free_port, verdict
from support.postgres import PostgresCluster

SETUPS = ("bare 1", "sqlite 1", "postgresql 1", "bare 2", "postgresql 2")
TARGET = 0.6  # SPEC 13: the janitor's webhook intake against the bare route


def pg_keys(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        return [r[0] for r in conn.execute("SELECT delivery_key FROM inbox")]


def load(ports: list[int], workdir: Path, run: int, projects: int, seconds: float, connections: int,
         threads: int) -> dict[str, float]:
    """wrk on every port at once, ``connections`` split between them; the results summed."""
    results: list[dict[str, float]] = [{} for _ in ports]
    errors: list[BaseException] = []
    share = max(1, connections // len(ports))
    per_wrk = max(1, min(share, threads // len(ports) or 1))

    def drive(i: int, port: int) -> None:
        try:
            results[i] = wrk(port, lua_script(workdir, run * 10 + i, projects), seconds, share, per_wrk)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    pool = [threading.Thread(target=drive, args=(i, p)) for i, p in enumerate(ports)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    total = {k: sum(r[k] for r in results) for k in ("sent", "ok", "other", "socket_errors", "rate")}
    total["p99_ms"] = max(r["p99_ms"] for r in results)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds of load per setup per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every setup")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections in all (split on 2 nodes)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads in all")
    parser.add_argument("--projects", type=int, default=20, help="configured projects, one secret each")
    parser.add_argument("--exact", type=int, default=2000, help="deliveries per node in the SIGKILL batch")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="bench-webhooks-nodes-"))
    log = workdir / "servers.log"
    cluster = PostgresCluster(durable=True).start()
    pg_url = cluster.create_database("bench_webhooks")
    db = workdir / "janitor.db"
    ports = {name: free_port() for name in ("bare-a", "bare-b", "sqlite", "pg-a", "pg-b")}

    def config(name: str, storage: str) -> Path:
        raw: dict[str, Any] = config_dict(args.projects, db_path=db, bind=f"127.0.0.1:{ports[name]}")
        raw["storage"] = {"url": storage}
        path = workdir / f"{name}.yaml"
        path.write_text(json.dumps(raw))
        return path

    servers: dict[str, subprocess.Popen[bytes]] = {}
    nodes = {"bare 1": ["bare-a"], "sqlite 1": ["sqlite"], "postgresql 1": ["pg-a"], "bare 2": ["bare-a", "bare-b"],
             "postgresql 2": ["pg-a", "pg-b"]}
    rates: dict[str, list[float]] = {s: [] for s in SETUPS}
    p99: dict[str, list[float]] = {s: [] for s in SETUPS}
    wrk_counts = {engine: {"sent": 0.0, "ok": 0.0, "other": 0.0, "socket_errors": 0.0}
                  for engine in ("sqlite", "postgresql")}
    try:
        for name in ("bare-a", "bare-b"):
            servers[name] = start_server([sys.executable, str(REPO / "benchmarks" / "bare_webhook_app.py"), "--config",
                                          str(config(name, f"sqlite:///{db}")), "--bind",
                                          f"127.0.0.1:{ports[name]}"], ports[name], log)
        for name, storage in (("sqlite", f"sqlite:///{db}"), ("pg-a", pg_url), ("pg-b", pg_url)):
            servers[name] = start_server([sys.executable, "-m", "daemon", "web", "--config",
                                          str(config(name, storage))], ports[name], log)
        conn, thr = args.connections, args.threads
        for n in range(args.rounds + 1):  # the first round warms every setup up and is not counted
            for s, setup in enumerate(SETUPS):
                result = load([ports[x] for x in nodes[setup]], workdir, 100 * n + s, args.projects,
                              2.0 if n == 0 else args.duration, conn, thr)
                engine = setup.split()[0]
                if engine in wrk_counts:
                    for key in wrk_counts[engine]:
                        wrk_counts[engine][key] += result[key]
                if n > 0:
                    rates[setup].append(result["rate"])
                    p99[setup].append(result["p99_ms"])

        batches: dict[str, tuple[set[str], int]] = {}

        def batch(name: str) -> None:
            first = 0 if name == "pg-a" else args.exact  # distinct bodies: the same body twice is one delivery
            batches[name] = exact_batch(ports[name], args.projects, args.exact, workers=8, first=first)

        senders = [threading.Thread(target=batch, args=(name,)) for name in ("pg-a", "pg-b")]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        for name in ("pg-a", "pg-b"):  # S9: every process of both nodes, right after the answers
            os.killpg(servers[name].pid, signal.SIGKILL)
        for name in ("pg-a", "pg-b"):
            servers.pop(name).wait()
        os.killpg(servers["sqlite"].pid, signal.SIGTERM)
        servers.pop("sqlite").wait(timeout=30)
        keys = {"sqlite": inbox_keys(db), "postgresql": pg_keys(pg_url)}
    finally:
        for proc in servers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
        cluster.stop()

    median = {s: statistics.median(rates[s]) for s in SETUPS}
    print(f"{args.rounds} rounds x {args.duration:g}s per setup, {args.connections} connections in all "
          f"({os.cpu_count()} CPUs on this machine run every node)")
    for setup in SETUPS:
        print(f"{setup:<13} {median[setup]:8.0f} req/s  (" + ", ".join(f"{r:.0f}" for r in rates[setup])
              + "; p99 " + ", ".join(f"{x:.0f}" for x in p99[setup]) + " ms)")
    ok = all([verdict("sqlite 1 node / bare 1 node", median["sqlite 1"] / median["bare 1"], TARGET),
              verdict("postgresql 1 node / bare 1 node", median["postgresql 1"] / median["bare 1"], TARGET),
              verdict("postgresql 2 nodes / bare 2 nodes", median["postgresql 2"] / median["bare 2"], TARGET)])
    print(f"postgresql 2 nodes / 1 node = {median['postgresql 2'] / median['postgresql 1']:.2f}x; "
          f"postgresql 1 node / sqlite 1 node = {median['postgresql 1'] / median['sqlite 1']:.2f}x")
    durable = True
    for engine, counts in wrk_counts.items():
        rows = sum(1 for k in keys[engine] if ":idempotency-key:wrk-" in k)
        in_flight = counts["sent"] - counts["ok"] - counts["other"]
        good = counts["ok"] <= rows <= counts["ok"] + in_flight and counts["other"] == counts["socket_errors"] == 0
        durable = durable and good
        print(f"wrk rounds on {engine}: {counts['ok']:.0f} answered 2xx, {counts['other']:.0f} other, "
              f"{counts['socket_errors']:.0f} socket errors, {in_flight:.0f} abandoned in flight; inbox rows {rows}  "
              f"{'PASS' if good else 'FAIL'}")
    stored = {k.rsplit(":", 1)[1] for k in keys["postgresql"] if ":idempotency-key:exact-" in k}
    answered = batches["pg-a"][0] | batches["pg-b"][0]
    refused = batches["pg-a"][1] + batches["pg-b"][1]
    good = stored == answered and refused == 0
    durable = durable and good
    print(f"SIGKILL of both PostgreSQL nodes: {len(answered)} of {2 * args.exact} answered 2xx, {refused} other; "
          f"the database holds {len(stored & answered)} of them, {len(answered - stored)} missing, "
          f"{len(stored - answered)} unanswered  {'PASS' if good else 'FAIL'}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok and durable else 1


if __name__ == "__main__":
    sys.exit(main())
