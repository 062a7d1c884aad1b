"""``check-config`` as a process refuses each config that would crash ``run`` (exit 2, the key path, no
traceback); durations print as written; a relative SQLite path lies next to the config file."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}  # the daemon package, run from any folder
PROJECT = {"path": "group/app", "webhook_secret": "s3cret"}


def janitor(command, config, cwd, timeout=60):
    return subprocess.run([sys.executable, "-m", "daemon", command, "--config", str(config)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)


def write(folder, raw):
    config = folder / "janitor.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config



@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(("raw", "key", "shown"), [
    ({"gitlab": {"url": "not-a-url"}}, "gitlab.url", "'not-a-url' is not an http(s) URL"),
    ({"server": {"bind": "127.0.0.1:99999"}}, "server.bind", "'127.0.0.1:99999' has port '99999'"),
    ({"projects": [PROJECT, {"path": "other/app", "webhook_secret": "x"}, {**PROJECT, "path": "Group/App"}]},
     "projects[2].path", "is already configured at projects[0]"),
    ({"projects": [{**PROJECT, "path": "group/my app"}]}, "projects[0].path", "'group/my app' is no GitLab"),
])
def test_a_config_that_would_crash_run_exits_2_with_its_key_path(tmp_path, command, raw, key, shown):
    proc = janitor(command, write(tmp_path, {"storage": {"url": "sqlite:///janitor.db"}, **raw}), REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{key}: " in proc.stderr and shown in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "janitor.db").exists()


def test_a_bad_default_is_reported_once_for_three_projects(tmp_path):
    raw = {"defaults": {"grace_period": "5x"},
           "projects": [{**PROJECT, "path": f"group/app{i}"} for i in range(3)]}
    proc = janitor("check-config", write(tmp_path, raw), tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("5x") == 1 and "defaults.grace_period: '5x' is not a duration" in proc.stderr
    assert "projects[" not in proc.stderr, proc.stderr


def test_durations_print_as_written(tmp_path):
    raw = {"defaults": {"grace_period": "14d"},
           "projects": [PROJECT, {**PROJECT, "path": "group/lib", "grace_period": "1h30m"}]}
    proc = janitor("check-config", write(tmp_path, raw), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "group/app: 0 tag pattern(s), dry-run, grace 14d" in proc.stdout
    assert "group/lib: 0 tag pattern(s), dry-run, grace 1h30m" in proc.stdout


def test_a_relative_sqlite_path_lies_next_to_the_config_file_wherever_it_runs_from(tmp_path):
    folder, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    config = write(folder, {"storage": {"url": "sqlite:///state.db"}, "worker": {"poll_interval": "1s"}})
    expected = folder.resolve() / "state.db"
    proc = janitor("check-config", Path("..") / "etc" / "janitor.yaml", elsewhere)
    assert proc.returncode == 0 and f"storage sqlite:///{expected}," in proc.stdout, proc.stdout + proc.stderr
    worker = subprocess.Popen([sys.executable, "-m", "daemon", "worker", "--config", str(config)],
                              env=ENV, cwd=elsewhere, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not expected.exists() and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert expected.exists(), "the worker made no ledger next to its config file"
        assert not (elsewhere / "state.db").exists()
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert "Traceback" not in err, err
