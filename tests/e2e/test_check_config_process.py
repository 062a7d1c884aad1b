"""``python -m daemon check-config`` as a process: a bad config exits 2 with every problem and no traceback."""

import subprocess
import sys


def test_cli_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "janitor.yaml"
    bad.write_text("registry: {untag_method: nuke}\nprojects: [{path: g/a}]\n")
    proc = subprocess.run([sys.executable, "-m", "daemon", "check-config", "--config", str(bad)],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "registry.untag_method" in proc.stderr and "projects[0].webhook_secret" in proc.stderr
    assert "Traceback" not in proc.stderr
