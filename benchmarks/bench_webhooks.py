"""Webhook intake: ``POST /webhooks/gitlab`` against a bare Flask route returning 204, same gunicorn settings.

SPEC 13: the janitor's sustained throughput must reach >= 0.6x the bare route's, with every 2xx durable
(S9). Both apps run under gunicorn with ``daemon.server.gunicorn_options`` of one config file (the
janitor as ``registry-janitor web``, the baseline from ``bare_webhook_app.py``); ``wrk`` drives them in
alternating rounds with a Lua script sending GitLab's documented pipeline, merge request and push
payloads (about 65/20/15), each with its own ``Idempotency-Key`` and ids, spread over many projects,
each project with its own secret. Throughput is 2xx answers per second.

Durability: after the last round a Python client sends a batch whose every answer it records, then
every janitor process is killed with SIGKILL at once; the inbox must hold exactly the deliveries
answered 2xx in that batch, and for the wrk rounds at least every 2xx (wrk abandons the requests still
in flight when its time is up, so up to one per connection may be stored without wrk seeing the answer).
Prints throughputs, the ratio and the durability counts; exits 1 when a target is missed. Then, in a run
of its own that is not measured, where a webhook's time goes: the janitor again under the same options,
each stage timed by ``webhook_profile.py`` (``--profile`` adds a ``cProfile`` of the request threads).
Not part of pytest or ``.ci/run``.

    python benchmarks/bench_webhooks.py [--duration 10] [--rounds 3] [--connections 16] [--profile]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from common import (
    REPO,
    config_dict,
    free_port,
    merge_request_template,
    pipeline_template,
    project_path,
    push_template,
    verdict,
    wait_for_port,
    webhook_secret,
)
from webhook_profile import report

from daemon.config import load_settings
from daemon.wiring import build_store

LUA = r"""
local templates = { pipeline = [==[{pipeline}]==], merge_request = [==[{merge_request}]==],
                    push = [==[{push}]==] }
local projects = {projects}
local run = {run}
local actions = { {"open", "opened"}, {"update", "opened"}, {"merge", "merged"}, {"close", "closed"} }
local statuses = { "pending", "running", "success", "failed" }
local zero = string.rep("0", 40)
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  sent, ok, other = 0, 0, 0
end

function request()
  sent = sent + 1
  local n = sent
  local uid = string.format("%.0f", run * 1e11 + tid * 1e9 + n)
  local p = n % projects
  local slot = n % 20
  local v = { ID = uid, IID = n, MR_ID = uid, MR_IID = n, PROJECT_ID = 1000 + p,
              PATH = "bench/app-" .. p, REF = "feature/" .. uid,
              SHA = string.format("%08x%032x", n * 2654435761 % 4294967296, n),
              CREATED = "2024-05-01 12:00:00 UTC", STATUS = statuses[n % 4 + 1] }
  local body, event
  if slot < 13 then
    event, body = "Pipeline Hook", string.gsub(templates.pipeline, "{{(%u[%u_]*)}}", v)
  elseif slot < 17 then
    local a = actions[n % 4 + 1]
    v.ACTION, v.STATE = a[1], a[2]
    event, body = "Merge Request Hook", string.gsub(templates.merge_request, "{{(%u[%u_]*)}}", v)
  else
    v.AFTER = (n % 3 == 0) and zero or string.format("%040x", n)
    event, body = "Push Hook", string.gsub(templates.push, "{{(%u[%u_]*)}}", v)
  end
  local key = "wrk-" .. uid
  return wrk.format("POST", "/webhooks/gitlab", {
    ["Content-Type"] = "application/json", ["X-Gitlab-Event"] = event,
    ["X-Gitlab-Token"] = "bench-secret-" .. p, ["Idempotency-Key"] = key,
    ["X-Gitlab-Event-UUID"] = key }, body)
end

function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local s, o, x = 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("sent"); o = o + t:get("ok"); x = x + t:get("other")
  end
  local e = summary.errors
  io.write(string.format('RESULT {"sent": %d, "ok": %d, "other": %d, "duration_us": %d, ' ..
    '"socket_errors": %d, "p99_ms": %.2f}\n', s, o, x, summary.duration,
    e.connect + e.read + e.write + e.timeout, latency:percentile(99) / 1000))
