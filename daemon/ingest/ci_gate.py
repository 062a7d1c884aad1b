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

A record also needs evidence that this job pushed that image (SPEC 14), or it is ``409`` ``no_evidence``
(and a tag never recorded for the job's ref is never the job's to untag). Times compare GitLab's
``started_at`` of the job with the registry's and the image's own clocks, ``CLOCK_SLACK`` apart at most.
Any one of these counts, asked in this order:

- ``registry_notification``: the registry notified a push of that digest to that tag at or after the job
  started (observed by the ledger, or still waiting in the inbox for the worker);
- ``digest_changed``: the tag points at that digest now (the digest read, or one more HEAD for a digest the
  job sent), and the newest push of the tag the registry notified before the job started was another
  digest: someone pushed it while the job ran;
- ``gitlab_created_at``: GitLab's container registry API (``tags``, the ``TagDetailsReader`` it is given)
  shows the tag at that digest with a ``created_at`` not older than the job's start.

When none shows it and GitLab or the registry could not be asked just now, the answer is ``503`` with
``Retry-After`` instead (nothing is stored either way).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from daemon.config import ProjectSettings, Settings
from daemon.domain.events import parse_registry
from daemon.domain.model import Job, Pipeline, PushRecord, TagDetails, Trigger
from daemon.domain.names import is_digest, is_repository, is_tag
from daemon.domain.patterns import PipelineVars, expand, is_protected
from daemon.domain.policy import in_scope
from daemon.errors import GitLabError, RegistryRefused, RegistryUnavailable
from daemon.ingest.inbox import ReaderFactory, pipeline_variables
from daemon.plan.planning import Planner, policy_for
from daemon.store import Store

log = logging.getLogger(__name__)
_MR_REF = re.compile(r"^refs/merge-requests/(\d+)/(?:head|merge|train)$")
#: Seconds a job waits before recording again when the registry could not be asked for the digest.
REGISTRY_RETRY_AFTER = 10
#: Seconds a push may seem to come before the job's start and still count as the job's: GitLab's, the
#: registry's and the image builder's clocks may differ a little.
CLOCK_SLACK = 5.0
#: How many of the newest registry notifications the worker has not applied yet a record looks through.
PENDING_NOTIFICATIONS = 200
TOO_MANY_REQUESTS = 429
Evidence = Literal["registry_notification", "digest_changed", "gitlab_created_at"]


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


class TagDetailsReader(Protocol):
    """GitLab's container registry API (``daemon.gitlab.api.GitLabAPI``): a tag's digest and ``created_at``,
    None when GitLab shows no such tag. Failures raise :class:`~daemon.errors.GitLabError`; one GitLab
    answered carries its HTTP ``status``."""

    def registry_tag(self, project_path: str, token: str, repository: str, tag: str) -> TagDetails | None: ...


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _gitlab_may_answer_later(exc: GitLabError) -> bool:
    """GitLab was not reached, failed (5xx) or rate limited: asking again later may work."""
    status = getattr(exc, "status", None)
    return not isinstance(status, int) or status >= 500 or status == TOO_MANY_REQUESTS


