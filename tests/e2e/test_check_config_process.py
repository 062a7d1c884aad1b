"""``python -m daemon check-config`` as a process: a bad config exits 2 with every problem and no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest


def test_cli_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "janitor.yaml"
    bad.write_text("registry: {untag_method: nuke}\nprojects: [{path: g/a}]\n")
    proc = subprocess.run([sys.executable, "-m", "daemon", "check-config", "--config", str(bad)],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "registry.untag_method" in proc.stderr and "projects[0].webhook_secret" in proc.stderr
    assert "Traceback" not in proc.stderr



REPO = Path(__file__).resolve().parents[2]
SHIPPED = str(REPO / "config" / "janitor.yaml")


@pytest.mark.parametrize("command", ["check-config", "run", "web"])
def test_the_shipped_placeholder_secrets_stop_a_janitor_listening_beyond_loopback(command):
    env = {"PATH": "/usr/bin:/bin", "JANITOR_BIND": "0.0.0.0:8080"}
    proc = subprocess.run([sys.executable, "-m", "daemon", command, "--config", SHIPPED],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for key, var in (("server.admin_token", "JANITOR_ADMIN_TOKEN"),
                     ("projects[0].webhook_secret", "APP_WEBHOOK_SECRET")):
        assert f"{key}:" in proc.stderr and var in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_shipped_config_is_ok_on_loopback():
    proc = subprocess.run([sys.executable, "-m", "daemon", "check-config", "--config", SHIPPED],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and "config OK" in proc.stdout, proc.stdout + proc.stderr
