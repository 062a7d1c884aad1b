"""Under gunicorn, as ``registry-janitor web`` serves: a header field over 8 KiB and a chunked body over
``server.max_body_bytes`` are answered by the app, in JSON (431, 413), not by gunicorn's HTML pages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests
import yaml
from support.janitor import SECRET

from daemon.demo.env import free_port


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("hostile-http")
    port = free_port()
    config = {
        "storage": {"url": f"sqlite:///{tmp_path / 'janitor.db'}"},
        "server": {"bind": f"127.0.0.1:{port}", "admin_token": "a", "max_body_bytes": 65536},
        "projects": [{"path": "grp/app", "webhook_secret": SECRET}],
    }
    (tmp_path / "janitor.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "JANITOR_WEB_WORKERS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "daemon", "web", "--config", str(tmp_path / "janitor.yaml")],
                               env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not _up(url):
            assert process.poll() is None and time.monotonic() < deadline, "the web process did not come up"
            time.sleep(0.05)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_a_header_field_over_8_kib_is_a_json_431(web):
    for size in (9_000, 60_000):
        r = requests.get(f"{web}/api/v1/status", headers={"X-Padding": "p" * size}, timeout=10)
        assert r.status_code == 431, r.text[:200]
        assert r.headers["Content-Type"] == "application/json"
        assert r.json()["error"] == "request_header_fields_too_large"


def test_a_chunked_body_over_max_body_bytes_is_a_json_413(web):
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    r = requests.post(f"{web}/webhooks/gitlab", data=chunks(), timeout=10,
                      headers={"X-Gitlab-Token": SECRET, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text[:200]
    assert r.json()["error"] == "payload_too_large"
