"""The processes as operators run them, with ``--log-format json``: every line on stderr is one JSON object,
gunicorn's own lines and the access log included, and no token a request carried is in it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import yaml
from support.janitor import SECRET, pipeline_hook

from daemon.demo.env import free_port

JOB_TOKEN = "job-token-e2e-5be1"
QUERY_SECRET = "query-secret-e2e-77c0"


def _config(tmp_path: Path, port: int) -> Path:
    config = {
        "storage": {"url": f"sqlite:///{tmp_path / 'janitor.db'}"},
        "server": {"bind": f"127.0.0.1:{port}", "admin_token": "admin-e2e"},
        "worker": {"poll_interval": "1s"},
        "projects": [{"path": "grp/app", "webhook_secret": SECRET}],
    }
    path = tmp_path / "janitor.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def _process(args: list[str], stderr: Path, url: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with stderr.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "daemon", *args], env={**os.environ, **env},
                                   start_new_session=True, stdout=subprocess.DEVNULL, stderr=sink)
        try:
            deadline = time.monotonic() + 20
            while not _up(url):
                assert process.poll() is None and time.monotonic() < deadline, stderr.read_text()[-2000:]
                time.sleep(0.05)
            yield process
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _records(stderr: Path) -> list[dict[str, Any]]:
    lines = stderr.read_text().splitlines()
    assert lines, "nothing was logged"
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not a JSON line: {line!r}") from exc
    return records


def test_the_web_process_writes_only_json_lines(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stderr = tmp_path / "stderr"
    config = _config(tmp_path, port)
    with _process(["web", "--config", str(config), "--log-format", "json"], stderr, url,
                  {"JANITOR_WEB_WORKERS": "1", "JANITOR_LOG_LEVEL": "INFO"}):
        hooked = requests.post(f"{url}/webhooks/gitlab?token={QUERY_SECRET}",
                               json=pipeline_hook("grp/app", pipeline_id=3, ref="main"), timeout=10,
                               headers={"X-Gitlab-Event": "Pipeline Hook", "X-Gitlab-Token": SECRET,
                                        "X-Gitlab-Event-UUID": "uuid-e2e-3"})
        assert hooked.status_code == 202, hooked.text
        ci = requests.post(f"{url}/api/v1/ci/pushes", json={"image": "registry.example.com/grp/app:x"},
                           headers={"JOB-TOKEN": JOB_TOKEN}, timeout=10)
        assert ci.status_code >= 400  # no GitLab vouches for it here; the line is what is looked at
    records = _records(stderr)
    text = stderr.read_text()
    for secret in (SECRET, JOB_TOKEN, QUERY_SECRET):
        assert secret not in text, secret
    gunicorn = [r["message"] for r in records if r["logger"] == "gunicorn.error"]
    assert any(m.startswith("Starting gunicorn") for m in gunicorn), gunicorn
    assert any(m.startswith("Booting worker") for m in gunicorn), gunicorn
    access = [(r["method"], r["path"], r["status"]) for r in records if r["logger"] == "daemon.web.access"]
    assert access == [("POST", "/webhooks/gitlab", 202), ("POST", "/api/v1/ci/pushes", ci.status_code)]
    [stored] = [r for r in records if r["logger"] == "daemon.web.access" and r["path"] == "/webhooks/gitlab"]
    assert (stored["project"], stored["delivery"]) == ("grp/app", "uuid-e2e-3")
    assert stored["message"].endswith(": pipeline delivery stored")


def test_run_passes_the_json_format_to_its_web_and_worker(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stderr = tmp_path / "stderr"
    config = _config(tmp_path, port)
    with _process(["run", "--config", str(config)], stderr, url,
                  {"JANITOR_WEB_WORKERS": "1", "JANITOR_LOG_FORMAT": "json", "JANITOR_LOG_LEVEL": "INFO"}):
        deadline = time.monotonic() + 15
        while '"logger": "daemon.worker"' not in stderr.read_text():
            assert time.monotonic() < deadline, stderr.read_text()[-2000:]
            time.sleep(0.1)
    loggers = {r["logger"] for r in _records(stderr)}
    assert {"daemon.cli.process", "daemon.worker", "gunicorn.error"} <= loggers, loggers
