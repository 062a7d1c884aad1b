"""The CI gate: a job records what it pushed, or asks to untag a tag its own ref pushed (SPEC 7).

The job is whoever GitLab says it is (``Job``, verified by the ``JobVerifier`` it is given); nothing in
a request body can widen that. Checks run in SPEC's order and the first failure answers: job token
(``verify``; the web turns its errors into 401/503), body, project scope, then for an untag protected,
ownership, budget, and for a record the digest.

A record without ``"digest"`` is resolved here, before the job is answered, with one read-only manifest
HEAD through the project's own credential (SPEC 14): what the tag points at when the job says it pushed
it is what the job pushed, and a push made after that answer is never taken for the job's. The reader
comes from ``readers`` (the composition root builds it; this package never imports the registry client)
and says why it cannot answer with ``RegistryUnavailable`` (``503`` and ``Retry-After``: ask again) or
``RegistryRefused``; nothing is stored unless the digest is known. Nothing here writes to the registry:
an accepted untag is a plan the worker runs at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon.config import ProjectSettings, Settings
from daemon.domain.model import Job, Pipeline, PushRecord, Trigger
from daemon.domain.names import is_digest, is_repository, is_tag
from daemon.domain.patterns import PipelineVars, expand, is_protected
from daemon.domain.policy import in_scope
from daemon.errors import RegistryRefused, RegistryUnavailable
from daemon.ingest.inbox import ReaderFactory, pipeline_variables
from daemon.plan.planning import Planner, policy_for
from daemon.store import Store

log = logging.getLogger(__name__)
_MR_REF = re.compile(r"^refs/merge-requests/(\d+)/(?:head|merge|train)$")
#: Seconds a job waits before recording again when the registry could not be asked for the digest.
REGISTRY_RETRY_AFTER = 10


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
                 readers: ReaderFactory, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.planner = planner
        self.verifier = verifier
        self.readers = readers
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
        digest = body.get("digest")
        if digest is None:
            found = self._digest_now(job, project, image)
            if isinstance(found, Answer):
                return found
            digest = found
        pipeline = self._pipeline(job)
        self.store.upsert_pipeline(pipeline, self.clock())
        pipeline = self.store.get_pipeline(job.project_path, job.pipeline_id) or pipeline
        lifetime, ttl = self._lifetime(project, pipeline_variables(self.store, pipeline), image.tag)
        record_id, created = self.store.add_record(
            project_path=job.project_path, pipeline=pipeline, repository=image.repository, tag=image.tag,
            digest=digest, lifetime=lifetime, ttl_seconds=ttl, state="confirmed", source="ci",
            now=self.clock())
        return Answer(201 if created else 200, {"status": "recorded" if created else "already_recorded",
                                                "push_record_id": record_id, "lifetime": lifetime})

    def _digest_now(self, job: Job, project: ProjectSettings, image: ImageRef) -> str | Answer:
        """The digest the tag points at now (one manifest HEAD), or the answer saying why it is unknown."""
        name = f"{image.repository}:{image.tag}"
        send_it = ('send the pushed digest with the record ("digest": "sha256:...", or '
                   "registry-janitor ci record --digest)")
        reader = self.readers(job.project_path, project)
        if reader is None:
            return _refusal(409, "digest_required",
                            f"the janitor holds no registry_token for {job.project_path}, so it cannot read "
                            f"which image {name} is; {send_it}, or ask the janitor's operator to set "
                            f"registry_token for {job.project_path}")
        try:
            digest = reader.head(image.repository, image.tag)
        except RegistryUnavailable as exc:
            log.warning("CI record of %s by pipeline %s: %s", name, job.pipeline_id, exc)
            return _refusal(503, "registry_unavailable",
                            f"the registry could not be asked which image {name} is; nothing was recorded, "
                            f"record again in {REGISTRY_RETRY_AFTER}s", Retry_After=str(REGISTRY_RETRY_AFTER))
        except RegistryRefused as exc:
            log.warning("CI record of %s by pipeline %s: %s", name, job.pipeline_id, exc)
            return _refusal(409, "digest_required",
                            f"the registry refused to tell the janitor which image {name} is; {send_it}, or "
                            f"ask the janitor's operator to check registry_token for {job.project_path} "
                            "(it needs pull on the project's repositories)")
        if digest is None:
            return _refusal(409, "tag_not_found",
                            f"the registry holds no {name}, so nothing shows this job pushed it; record a tag "
                            "after pushing it")
        return digest

    @staticmethod
    def _lifetime(project: ProjectSettings, variables: PipelineVars, tag: str) -> tuple[str, float | None]:
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
