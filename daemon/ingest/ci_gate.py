"""The CI gate: a job records what it pushed, or asks to untag a tag its own ref pushed (SPEC 7).

The job is whoever GitLab says it is (``Job``, verified by the ``JobVerifier`` it is given); nothing in
a request body can widen that. Checks run in SPEC's order and the first failure answers: job token
(``verify``; the web turns its errors into 401/503), body,
project scope, protected, ownership, budget. No registry call happens here (the web never calls the
registry): a push without a digest is resolved by the worker, an accepted untag is a plan the worker
runs at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon.config import ProjectSettings, Settings
from daemon.domain.model import Job, Pipeline, PushRecord, Trigger
from daemon.domain.names import is_digest, is_repository, is_tag
from daemon.domain.patterns import PipelineVars, expand, is_protected
from daemon.domain.policy import in_scope
from daemon.plan.planning import Planner, policy_for
from daemon.store import Store

_MR_REF = re.compile(r"^refs/merge-requests/(\d+)/(?:head|merge|train)$")


@dataclass(frozen=True)
class ImageRef:
    host: str
    repository: str
    tag: str


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _refusal(status: int, code: str, message: str, **headers: str) -> Answer:
    return Answer(status, {"error": code, "message": message}, dict(headers))


def parse_image(text: Any, hostnames: tuple[str, ...]) -> ImageRef:
    """``<registry host>/<repository>:<tag>``; the host must be one of ``registry.hostnames``."""
    if not isinstance(text, str) or "/" not in text:
        raise ValueError("'image' must look like <registry host>/<repository>:<tag>")
    host, _, rest = text.partition("/")
    if host not in hostnames:
        raise ValueError(f"registry host {host!r} is not one of registry.hostnames {list(hostnames)}")
    repository, sep, tag = rest.rpartition(":")
    if not sep or "/" in tag or "@" in rest:
        raise ValueError("'image' must name a tag: <registry host>/<repository>:<tag>")
    if not is_repository(repository) or not is_tag(tag):
        raise ValueError(f"{repository}:{tag} is not a valid repository and tag")
    return ImageRef(host, repository, tag)


def mr_iid_of_ref(ref: str) -> int | None:
    """Merge-request pipelines' jobs may report ``refs/merge-requests/42/head`` as their ref."""
    match = _MR_REF.match(ref)
    return int(match.group(1)) if match else None


class JobVerifier(Protocol):
    def verify_job(self, job_token: str) -> Job: ...


