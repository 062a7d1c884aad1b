"""``registry-janitor demo``: the product's story played end to end on this machine, narrated.

A real ``docker-registry`` (no auth), a GitLab stand-in, an SQLite file in a temporary folder, the
janitor's own web app and worker (built by ``daemon.wiring``), the app served over HTTP and the worker
ticking in a thread. A CI
pipeline's image is pushed, GitLab's pipeline and merge request hooks are posted, and every expectation
is checked against the registry and the audit log. Owns the story and its narration only; the stage
(processes, servers and their settings) is in ``stage`` and ``env``, and every decision is the product's own code.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

import click

from daemon.demo.env import INSTALL_HINT, StageError, digest_of, find_registry_binary, list_tags, push_image
from daemon.demo.stage import GRACE_SECONDS, PROJECT, Stage, build_stage

MR_IID = 42
BRANCH = "feature/login"
PIPELINE_ID = 1001
MR_TAG, SIBLING, MAIN = f"mr-{MR_IID}", "release-candidate", "main"
T = TypeVar("T")


class ExpectationFailed(Exception):
    """Something the story expects did not happen; the message says what differed."""


class _Stopped(BaseException):
    """SIGTERM: unwinds like Ctrl-C so that every child process and the temp folder are cleaned up."""


def short(digest: str | None) -> str:
    return "none" if not digest else digest[:19]


class Narrator:
    def __init__(self) -> None:
        self.checks = 0

    def step(self, title: str) -> None:
        click.echo(f"\n{title}")

    def say(self, text: str) -> None:
        click.echo(f"   {text}")

    def check(self, actual: object, expected: object, what: str) -> None:
        if actual != expected:
            raise ExpectationFailed(f"{what}\n     expected: {expected!r}\n     got:      {actual!r}")
        self.checks += 1
        click.echo(f"   ok  {what}")


class _Warnings(logging.Handler):
    """Keeps the janitor's warnings out of the narration; shown only when an expectation fails."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def wait_for(stage: Stage, probe: Callable[[], T | None], what: str, timeout: float = 8.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            worker = f"\n     last worker error: {stage.worker.error}" if stage.worker.error else ""
            raise ExpectationFailed(f"{what}: not seen within {timeout:.0f}s{worker}")
        time.sleep(0.05)


def post_hook(stage: Stage, out: Narrator, event: str, body: dict[str, Any]) -> None:
    answer = stage.session.post(f"{stage.web_url}/webhooks/gitlab", json=body,
                                headers={"X-Gitlab-Event": event, "X-Gitlab-Token": stage.webhook_secret})
    status = (answer.json() if answer.headers.get("Content-Type", "").startswith("application/json")
              else {}).get("status", answer.text[:80])
    out.say(f"POST /webhooks/gitlab ({event}) -> {answer.status_code} {status}")
    out.check(answer.status_code, 202, f"the janitor stored the {event} and answered 202 at once")


