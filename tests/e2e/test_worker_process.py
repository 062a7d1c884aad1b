"""The worker as operators run it: a process that keeps ticking until SIGTERM."""

import signal
import subprocess
import sys
import time

import yaml

from daemon.config import load_settings
from daemon.domain.policy import HEARTBEAT_KEY
from daemon.wiring import build_store


def test_worker_keeps_ticking_and_stops_on_sigterm(tmp_path):
    db = tmp_path / "janitor.db"
    config = tmp_path / "janitor.yaml"
    config.write_text(yaml.safe_dump({"storage": {"url": f"sqlite:///{db}"}, "worker": {"poll_interval": "1s"}}))
    worker = subprocess.Popen([sys.executable, "-m", "daemon", "worker", "--config", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        beats: set[str] = set()
        deadline = time.monotonic() + 15
        while len(beats) < 3 and time.monotonic() < deadline:
            if db.exists():
                store = build_store(load_settings(config))
                value = store.get_value(HEARTBEAT_KEY)
                store.close()
                if value:
                    beats.add(value)
            time.sleep(0.2)
        assert len(beats) >= 3, f"the worker ticked {len(beats)} time(s) in 15s with poll_interval 1s"
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=10)
    assert code == 0, worker.stderr.read().decode()[-2000:] if worker.stderr else code


def test_branch_lookup_never_calls_a_branch_deleted_when_the_token_cannot_see_the_project(gitlab):
    from daemon.gitlab.api import GitLab

    mine = gitlab.add_project("grp-look/mine")
    other = gitlab.add_project("grp-look/other")
    gitlab.add_branch(mine, "alive")
    client = GitLab(gitlab.url)
    assert client.branch_exists(mine.path, "alive", mine.token) is True
    assert client.branch_exists(mine.path, "gone", mine.token) is False
    assert client.branch_exists(mine.path, "alive-too", other.token) is None  # 404 for all: unknown, not dead
