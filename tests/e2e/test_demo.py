"""`registry-janitor demo`: the whole story on this machine, run as a user runs it, and what it leaves
behind (nothing: no registry process, no temporary folder), whether it ends normally, by Ctrl-C, by
SIGTERM mid-story, or on a failed expectation."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from click.testing import CliRunner

from daemon.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "daemon", "demo"]


def _registry_processes(workdir: str) -> list[int]:
    """Live docker-registry processes started for this demo's folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "docker-registry" in cmdline and workdir in cmdline:
            found.append(int(entry.name))
    return found


def _stage_of(output: str) -> tuple[str, int]:
    workdir = re.search(r"Setting up in (\S+) ", output)
    pid = re.search(r"docker-registry on http://127\.0\.0\.1:\d+ \(pid (\d+)\)", output)
    assert workdir and pid, output
    return workdir.group(1), int(pid.group(1))


def _assert_nothing_left(output: str) -> None:
    workdir, pid = _stage_of(output)
    assert _registry_processes(workdir) == [], f"docker-registry still running for {workdir}"
    assert not Path(f"/proc/{pid}").exists() or "docker-registry" not in Path(f"/proc/{pid}/cmdline").read_text()
    assert not Path(workdir).exists(), f"{workdir} was not removed"


class Running:
    """The demo as a child process whose output lines can be awaited."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*DEMO, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_line(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if line.strip().startswith(prefix):
                return line
        raise AssertionError(f"no line starting {prefix!r}; output so far:\n{self.output}")

    def finish(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout)
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_demo_no_wait_plays_the_story_and_leaves_nothing_behind():
    started = time.monotonic()
    done = subprocess.run([*DEMO, "--no-wait"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for line in [
        "pushed demo/app@sha256:",
        "ok  all three tags point at the same image",
        "POST /webhooks/gitlab (Pipeline Hook) -> 202 stored",
        "ok  ledger: pipeline 1001 pushed mr-42",
        "POST /webhooks/gitlab (Merge Request Hook) -> 202 stored",
        "ok  plan #1 (merge_request_merged) is scheduled",
        "ok  mr-42 is still there during the grace period",
        "grace period (5s; ",
        "ok  tags of demo/app: mr-42 is gone",
        "ok  release-candidate and main still point at sha256:",
        "ok  the image itself was not deleted",
        "audit: untag #1 demo/app:mr-42 done by",
        "Every expectation held (14 checks)",
        "Cleaned up: registry (pid",
    ]:
        assert line in out, f"missing {line!r} in:\n{out}"
    assert "FAILED" not in out + done.stderr and "Traceback" not in done.stderr
    assert "Press Ctrl-C" not in out
    _assert_nothing_left(out)
    assert elapsed < 30, f"the demo took {elapsed:.1f}s"  # about 6 s; generous for a loaded CI machine


def test_demo_keeps_serving_until_ctrl_c_then_cleans_up():
    demo = Running()
    try:
        demo.wait_line("Every expectation held")
        demo.wait_line("The janitor keeps running")
        url = demo.wait_line("").split()[1]  # the next line: "dashboard <url>" (or status, health)
        demo.wait_line("Press Ctrl-C")
        token = re.search(r"curl -u demo:(\S+) ", demo.output)
        auth = ("demo", token.group(1)) if token else None
        assert requests.get(url, auth=auth, timeout=5).status_code == 200
        workdir, _ = _stage_of(demo.output)
        assert _registry_processes(workdir), "the registry should still serve while the demo waits"
        demo.proc.send_signal(signal.SIGINT)
        assert demo.finish() == 0, demo.output
    finally:
        demo.kill()
    assert "Stopping." in demo.output
    _assert_nothing_left(demo.output)


def test_sigterm_mid_story_stops_everything():
    demo = Running("--no-wait")
    try:
        demo.wait_line("3. Merge request !42 is merged")
        demo.proc.send_signal(signal.SIGTERM)
        assert demo.finish() == 143, demo.output
    finally:
        demo.kill()
    assert "Interrupted before the story ended." in demo.output
    _assert_nothing_left(demo.output)


def test_missing_registry_binary_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr("daemon.demo.env.REGISTRY_BINARY", str(tmp_path / "docker-registry"))
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(main, ["demo", "--no-wait"])
    assert result.exit_code == 2
    assert "apt-get install -y docker-registry" in result.output
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback


def test_a_failed_expectation_exits_1_with_what_differed_and_cleans_up(monkeypatch):
    """A registry that stores `main` as another image breaks the story's first expectation."""
    import daemon.demo.story as story

    real_push = story.push_image

    def push_then_repoint_main(session, base, repo, tags):
        digest = real_push(session, base, repo, tags)
        real_push(session, base, repo, ["main"])
        return digest

    monkeypatch.setattr(story, "push_image", push_then_repoint_main)
    result = CliRunner().invoke(main, ["demo", "--no-wait"])
    assert result.exit_code == 1, result.output
    assert "FAILED  all three tags point at the same image" in result.output
    assert "expected:" in result.output and "got:" in result.output
    _assert_nothing_left(result.output)