def play(stage: Stage, out: Narrator) -> None:
    """The story; raises ExpectationFailed at the first expectation that does not hold."""

    reg, s = stage.registry.url, stage.session

    def digests(*tags: str) -> dict[str, str]:
        return {t: short(digest_of(s, reg, PROJECT, t)) for t in tags}

    out.step(f"1. A pipeline of merge request !{MR_IID} pushes its image; a person tags it {SIBLING}")
    digest = push_image(s, reg, PROJECT, [MR_TAG, SIBLING, MAIN])
    out.say(f"pushed {PROJECT}@{short(digest)} (a random layer and its config) as {MR_TAG}, {SIBLING}, {MAIN}")
    out.check(digests(MR_TAG, SIBLING, MAIN), dict.fromkeys((MR_TAG, SIBLING, MAIN), short(digest)),
              "all three tags point at the same image")

    out.step(f"2. GitLab sends the pipeline hook: MR !{MR_IID}, branch {BRANCH}, status success")
    post_hook(stage, out, "Pipeline Hook", {
        "object_kind": "pipeline",
        "object_attributes": {"id": PIPELINE_ID, "iid": 7, "ref": BRANCH, "tag": False, "sha": "c0ffee" * 6 + "c0ff",
                              "status": "success", "source": "merge_request_event"},
        "merge_request": {"iid": MR_IID, "source_branch": BRANCH, "target_branch": "main", "state": "opened"},
        "project": {"id": 1, "path_with_namespace": PROJECT, "default_branch": "main"},
    })

    def ledger() -> dict[str, tuple[str, str | None]] | None:
        records = stage.store.records_of_pipeline(PROJECT, PIPELINE_ID)
        if not records or any(r.state == "expected" for r in records):
            return None
        return {r.tag: (r.state, r.digest) for r in records}

    found = wait_for(stage, ledger, f"the worker resolving pipeline {PIPELINE_ID}'s tags")
    out.say("the worker expanded the tag patterns for this pipeline and asked the registry what exists")
    out.check(found.get(MR_TAG), ("confirmed", digest), f"ledger: pipeline {PIPELINE_ID} pushed {MR_TAG}")
    out.check(found.get("feature-login", ("absent", None))[0], "dropped",
              "ledger: feature-login ($CI_COMMIT_REF_SLUG) was never pushed, so it is dropped")
    out.check(sorted(t for t in (SIBLING, MAIN) if t in found), [],
              f"ledger: no pipeline claims {SIBLING} or {MAIN}, so the janitor leaves them alone")

    out.step(f"3. Merge request !{MR_IID} is merged: {MR_TAG} has no reason to exist any more")
    post_hook(stage, out, "Merge Request Hook", {
        "object_kind": "merge_request",
        "object_attributes": {"iid": MR_IID, "action": "merge", "state": "merged", "source_branch": BRANCH,
                              "target_branch": "main", "source_project_id": 1, "target_project_id": 1},
        "project": {"id": 1, "path_with_namespace": PROJECT, "default_branch": "main"},
    })
    plans = wait_for(stage, lambda: stage.store.list_plans(project_path=PROJECT), "a plan for the merge")
    plan = plans[0]
    planned = [(u.repository, u.tag, u.outcome) for u in stage.store.plan_untags(plan.id)]
    out.check((len(plans), plan.trigger_kind, plan.state), (1, "merge_request_merged", "scheduled"),
              f"plan #{plan.id} (merge_request_merged) is scheduled")
    out.check(planned, [(PROJECT, MR_TAG, "pending")], f"it untags exactly {PROJECT}:{MR_TAG}")
    out.check(MR_TAG in list_tags(s, reg, PROJECT), True, f"{MR_TAG} is still there during the grace period")
    countdown(stage, plan.id, plan.due_at)

    out.step(f"4. The grace period is over: the worker untags {MR_TAG}, and only {MR_TAG}")
    final = wait_for(stage, lambda: _finished(stage, plan.id), f"plan #{plan.id} finishing")
    out.check(final, "done", f"plan #{plan.id} is done")
    out.check(list_tags(s, reg, PROJECT), sorted([SIBLING, MAIN]), f"tags of {PROJECT}: {MR_TAG} is gone")
    out.check(digests(SIBLING, MAIN), dict.fromkeys((SIBLING, MAIN), short(digest)),
              f"{SIBLING} and {MAIN} still point at {short(digest)}")
    out.check(digest_of(s, reg, PROJECT, digest), digest, "the image itself was not deleted")
    untags = stage.store.list_untags(project_path=PROJECT)
    out.check([(u.tag, u.outcome, u.expected_digest) for u in untags], [(MR_TAG, "done", digest)],
              "the audit log has one row for it")
    u = untags[0]
    out.say(f"audit: untag #{u.id} {u.repository}:{u.tag} {u.outcome} by {u.method}, was {short(u.expected_digest)}")
    if u.method == "placeholder":
        out.say(f"(distribution 2.x cannot delete a tag: the janitor pointed {MR_TAG} at an empty manifest of")
        out.say(" its own and deleted that one, so the image and its other tags were never at risk)")


def _finished(stage: Stage, plan_id: int) -> str | None:
    plan = stage.store.get_plan(plan_id)
    return plan.state if plan and plan.state not in ("scheduled", "ready", "running") else None


def countdown(stage: Stage, plan_id: int, due_at: float) -> None:
    """One progress line counting the grace period down while the worker waits for it."""
    click.echo(f"   grace period ({GRACE_SECONDS}s; reopening the MR now would cancel the plan):", nl=False)
    shown = None
    while (left := due_at - time.time()) > 0:
        if int(left) + 1 != shown:
            shown = int(left) + 1
            click.echo(f" {shown}", nl=False)
        time.sleep(0.05)
    click.echo(" due")


