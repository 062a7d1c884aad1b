"""What the SPEC 13 benchmarks share: GitLab payload templates, the projects they are sent for, a config
for them, free ports, and the one way each benchmark prints a ratio against its target.

Payloads are GitLab's documented examples from ``tests/fixtures/gitlab-payloads`` with the fields that differ
between deliveries replaced by ``{{NAME}}`` markers (numbers unquoted, strings inside their quotes), so
a Python loop (:func:`render`) or a wrk Lua script can fill them in cheaply per request.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PAYLOADS = REPO / "tests" / "fixtures" / "gitlab-payloads"
ZERO_SHA = "0" * 40
MARKER = re.compile(r"\{\{([A-Z_]+)\}\}")


def payload(name: str) -> Any:
    path = PAYLOADS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: the benchmarks build their events from GitLab's examples there")
    return json.loads(path.read_text())


def project_path(index: int) -> str:
    return f"bench/app-{index}"


def webhook_secret(index: int) -> str:
    return f"bench-secret-{index}"


def config_dict(projects: int, *, db_path: Path, bind: str = "127.0.0.1:8080", grace: str = "15m",
                dry_run: bool = True, registry_token: str | None = None) -> dict[str, Any]:
    """A janitor config for ``projects`` projects with the tag patterns a typical .gitlab-ci.yml uses."""
    tags = [
        {"pattern": "mr-$CI_MERGE_REQUEST_IID", "lifetime": "merge_request"},
        {"pattern": "$CI_COMMIT_REF_SLUG", "lifetime": "branch"},
        {"pattern": "cache-$CI_PIPELINE_ID", "lifetime": "pipeline"},
        {"pattern": "preview-$CI_COMMIT_SHORT_SHA", "ttl": "7d"},
    ]
    entries = []
    for i in range(projects):
        entry: dict[str, Any] = {"path": project_path(i), "webhook_secret": webhook_secret(i),
                                 "images": ["", "builder"] if i % 3 == 0 else [""], "tags": tags}
        if registry_token is not None:
            entry["registry_token"] = registry_token
        entries.append(entry)
    return {
        "gitlab": {"url": "http://127.0.0.1:9"},
        "registry": {"url": "http://127.0.0.1:9", "requests_per_second": 0},
        "storage": {"url": f"sqlite:///{db_path}"},
        "server": {"bind": bind, "admin_token": "bench-admin", "registry_notification_token": "bench-notify"},
        "defaults": {"dry_run": dry_run, "grace_period": grace},
        "projects": entries,
    }


# payload templates ---------------------------------------------------------------------------------
def _template(doc: Any, numbers: tuple[str, ...]) -> str:
    text = json.dumps(doc, separators=(",", ":"))
    for name in numbers:  # numeric markers lose their quotes
        text = text.replace(f'"{{{{{name}}}}}"', f"{{{{{name}}}}}")
    return text


def pipeline_template(*, merge_request: bool = True) -> str:
    """A pipeline hook; with ``merge_request=False`` one not attached to an MR (default branch, tags)."""
    doc = payload("pipeline_event")
    attrs = doc["object_attributes"]
    attrs.update(id="{{ID}}", iid="{{IID}}", ref="{{REF}}", sha="{{SHA}}", before_sha="{{SHA}}",
                 status="{{STATUS}}", created_at="{{CREATED}}", name="Pipeline for branch: {{REF}}",
                 url="http://gitlab.example.com/{{PATH}}/-/pipelines/{{ID}}")
    if merge_request:
        doc["merge_request"].update(id="{{MR_ID}}", iid="{{MR_IID}}", source_branch="{{REF}}",
                                    source_project_id="{{PROJECT_ID}}", target_project_id="{{PROJECT_ID}}",
                                    url="http://gitlab.example.com/{{PATH}}/-/merge_requests/{{MR_IID}}")
    else:
        del doc["merge_request"]
        attrs["source"] = "push"
    doc["project"].update(path_with_namespace="{{PATH}}", id="{{PROJECT_ID}}")
    doc["commit"]["id"] = "{{SHA}}"
    for build in doc["builds"]:
        build["id"] = "{{ID}}"
    return _template(doc, ("ID", "IID", "MR_ID", "MR_IID", "PROJECT_ID"))


def merge_request_template() -> str:
    doc = payload("merge_request_event_open")
    attrs = doc["object_attributes"]
    attrs.update(id="{{MR_ID}}", iid="{{MR_IID}}", source_branch="{{REF}}", action="{{ACTION}}",
                 state="{{STATE}}", source_project_id="{{PROJECT_ID}}", target_project_id="{{PROJECT_ID}}",
                 url="http://gitlab.example.com/{{PATH}}/-/merge_requests/{{MR_IID}}")
    doc["project"].update(path_with_namespace="{{PATH}}", id="{{PROJECT_ID}}")
    return _template(doc, ("MR_ID", "MR_IID", "PROJECT_ID"))


def push_template() -> str:
    doc = payload("push_event")
    doc.update(ref="refs/heads/{{REF}}", after="{{AFTER}}", checkout_sha="{{AFTER}}", project_id="{{PROJECT_ID}}")
    doc["project"].update(path_with_namespace="{{PATH}}", id="{{PROJECT_ID}}")
    for commit in doc.get("commits", []):
        commit["id"] = "{{AFTER}}"
    return _template(doc, ("PROJECT_ID",))


def render(template: str, values: Mapping[str, object]) -> bytes:
    return MARKER.sub(lambda m: str(values[m.group(1)]), template).encode()


# a realistic stream of GitLab deliveries ----------------------------------------------------------
@dataclass(frozen=True)
class Delivery:
    header: str  # X-Gitlab-Event
    kind: str
    project_path: str
    key: str  # Idempotency-Key
    body: bytes


class EventStream:
    """GitLab deliveries as an instance sends them: per merge request, an ``open`` hook, two or three
    pipelines (pending, running, then success or failed), ``update`` hooks, then ``merge`` (most) or
    ``close``, and the push hook deleting the source branch; between MRs, default-branch pipelines and
    pushes. About 65% pipeline hooks, 20% merge request hooks, 15% push hooks. Deterministic."""

    def __init__(self, projects: int, *, start: float = 1_700_000_000.0) -> None:
        self.projects = projects
        self.start = start
        self.templates = {"pipeline": pipeline_template(), "branch_pipeline": pipeline_template(merge_request=False),
                          "merge_request": merge_request_template(), "push": push_template()}

    def deliveries(self, count: int) -> Iterator[Delivery]:
        emitted = 0
        story = 0
        while emitted < count:
            for delivery in self._story(story):
                yield delivery
                emitted += 1
                if emitted >= count:
                    return
            story += 1

    def _story(self, n: int) -> Iterator[Delivery]:
        p = n % self.projects
        path = project_path(p)
        mr_iid = n // self.projects + 1
        ref = f"feature/{mr_iid}-change-{n % 97}"
        at = self.start + n * 30.0
        base = {"PATH": path, "PROJECT_ID": 1000 + p, "REF": ref, "MR_IID": mr_iid, "MR_ID": 500_000 + n}
        yield self._mr(n, 0, base, "open", "opened")
        pipelines = 2 + n % 2
        for k in range(pipelines):
            pid = 10 * n + k + 1
            sha = commit_sha(pid)
            finish = "failed" if (n + k) % 7 == 0 else "success"
            for s, status in enumerate(("pending", "running", finish)):
                yield self._pipeline(f"{n}-{k}-{s}", "pipeline", {**base, "ID": pid, "IID": pid, "SHA": sha,
                                                                  "STATUS": status, "CREATED": _ts(at + k)})
            if k == 0:
                yield self._mr(n, 1, base, "update", "opened")
        closed = n % 5 == 4
        yield self._mr(n, 2, base, "close" if closed else "merge", "closed" if closed else "merged")
        yield self._push(f"{n}-del", {**base, "AFTER": ZERO_SHA})
        if n % 2 == 0:  # the merge lands on the default branch: a push and its pipeline
            main = {**base, "REF": "master", "MR_IID": 0}
            pid = 10 * n + 9
            sha = commit_sha(pid)
            yield self._push(f"{n}-main", {**main, "AFTER": sha})
            for s, status in enumerate(("running", "success")):
                yield self._pipeline(f"{n}-9-{s}", "branch_pipeline",
                                     {**main, "ID": pid, "IID": pid, "SHA": sha, "STATUS": status,
                                      "CREATED": _ts(at + 20)})

    def _pipeline(self, key: str, template: str, values: Mapping[str, object]) -> Delivery:
        return Delivery("Pipeline Hook", "pipeline", str(values["PATH"]), f"p-{key}",
                        render(self.templates[template], values))

    def _mr(self, n: int, step: int, base: Mapping[str, object], action: str, state: str) -> Delivery:
        return Delivery("Merge Request Hook", "merge_request", str(base["PATH"]), f"m-{n}-{step}",
                        render(self.templates["merge_request"], {**base, "ACTION": action, "STATE": state}))

    def _push(self, key: str, values: Mapping[str, object]) -> Delivery:
        return Delivery("Push Hook", "push", str(values["PATH"]), f"h-{key}",
                        render(self.templates["push"], values))


def commit_sha(n: int) -> str:
    """A commit id like git's: 40 hex digits whose first 8 (the short sha) differ from commit to commit."""
    return hashlib.sha1(str(n).encode()).hexdigest()


def _ts(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


# processes and ports -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# verdicts ------------------------------------------------------------------------------------------
def verdict(label: str, ratio: float, target: float, *, at_most: bool = False, unit: str = "x") -> bool:
    """Print ``label = ratio (target ...) PASS/FAIL`` and return whether the target is met."""
    ok = ratio <= target if at_most else ratio >= target
    sign = "<=" if at_most else ">="
    print(f"{label} = {ratio:.2f}{unit} (target {sign} {target:g}{unit})  {'PASS' if ok else 'FAIL'}")
    return ok
