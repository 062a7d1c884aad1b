"""GitLab webhook payloads and registry notification envelopes turned into domain events.

Pure: takes parsed JSON (and the ``X-Gitlab-Event`` header), returns values, raises
:class:`MalformedEvent` for input it cannot use. Knows where project hooks, group hooks and system hooks
differ (SOURCES.md in the payload folder): system push hooks carry no ``object_kind`` and no project id,
system MR hooks fewer attributes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from daemon.domain.model import Pipeline

#: What ``after`` says for a deleted branch in a SHA-1 repository; a SHA-256 one sends 64 zeros.
ZERO_SHA = "0" * 40
_MR_REF = re.compile(r"^refs/merge-requests/(\d+)/(?:head|merge|train)$")
MANIFEST_MEDIA_TYPES = frozenset({
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
})


class MalformedEvent(ValueError):
    """The payload lacks what its kind needs; the web answers 400 with this message."""


@dataclass(frozen=True)
class PipelineEvent:
    """A pipeline hook. ``source_branch`` is a merge-request pipeline's source branch, what GitLab puts
    in ``$CI_COMMIT_REF_NAME`` (``Ci::Pipeline#source_ref``) even where the pipeline's own ref is
    ``refs/merge-requests/<iid>/head``; ``created_known`` is False when the hook carried no creation
    time (``pipeline.created_at`` is then the arrival time)."""

    pipeline: Pipeline
    source_branch: str | None = None
    created_known: bool = True


@dataclass(frozen=True)
class MergeRequestEvent:
    project_path: str
    iid: int
    action: str
    state: str
    source_branch: str
    source_project_id: int | None
    target_project_id: int | None
    default_branch: str | None


@dataclass(frozen=True)
class PushEvent:
    """A branch or tag push; ``deleted`` when ``after`` is all zeros (40, or 64 in a SHA-256 repository)."""

    project_path: str
    ref: str
    is_tag: bool
    deleted: bool
    default_branch: str | None


@dataclass(frozen=True)
class IgnoredEvent:
    kind: str


@dataclass(frozen=True)
class RegistryPush:
    repository: str
    tag: str
    digest: str
    at: float
    useragent: str = ""

    @property
    def by_janitor(self) -> bool:
        """The janitor's own writes (placeholders, restores) notify too; they are never anyone's push."""
        return self.useragent.startswith("registry-janitor")


GitLabEvent = PipelineEvent | MergeRequestEvent | PushEvent | IgnoredEvent


def _obj(payload: Any, key: str) -> dict[str, Any]:
    value = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(value, dict):
        raise MalformedEvent(f"'{key}' is missing or not an object")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MalformedEvent(f"'{what}' must be an integer")
    try:
        return int(value)
    except ValueError:
        raise MalformedEvent(f"'{what}' must be an integer") from None


def _opt_int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"'{what}' must be a non-empty string")
    return value


def is_zero_sha(value: Any) -> bool:
    """GitLab's blank SHA, of any object format: 40 zeros (SHA-1) or 64 (SHA-256)."""
    return isinstance(value, str) and bool(value) and value.strip("0") == ""


def merge_request_of_ref(ref: str) -> int | None:
    """The iid in ``refs/merge-requests/<iid>/head`` (or ``/merge``, ``/train``); None for other refs."""
    match = _MR_REF.match(ref)
    return int(match.group(1)) if match else None


def parse_time(value: Any, default: float) -> float:
    """GitLab writes ``2016-08-12 15:23:28 UTC`` in hooks and ISO 8601 in the API."""
    parsed = time_or_none(value)
    return default if parsed is None else parsed


def time_or_none(value: Any) -> float | None:
    """A time as :func:`parse_time` reads it, or None when there is none to read."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(" UTC"):
        text = text[:-4].replace(" ", "T") + "+00:00"
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def event_kind(header: str | None, payload: Any) -> str:
    """``pipeline``, ``merge_request``, ``push``, ``tag_push`` or another kind, for any hook type."""
    if isinstance(payload, dict):
        kind = payload.get("object_kind") or payload.get("event_name") or payload.get("event_type")
        if isinstance(kind, str) and kind:
            return kind
    if header:
        return header.removesuffix(" Hook").lower().replace(" ", "_")
    return "unknown"


def project_path_of(payload: Any) -> str | None:
    """The ``group/project`` path a hook is about, whatever hook type sent it."""
    if not isinstance(payload, dict):
        return None
    project = payload.get("project")
    if isinstance(project, dict):
        path = project.get("path_with_namespace")
        if isinstance(path, str) and path:
            return path
    path = payload.get("path_with_namespace")
    return path if isinstance(path, str) and path else None


def parse_gitlab(header: str | None, payload: Any, received_at: float) -> GitLabEvent:
    if not isinstance(payload, dict):
        raise MalformedEvent("the body must be a JSON object")
    kind = event_kind(header, payload)
    if kind == "pipeline":
        return _pipeline(payload, received_at)
    if kind == "merge_request":
        return _merge_request(payload)
    if kind in ("push", "tag_push"):
        return _push(payload, kind)
    return IgnoredEvent(kind)


def _pipeline(payload: dict[str, Any], received_at: float) -> PipelineEvent:
    attrs = _obj(payload, "object_attributes")
    project = _obj(payload, "project")
    mr = payload.get("merge_request") if isinstance(payload.get("merge_request"), dict) else None
    mr_iid = _opt_int(mr.get("iid")) if mr else None
    ref = _str(attrs.get("ref"), "object_attributes.ref")
    if mr_iid is None:
        mr_iid = merge_request_of_ref(ref)
    # A merge-request pipeline's ref in live GitLab is the MR's source branch; some payloads (and
    # GitLab's own doc example) show the target instead, and a fork's MR pipeline run in this project
    # may show ``refs/merge-requests/<iid>/head``: GitLab's variables take the MR block's source branch
    # (``Ci::Pipeline#source_ref``), and so does the janitor.
    source_branch = mr.get("source_branch") if mr else None
    if not isinstance(source_branch, str) or not source_branch:
        source_branch = None
    if source_branch is not None:
        ref = source_branch
    # A fork's MR pipeline run in this (the target) project: its source branch is a branch of the
    # fork, not of this project, and must never be mistaken for this project's branch of the same
    # name (branch_deleted, another MR from it). Here it runs on the MR's own ref.
    source_project = _opt_int(mr.get("source_project_id")) if mr else None
    here = _opt_int(project.get("id"))
    if mr_iid is not None and source_project is not None and here is not None and source_project != here:
        ref = f"refs/merge-requests/{mr_iid}/head"
    created = time_or_none(attrs.get("created_at"))
    return PipelineEvent(
        Pipeline(
            project_path=_str(project.get("path_with_namespace"), "project.path_with_namespace"),
            pipeline_id=_int(attrs.get("id"), "object_attributes.id"),
            iid=_opt_int(attrs.get("iid")),
            ref=ref,
            sha=str(attrs.get("sha") or ""),
            status=str(attrs.get("status") or "unknown"),
            is_tag=bool(attrs.get("tag")),
            mr_iid=mr_iid,
            default_branch=project.get("default_branch") or None,
            created_at=received_at if created is None else created,
        ),
        source_branch=source_branch if mr_iid is not None else None,
        created_known=created is not None,
    )


def _merge_request(payload: dict[str, Any]) -> MergeRequestEvent:
    attrs = _obj(payload, "object_attributes")
    project: dict[str, Any] = payload["project"] if isinstance(payload.get("project"), dict) else {}
    path = project_path_of(payload)
    if not path:
        raise MalformedEvent("'project.path_with_namespace' is missing")
    state = str(attrs.get("state") or "")
    action = str(attrs.get("action") or {"merged": "merge", "closed": "close"}.get(state, "update"))
    return MergeRequestEvent(
        project_path=path,
        iid=_int(attrs.get("iid"), "object_attributes.iid"),
        action=action,
        state=state,
        source_branch=_str(attrs.get("source_branch"), "object_attributes.source_branch"),
        source_project_id=_opt_int(attrs.get("source_project_id")),
        target_project_id=_opt_int(attrs.get("target_project_id")),
        default_branch=project.get("default_branch") or None,
    )


def _push(payload: dict[str, Any], kind: str) -> PushEvent:
    path = project_path_of(payload)
    if not path:
        raise MalformedEvent("'project.path_with_namespace' is missing")
    full_ref = _str(payload.get("ref"), "ref")
    is_tag = full_ref.startswith("refs/tags/") or kind == "tag_push"
    ref = full_ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
    project: dict[str, Any] = payload["project"] if isinstance(payload.get("project"), dict) else {}
    return PushEvent(
        project_path=path,
        ref=ref,
        is_tag=is_tag,
        deleted=is_zero_sha(payload.get("after")),
        default_branch=project.get("default_branch") or None,
    )


def parse_registry(envelope: Any, received_at: float) -> list[RegistryPush]:
    """Tag pushes of manifests from a v1 or v2 notification envelope; everything else is dropped."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("events"), list):
        raise MalformedEvent("a registry notification envelope has an 'events' list")
    pushes = []
    for event in envelope["events"]:
        if not isinstance(event, dict) or event.get("action") != "push":
            continue
        target = event.get("target")
        if not isinstance(target, dict):
            continue
        tag, repo, digest = target.get("tag"), target.get("repository"), target.get("digest")
        if target.get("mediaType") not in MANIFEST_MEDIA_TYPES or not (tag and repo and digest):
            continue
        request: dict[str, Any] = event["request"] if isinstance(event.get("request"), dict) else {}
        pushes.append(RegistryPush(str(repo), str(tag), str(digest),
                                   parse_time(event.get("timestamp"), received_at),
                                   str(request.get("useragent") or "")))
    return pushes