def browse_hint(stage: Stage) -> None:
    """Where to look next: the dashboard if this build serves one, else the status API or /healthz."""
    rules = {rule.rule for rule in stage.app.url_map.iter_rules()}
    path = next((p for p in ("/dashboard", "/api/v1/status") if p in rules), "/healthz")
    url = f"{stage.web_url}{path}"
    what = {"/dashboard": "dashboard", "/api/v1/status": "status"}.get(path, "health")
    click.echo("\nThe janitor keeps running:")
    click.echo(f"   {what:<9} {url}")
    if path != "/healthz":
        click.echo(f"             user name: anything, password: {stage.admin_token} (the admin token)")
        click.echo(f"             curl -u demo:{stage.admin_token} {url}")
    if path == "/dashboard":
        click.echo(f"             try Restore on untag #1: {MR_TAG} comes back within a second")
    click.echo(f"   registry  {stage.registry.url} (no auth), tags: curl {stage.registry.url}/v2/{PROJECT}/tags/list")
    click.echo(f"   webhooks  {stage.web_url}/webhooks/gitlab with X-Gitlab-Token: {stage.webhook_secret}")
    click.echo("Press Ctrl-C to stop: the registry is stopped and the temporary folder removed.")


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGTERM raises like Ctrl-C, so cleanup runs on both; restored afterwards."""

    def _term(signum: int, frame: FrameType | None) -> None:
        raise _Stopped()

    try:
        previous = signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ignore_signals() -> None:
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@click.command("demo")
@click.option("--no-wait", is_flag=True, help="exit once the story has played (0 if every expectation held)")
def demo(no_wait: bool) -> None:
    """Play the whole story on this machine: local registry, GitLab stand-in, a merged MR's tag untagged."""

    binary = find_registry_binary()
    if binary is None:
        click.echo("registry-janitor demo: needs Debian's docker-registry (/usr/bin/docker-registry); "
                   f"install it with: {INSTALL_HINT}", err=True)
        sys.exit(2)
    warnings = _Warnings()
    logging.getLogger().addHandler(warnings)
    out = Narrator()
    started = time.monotonic()
    code, played, registry_pid, workdir = 0, False, None, None
    click.echo("registry-janitor demo: a merge request's image tag untagged end to end, on this machine.")
    with _signals_unwind():
        previous_int = signal.getsignal(signal.SIGINT)
        try:
            with contextlib.ExitStack() as stack:
                try:
                    stage = build_stage(stack, binary, click.echo)
                    registry_pid = stage.registry.process.pid if stage.registry.process else None
                    workdir = stage.workdir
                    play(stage, out)
                    played = True
                    click.echo(f"\nEvery expectation held ({out.checks} checks) in "
                               f"{time.monotonic() - started:.1f}s.")
                    if not no_wait:
                        browse_hint(stage)
                        while True:
                            time.sleep(3600)
                except ExpectationFailed as exc:
                    click.echo(f"\nFAILED  {exc}", err=True)
                    for line in warnings.lines[-10:]:
                        click.echo(f"   log: {line}", err=True)
                    code = 1
                except StageError as exc:
                    click.echo(f"\nregistry-janitor demo: could not set up: {exc}", err=True)
                    code = 1
                except Exception as exc:  # a broken step is a failed expectation too, not a traceback
                    click.echo(f"\nFAILED  {type(exc).__name__}: {exc}", err=True)
                    for line in warnings.lines[-10:]:
                        click.echo(f"   log: {line}", err=True)
                    code = 1
                except (KeyboardInterrupt, _Stopped) as exc:
                    code = 0 if played else 143 if isinstance(exc, _Stopped) else 130
                    click.echo("\nStopping." if played else "\nInterrupted before the story ended.")
                finally:
                    _ignore_signals()  # cleanup must run to the end
        finally:
            signal.signal(signal.SIGINT, previous_int)
            logging.getLogger().removeHandler(warnings)
    gone = f"registry (pid {registry_pid}) stopped, " if registry_pid else ""
    if workdir is not None:
        click.echo(f"Cleaned up: {gone}{workdir} removed.")
    sys.exit(code)