end
"""


def lua_script(workdir: Path, run: int, projects: int) -> Path:
    script = LUA
    for name, value in (("{pipeline}", pipeline_template()), ("{merge_request}", merge_request_template()),
                        ("{push}", push_template()), ("{projects}", str(projects)), ("{run}", str(run))):
        script = script.replace(name, value)
    path = workdir / f"load-{run}.lua"
    path.write_text(script)
    return path


def wrk(port: int, script: Path, seconds: float, connections: int, threads: int) -> dict[str, float]:
    done = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "10s", "-s", str(script),
         f"http://127.0.0.1:{port}/webhooks/gitlab"], capture_output=True, text=True)
    out = done.stdout
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    result = json.loads(line.removeprefix("RESULT "))
    result["rate"] = result["ok"] / (result["duration_us"] / 1e6)
    return result


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of every live process in process group ``pgid`` (a gunicorn and its workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measured(port: int, pgid: int, script: Path, seconds: float, connections: int,
             threads: int) -> dict[str, float]:
    """A wrk run, with the server's CPU time per 2xx answer."""
    before = group_cpu_seconds(pgid)
    result = wrk(port, script, seconds, connections, threads)
    result["cpu_us"] = (group_cpu_seconds(pgid) - before) / max(result["ok"], 1) * 1e6
    return result


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """A server in its own process group, so that every process of it can be killed at once."""
    env = {**os.environ, "JANITOR_LOG_LEVEL": "WARNING"}
    for name in ("GUNICORN_CMD_ARGS", "JANITOR_ACCESS_LOG"):
        env.pop(name, None)
    with log.open("ab") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=sink, start_new_session=True)
    wait_for_port(port, proc)
    return proc