class CiGate:
    """What a CI job may record and untag. Built once per app; ``clock`` is read per request."""

    def __init__(self, settings: Settings, store: Store, planner: Planner, verifier: JobVerifier,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.planner = planner
        self.verifier = verifier
        self.clock = clock

    def verify(self, job_token: str) -> Job:
        """The job GitLab says this token belongs to (raises ``JobTokenError`` or ``GitLabError``)."""
        return self.verifier.verify_job(job_token)

    def _scope(self, job: Job, body: Any) -> tuple[ProjectSettings, ImageRef] | Answer:
        if not isinstance(body, dict) or "image" not in body:
            return _refusal(400, "malformed", "send JSON {\"image\": \"<registry host>/<repository>:<tag>\"}")
        try:
            image = parse_image(body["image"], self.settings.registry.hostnames)
        except ValueError as exc:
            return _refusal(400, "malformed", str(exc))
        digest = body.get("digest")
        if digest is not None and (not isinstance(digest, str) or not is_digest(digest)):
            return _refusal(400, "malformed", "'digest' must look like sha256:<64 hex>")
        project = self.settings.project_for(job.project_path)
        if project is None:
            return _refusal(403, "project_not_configured",
                            f"project {job.project_path} is not configured in the janitor")
        if not in_scope(image.repository, policy_for(project, job.project_path, None)):
            return _refusal(403, "out_of_scope",
                            f"{image.repository} is not a repository of {job.project_path} this janitor cleans")
        return project, image

    def _pipeline(self, job: Job) -> Pipeline:
        """The job's pipeline as far as the job knows it; a pipeline hook later adds what it lacks."""
        mr_iid = mr_iid_of_ref(job.ref)
        ref = job.ref
        if mr_iid is not None:
            # The MR hook names the branch; failing that, the pipeline hook already did (and for a
            # fork's MR both keep the MR's own ref).
            known = self.store.get_pipeline(job.project_path, job.pipeline_id)
            ref = self.store.mr_source_branch(job.project_path, mr_iid) or (known.ref if known else job.ref)
        return Pipeline(job.project_path, job.pipeline_id, ref, job.sha, "running", is_tag=job.is_tag,
                        mr_iid=mr_iid, created_at=self.clock())

    def record_push(self, job: Job, body: Any) -> Answer:
        scoped = self._scope(job, body)
        if isinstance(scoped, Answer):
            return scoped
        project, image = scoped
        pipeline = self._pipeline(job)
        self.store.upsert_pipeline(pipeline, self.clock())
        pipeline = self.store.get_pipeline(job.project_path, job.pipeline_id) or pipeline
        lifetime, ttl = self._lifetime(project, pipeline, image.tag)
        digest = body.get("digest")
        record_id, created = self.store.add_record(
            project_path=job.project_path, pipeline=pipeline, repository=image.repository, tag=image.tag,
            digest=digest, lifetime=lifetime, ttl_seconds=ttl,
            state="confirmed" if digest else "expected", source="ci", now=self.clock())
        return Answer(201 if created else 200, {"status": "recorded" if created else "already_recorded",
                                                "push_record_id": record_id, "lifetime": lifetime})

    @staticmethod
    def _lifetime(project: ProjectSettings, p: Pipeline, tag: str) -> tuple[str, float | None]:
        variables = PipelineVars(ref=p.ref, sha=p.sha, pipeline_id=p.pipeline_id, pipeline_iid=p.iid,
                                 is_tag=p.is_tag, mr_iid=p.mr_iid)
        for pattern in project.tags:
            if expand(pattern.pattern, variables) == tag:
                return ("ttl", pattern.ttl) if pattern.ttl is not None else (str(pattern.lifetime), None)
        return project.default_lifetime, None

    def request_untag(self, job: Job, body: Any) -> Answer:
        scoped = self._scope(job, body)
        if isinstance(scoped, Answer):
            return scoped
        project, image = scoped
        default_branch = self.store.default_branch(job.project_path)
        if is_protected(image.tag, project.protected_tags, default_branch):
            return _refusal(409, "protected", f"{image.tag} is a protected tag and is never untagged")
        owner = self._owner(job, image)
        if owner is None:
            return _refusal(403, "not_owned", f"no pipeline of {job.project_path} on ref {job.ref} "
                                              f"recorded {image.repository}:{image.tag}")
        used = self.store.ci_requests_of_pipeline(job.project_path, job.pipeline_id)
        if used >= project.ci_untag_per_pipeline:
            return _refusal(429, "budget", f"pipeline {job.pipeline_id} used its {project.ci_untag_per_pipeline}"
                            " untag requests (ci_untag_per_pipeline)", Retry_After="3600")
        now = self.clock()
        trigger = Trigger("ci_request", job.project_path,
                          f"ci_request:{job.project_path}:{job.pipeline_id}:{image.repository}:{image.tag}",
                          now, ref=owner.ref, pipeline_id=job.pipeline_id)
        plan_id = self.planner.plan(trigger, [owner], now)
        untags = self.store.plan_untags(plan_id) if plan_id is not None else []
        if not untags:
            return _refusal(403, "not_owned", "nothing of yours to untag")
        untag = untags[0]
        return Answer(202, {"status": "accepted", "untag_id": untag.id, "plan_id": plan_id,
                            "outcome": untag.outcome, "reason": untag.reason})

    def _owner(self, job: Job, image: ImageRef) -> PushRecord | None:
        """The newest live record of this tag by a pipeline of the job's project and ref."""
        ref = self._pipeline(job).ref
        owners = [r for r in self.store.owners_of([(image.repository, image.tag)])
                  if r.project_path == job.project_path and r.ref == ref]
        return max(owners, key=lambda r: r.pipeline_id) if owners else None