class CiGate:
    """What a CI job may record and untag. Built once per app; ``clock`` is read per request."""

    def __init__(self, settings: Settings, store: Store, planner: Planner, verifier: JobVerifier,
                 readers: ReaderFactory, clock: Callable[[], float], tags: TagDetailsReader | None = None) -> None:
        self.settings = settings
        self.store = store
        self.planner = planner
        self.verifier = verifier
        self.readers = readers
        self.clock = clock
        self.tags = tags

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
        read: str | None = None
        if digest is None:
            found = self._digest_now(job, project, image)
            if isinstance(found, Answer):
                return found
            digest = read = found
        evidence = self._evidence(job, project, image, digest, read)
        if isinstance(evidence, Answer):
            return evidence
        pipeline = self._pipeline(job)
        self.store.upsert_pipeline(pipeline, self.clock())
        pipeline = self.store.get_pipeline(job.project_path, job.pipeline_id) or pipeline
        lifetime, ttl = self._lifetime(project, pipeline_variables(self.store, pipeline), image.tag)
        record_id, created = self.store.add_record(
            project_path=job.project_path, pipeline=pipeline, repository=image.repository, tag=image.tag,
            digest=digest, lifetime=lifetime, ttl_seconds=ttl, state="confirmed", source="ci",
            now=self.clock())
        log.info("CI record of %s:%s (%s) by job %s of pipeline %s: %s", image.repository, image.tag, digest,
                 job.id, job.pipeline_id, evidence)
        return Answer(201 if created else 200, {"status": "recorded" if created else "already_recorded",
                                                "push_record_id": record_id, "lifetime": lifetime,
                                                "evidence": evidence})

    def _evidence(self, job: Job, project: ProjectSettings, image: ImageRef, digest: str,
                  read: str | None) -> Evidence | Answer:
        """What shows that this job pushed ``digest`` to the tag (``read``: the digest the tag was read at,
        if it was), or the answer saying why nothing does."""
        name = f"{image.repository}:{image.tag}"
        counts = ("what counts: the registry's notification of the push reaching the janitor (configure the "
                  "registry's notifications), GitLab's created_at of the tag not older than the job's start "
                  "(a gitlab.api_token or registry_token with the api or read_api scope), or a digest the tag "
                  "did not have when the job started and has now; record from the job that pushes, after the "
                  "push")
        if job.started_at is None:
            return _refusal(409, "no_evidence", f"GitLab did not say when job {job.id} started, so nothing can "
                                                f"show that it pushed {name}; {counts}")
        since = job.started_at - CLOCK_SLACK
        during, before = self._sightings(image, digest, since)
        if during:
            return "registry_notification"
        why = [f"the registry notified the janitor of no push of {digest} to {name} since job {job.id} "
               f"started ({_when(job.started_at)})"]
        retry: Answer | None = None
        if before is None:
            why.append(f"nor of any push of {name} before, so nothing shows it pointed elsewhere then")
        elif before == digest:
            why.append(f"it was notified at {digest} before the job started")
        else:
            current = read if read is not None else self._digest_again(job, project, image, why)
            if isinstance(current, Answer):
                retry = current
            elif current == digest:
                return "digest_changed"
            elif current is not None:
                why.append(f"{name} points at {current} now")
        created = self._created_at(job, project, image, digest, since, why)
        if created is True:
            return "gitlab_created_at"
        if isinstance(created, Answer):
            retry = retry or created
        if retry is not None:
            return retry
        return _refusal(409, "no_evidence", f"nothing shows that job {job.id} pushed {name} at {digest}: "
                                            f"{'; '.join(why)}. Nothing was recorded; {counts}")

    def _sightings(self, image: ImageRef, digest: str, since: float) -> tuple[bool, str | None]:
        """From the registry's notifications (observed, or waiting in the inbox): whether a push of
        ``digest`` to the tag was notified at or after ``since``, and the digest of the newest push of the tag
        notified before it (None: none)."""
        during = self.store.observed_since(image.repository, image.tag, digest, since)
        newest = self.store.observation_before(image.repository, image.tag, since)
        for body, received_at in self.store.pending_registry_bodies(PENDING_NOTIFICATIONS):
            try:
                pushes = parse_registry(json.loads(body), received_at)
            except Exception as exc:  # the worker sets such an event aside; it shows no push either way
                log.debug("a stored registry notification was not read: %r", exc)
                continue
            for push in pushes:
                if push.by_janitor or (push.repository, push.tag) != (image.repository, image.tag):
                    continue
                if push.at >= since:
                    during = during or push.digest == digest
                elif newest is None or push.at > newest[1]:
                    newest = (push.digest, push.at)
        return during, newest[0] if newest is not None else None

    def _digest_again(self, job: Job, project: ProjectSettings, image: ImageRef,
                      why: list[str]) -> str | Answer | None:
        """The tag's digest now, for a record that sent its own; None (and why, in ``why``) when it cannot be
        read or the tag is gone, or the ``503`` to answer when the registry cannot be asked just now."""
        name = f"{image.repository}:{image.tag}"
        reader = self.readers(job.project_path, project)
        if reader is None:
            why.append(f"the janitor holds no registry_token for {job.project_path} to read which image {name} "
                       "is now")
            return None
        try:
            current = reader.head(image.repository, image.tag)
        except RegistryUnavailable as exc:
            log.warning("CI record of %s by pipeline %s: %s", name, job.pipeline_id, exc)
            why.append(f"the registry could not be asked which image {name} is now")
            return _refusal(503, "registry_unavailable",
                            f"the registry could not be asked which image {name} is, to see whether job "
                            f"{job.id} pushed it; nothing was recorded, record again in {REGISTRY_RETRY_AFTER}s",
                            Retry_After=str(REGISTRY_RETRY_AFTER))
        except RegistryRefused as exc:
            log.warning("CI record of %s by pipeline %s: %s", name, job.pipeline_id, exc)
            why.append(f"the registry refused to tell which image {name} is now")
            return None
        if current is None:
            why.append(f"the registry holds no {name} now")
        return current

    def _created_at(self, job: Job, project: ProjectSettings, image: ImageRef, digest: str, since: float,
                    why: list[str]) -> bool | Answer:
        """Whether GitLab shows the tag at ``digest``, created at or after ``since`` (why not, in ``why``), or
        the ``503`` to answer when GitLab cannot be asked just now."""
        name = f"{image.repository}:{image.tag}"
        token = self.settings.api_token_for(project)
        if self.tags is None or token is None:
            why.append(f"the janitor holds no GitLab token for {job.project_path} to read the tag's created_at")
            return False
        try:
            details = self.tags.registry_tag(job.project_path, token, image.repository, image.tag)
        except GitLabError as exc:
            log.warning("CI record of %s by pipeline %s: %s", name, job.pipeline_id, exc)
            why.append(f"GitLab could not be asked for the tag's created_at ({exc})")
            if not _gitlab_may_answer_later(exc):
                return False
            return _refusal(503, "gitlab_unavailable",
                            f"GitLab could not be asked when {name} was created, to see whether job {job.id} "
                            f"pushed it; nothing was recorded, record again in {REGISTRY_RETRY_AFTER}s",
                            Retry_After=str(REGISTRY_RETRY_AFTER))
        if details is None:
            why.append(f"GitLab shows no tag {name}")
        elif details.digest != digest:
            why.append(f"GitLab shows {name} at {details.digest or 'no digest'}")
        elif details.created_at is None:
            why.append(f"GitLab does not say when the image of {name} was created")
        elif details.created_at < since:
            why.append(f"GitLab says the image of {name} was created at {_when(details.created_at)}, before the "
                       "job started")
        else:
            return True
        return False

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