def exact_batch(port: int, projects: int, count: int, workers: int, first: int = 0) -> tuple[set[str], int]:
    """Send ``count`` pipeline hooks (numbered from ``first``, each its own body and delivery key) from
    ``workers`` keep-alive connections, waiting for every answer. Returns the delivery keys answered 2xx and
    how many got anything else."""
    template = pipeline_template()
    answered: set[str] = set()
    failed = [0]
    lock = threading.Lock()

    def send(worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for n in range(first + worker, first + count, workers):
            p = n % projects
            key = f"exact-{n}"
            values = {"ID": 9_000_000_000 + n, "IID": n + 1, "MR_ID": n + 1, "MR_IID": n + 1, "PROJECT_ID": 1000 + p,
                      "PATH": project_path(p), "REF": f"exact/{n}", "SHA": f"{n:040x}",
                      "CREATED": "2024-05-01 12:00:00 UTC", "STATUS": "success"}
            body = template
            for name, value in values.items():
                body = body.replace(f"{{{{{name}}}}}", str(value))
            conn.request("POST", "/webhooks/gitlab", body=body.encode(), headers={
                "Content-Type": "application/json", "X-Gitlab-Event": "Pipeline Hook",
                "X-Gitlab-Token": webhook_secret(p), "Idempotency-Key": key})
            response = conn.getresponse()
            response.read()
            with lock:
                if 200 <= response.status < 300:
                    answered.add(key)
                else:
                    failed[0] += 1
        conn.close()

    pool = [threading.Thread(target=send, args=(w,)) for w in range(workers)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return answered, failed[0]


def inbox_keys(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT delivery_key FROM inbox")]
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds of load per app per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/janitor rounds")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--projects", type=int, default=20, help="configured projects, one secret each")
    parser.add_argument("--exact", type=int, default=2000, help="deliveries in the SIGKILL durability batch")
    parser.add_argument("--profile-seconds", type=float, default=5,
                        help="seconds of load for the stage timings printed at the end (0: none)")
    parser.add_argument("--profile", action="store_true",
                        help="also run each request under cProfile and print the costliest functions")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    db = workdir / "janitor.db"
    janitor_port, bare_port = free_port(), free_port()
    config = workdir / "janitor.yaml"
    config.write_text(json.dumps(config_dict(args.projects, db_path=db, bind=f"127.0.0.1:{janitor_port}")))
    build_store(load_settings(config, environ={})).close()  # create and migrate once, as `registry-janitor run` does
    log = workdir / "servers.log"
    janitor = bare = None
    bare_rates: list[float] = []
    janitor_rates: list[float] = []
    bare_cpu: list[float] = []
    janitor_cpu: list[float] = []
    wrk_sent = wrk_ok = wrk_other = wrk_socket_errors = 0
    p99: list[float] = []
    try:
        janitor = start([sys.executable, "-m", "daemon", "web", "--config", str(config)], janitor_port, log)
        bare = start([sys.executable, str(REPO / "benchmarks" / "bare_webhook_app.py"), "--config", str(config),
                      "--bind", f"127.0.0.1:{bare_port}"], bare_port, log)
        conn, thr = args.connections, args.threads
        for run, (port, seconds) in enumerate(((bare_port, 2.0), (janitor_port, 2.0))):  # warm both up
            result = wrk(port, lua_script(workdir, run, args.projects), seconds, conn, thr)
            if port == janitor_port:
                wrk_sent, wrk_ok, wrk_other = result["sent"], result["ok"], result["other"]
                wrk_socket_errors += result["socket_errors"]
        for n in range(args.rounds):
            result = measured(bare_port, bare.pid, lua_script(workdir, 10 + 2 * n, args.projects), args.duration,
                              conn, thr)
            bare_rates.append(result["rate"])
            bare_cpu.append(result["cpu_us"])
            result = measured(janitor_port, janitor.pid, lua_script(workdir, 11 + 2 * n, args.projects),
                              args.duration, conn, thr)
            janitor_rates.append(result["rate"])
            janitor_cpu.append(result["cpu_us"])
            wrk_sent, wrk_ok, wrk_other = wrk_sent + result["sent"], wrk_ok + result["ok"], wrk_other + result["other"]
            wrk_socket_errors += result["socket_errors"]
            p99.append(result["p99_ms"])
        answered, refused = exact_batch(janitor_port, args.projects, args.exact, workers=8)
        os.killpg(janitor.pid, signal.SIGKILL)  # S9: every janitor process, at once, right after the answers
        janitor.wait()
        janitor = None
        keys = inbox_keys(db)
        os.killpg(bare.pid, signal.SIGTERM)
        bare.wait(timeout=15)
        bare = None
        if args.profile_seconds > 0:
            profiled = workdir / "profile"
            profiled.mkdir()
            janitor = start([sys.executable, str(REPO / "benchmarks" / "webhook_profile.py"), "--config", str(config),
                             "--out", str(profiled)] + (["--cprofile"] if args.profile else []), janitor_port, log)
            wrk(janitor_port, lua_script(workdir, 99, args.projects), args.profile_seconds, conn, thr)
            os.killpg(janitor.pid, signal.SIGTERM)  # workers write their figures as they exit
            janitor.wait(timeout=30)
            janitor = None
    finally:
        for proc in (janitor, bare):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)

    # Delivery keys are scoped by project: gitlab:<project>:idempotency-key:<key>.
    exact_keys = {k.rsplit(":", 1)[1] for k in keys if ":idempotency-key:exact-" in k}
    wrk_rows = sum(1 for k in keys if ":idempotency-key:wrk-" in k)

    bare_rate, janitor_rate = statistics.median(bare_rates), statistics.median(janitor_rates)
    print(f"bare Flask 204   {bare_rate:8.0f} req/s  (median of {args.rounds} x {args.duration:g}s, "
          f"{args.connections} connections: " + ", ".join(f"{r:.0f}" for r in bare_rates) + ")")
    print(f"janitor webhook  {janitor_rate:8.0f} req/s  (" + ", ".join(f"{r:.0f}" for r in janitor_rates)
          + "; p99 latency " + ", ".join(f"{x:.0f}" for x in p99) + " ms)")
    print(f"server CPU per answer: bare {statistics.median(bare_cpu):.0f} us, janitor "
          f"{statistics.median(janitor_cpu):.0f} us (gunicorn master and workers, user + system)")
    ok = verdict("janitor / bare", janitor_rate / bare_rate, 0.6)
    in_flight = wrk_sent - wrk_ok - wrk_other
    wrk_durable = wrk_ok <= wrk_rows <= wrk_ok + in_flight and wrk_other == 0 and wrk_socket_errors == 0
    print(f"wrk rounds: {wrk_ok} answered 2xx, {wrk_other} other, {wrk_socket_errors} socket errors, "
          f"{in_flight} abandoned in flight; inbox rows {wrk_rows}  {'PASS' if wrk_durable else 'FAIL'}")
    exact_durable = exact_keys == answered and refused == 0
    print(f"SIGKILL batch: {len(answered)} of {args.exact} answered 2xx, {refused} other; after SIGKILL the inbox "
          f"holds {len(exact_keys)} of them, {len(answered - exact_keys)} missing, {len(exact_keys - answered)} "
          f"unanswered  {'PASS' if exact_durable else 'FAIL'}")
    if args.profile_seconds > 0:
        print(f"\nprofile ({args.profile_seconds:g}s of the same load, instrumented: its figures are not comparable"
              " with the rates above)")
        report(workdir / "profile", cprofile=args.profile)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok and wrk_durable and exact_durable else 1


if __name__ == "__main__":
    sys.exit(main())
