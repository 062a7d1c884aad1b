"""GitLab webhook payloads and registry notification envelopes turned into domain events.

Pure: takes parsed JSON (and the ``X-Gitlab-Event`` header), returns values, raises
:class:`MalformedEvent` for input it cannot use. Knows where project hooks, group hooks and system hooks
differ (SOURCES.md in the payload folder): system push hooks carry no ``object_kind`` and no project id,
system MR hooks fewer attributes.

What it returns is safe to store (SPEC 14): ids and iids are integers (never booleans or floats) from 1 to
``MAX_ID``, what it reads as text is a string of at most ``MAX_TEXT`` characters without control
characters, nested objects are objects, and a payload nested deeper than ``MAX_DEPTH`` levels is refused
whole. A value GitLab (or the registry) never sends is a :class:`MalformedEvent` naming its field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from daemon.domain.model import Pipeline

#: What ``after`` says for a deleted branch in a SHA-1 repository; a SHA-256 one sends 64 zeros.
ZERO_SHA = "0" * 40
_MR_REF = re.compile(r"^refs/merge-requests/([0-9]{1,19})/(?:head|merge|train)$")
#: The largest id storage keeps (a signed 64-bit integer); GitLab's ids and iids never come near it.
MAX_ID = 2**63 - 1
#: The longest text (ref, path, SHA, status, repository, tag) read from a payload.
MAX_TEXT = 4096
#: How deep objects and lists may nest in a payload; GitLab's and the registry's reach 5.
MAX_DEPTH = 20
#: The longest ``object_kind`` (or ``event_name``) read as a kind; GitLab's are short identifiers.
MAX_KIND = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTAINER_TYPES = frozenset({dict, list})
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


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether objects and lists nest more than ``limit`` levels in ``value`` (a JSON value)."""
    level = [value] if type(value) in _CONTAINER_TYPES else []
    for _ in range(limit):  # a JSON value's objects and lists are exactly dicts and lists: no isinstance
        level = [child for node in level for child in (node.values() if type(node) is dict else node)
                 if type(child) in _CONTAINER_TYPES]
        if not level:
            return False
    return True


def _check_depth(payload: Any) -> None:
    if too_deep(payload):
        raise MalformedEvent(f"the body nests objects and lists deeper than {MAX_DEPTH} levels")


def _obj(payload: Any, key: str) -> dict[str, Any]:
    value = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(value, dict):
        raise MalformedEvent(f"'{key}' is missing or not an object")
    return value


def _opt_obj(payload: dict[str, Any], key: str, what: str | None = None) -> dict[str, Any] | None:
    """An object that may be absent or null; anything else where it belongs is malformed."""
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MalformedEvent(f"'{what or key}' must be an object or null")
    return value


def _int(value: Any, what: str) -> int:
    """An id or iid: an integer (not a boolean, not a float), or its decimal digits as a string, from 1 to
    ``MAX_ID``."""
    if type(value) is str and 0 < len(value) <= 19 and value.isascii() and value.isdigit():
        value = int(value)
    if type(value) is not int or not 1 <= value <= MAX_ID:
        raise MalformedEvent(f"'{what}' must be an integer from 1 to 2**63-1")
    return value


def _opt_int(value: Any, what: str) -> int | None:
    """An id or iid that may be absent or null."""
    return None if value is None else _int(value, what)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT or _CONTROL.search(value):
        raise MalformedEvent(f"'{what}' must be a string of at most {MAX_TEXT} characters without control"
                             " characters")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"'{what}' must be a non-empty string")
    return _text(value, what)


def _opt_str(value: Any, what: str) -> str | None:
    """Text that may be absent, null or empty (all read as None)."""
    if value is None or value == "":
        return None
    return _text(value, what)


def _opt_bool(value: Any, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MalformedEvent(f"'{what}' must be true, false or null")
    return value


def is_zero_sha(value: Any) -> bool:
    """GitLab's blank SHA, of any object format: 40 zeros (SHA-1) or 64 (SHA-256)."""
    return isinstance(value, str) and bool(value) and value.strip("0") == ""


def merge_request_of_ref(ref: str) -> int | None:
    """The iid in ``refs/merge-requests/<iid>/head`` (or ``/merge``, ``/train``); None for other refs, and
    for an iid no merge request can have (0, or beyond ``MAX_ID``)."""
    match = _MR_REF.match(ref)
    if match is None:
        return None
    iid = int(match.group(1))
    return iid if 1 <= iid <= MAX_ID else None


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
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (ValueError, OverflowError):
        return None


def event_kind(header: str | None, payload: Any) -> str:
    """``pipeline``, ``merge_request``, ``push``, ``tag_push`` or another kind, for any hook type."""
    if isinstance(payload, dict):
        kind = payload.get("object_kind") or payload.get("event_name") or payload.get("event_type")
        if isinstance(kind, str) and kind and len(kind) <= MAX_KIND:
            return kind
    if header:
        return header.removesuffix(" Hook").lower().replace(" ", "_")
    return "unknown"


class HeaderReader(Protocol):
    def get(self, key: str, /) -> str | None: ...


def delivery_id(headers: HeaderReader) -> str | None:
    """What GitLab's hook log names a delivery by: its ``Idempotency-Key`` (GitLab 17.4+), else its
    ``X-Gitlab-Event-UUID``; bounded, for logs. None when it sent neither."""
    for header in ("Idempotency-Key", "X-Gitlab-Event-UUID"):
        value = headers.get(header)
        if value:
            return value[:MAX_KIND]
    return None


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
    _check_depth(payload)
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
    mr = _opt_obj(payload, "merge_request")
    mr_iid = _opt_int(mr.get("iid"), "merge_request.iid") if mr else None
    ref = _str(attrs.get("ref"), "object_attributes.ref")
    if mr_iid is None:
        mr_iid = merge_request_of_ref(ref)
    # A merge-request pipeline's ref in live GitLab is the MR's source branch; some payloads (and
    # GitLab's own doc example) show the target instead, and a fork's MR pipeline run in this project
    # may show ``refs/merge-requests/<iid>/head``: GitLab's variables take the MR block's source branch
    # (``Ci::Pipeline#source_ref``), and so does the janitor.
    source_branch = _opt_str(mr.get("source_branch"), "merge_request.source_branch") if mr else None
    if source_branch is not None:
        ref = source_branch
    # A fork's MR pipeline run in this (the target) project: its source branch is a branch of the
    # fork, not of this project, and must never be mistaken for this project's branch of the same
    # name (branch_deleted, another MR from it). Here it runs on the MR's own ref.
    source_project = _opt_int(mr.get("source_project_id"), "merge_request.source_project_id") if mr else None
    here = _opt_int(project.get("id"), "project.id")
    if mr_iid is not None and source_project is not None and here is not None and source_project != here:
        ref = f"refs/merge-requests/{mr_iid}/head"
    created = time_or_none(_opt_str(attrs.get("created_at"), "object_attributes.created_at"))
    return PipelineEvent(
        Pipeline(
            project_path=_str(project.get("path_with_namespace"), "project.path_with_namespace"),
            pipeline_id=_int(attrs.get("id"), "object_attributes.id"),
            iid=_opt_int(attrs.get("iid"), "object_attributes.iid"),
            ref=ref,
            sha=_opt_str(attrs.get("sha"), "object_attributes.sha") or "",
            status=_opt_str(attrs.get("status"), "object_attributes.status") or "unknown",
            is_tag=_opt_bool(attrs.get("tag"), "object_attributes.tag"),
            mr_iid=mr_iid,
            default_branch=_opt_str(project.get("default_branch"), "project.default_branch"),
            created_at=received_at if created is None else created,
        ),
        source_branch=source_branch if mr_iid is not None else None,
        created_known=created is not None,
    )


def _project_path(payload: dict[str, Any]) -> str:
    path = project_path_of(payload)
    if not path:
        raise MalformedEvent("'project.path_with_namespace' is missing")
    return _text(path, "project.path_with_namespace")


def _merge_request(payload: dict[str, Any]) -> MergeRequestEvent:
    attrs = _obj(payload, "object_attributes")
    project = _opt_obj(payload, "project") or {}
    path = _project_path(payload)
    state = _opt_str(attrs.get("state"), "object_attributes.state") or ""
    action = (_opt_str(attrs.get("action"), "object_attributes.action")
              or {"merged": "merge", "closed": "close"}.get(state, "update"))
    return MergeRequestEvent(
        project_path=path,
        iid=_int(attrs.get("iid"), "object_attributes.iid"),
        action=action,
        state=state,
        source_branch=_str(attrs.get("source_branch"), "object_attributes.source_branch"),
        source_project_id=_opt_int(attrs.get("source_project_id"), "object_attributes.source_project_id"),
        target_project_id=_opt_int(attrs.get("target_project_id"), "object_attributes.target_project_id"),
        default_branch=_opt_str(project.get("default_branch"), "project.default_branch"),
    )


def _push(payload: dict[str, Any], kind: str) -> PushEvent:
    path = _project_path(payload)
    full_ref = _str(payload.get("ref"), "ref")
    is_tag = full_ref.startswith("refs/tags/") or kind == "tag_push"
    ref = full_ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
    project = _opt_obj(payload, "project") or {}
    return PushEvent(
        project_path=path,
        ref=ref,
        is_tag=is_tag,
        deleted=is_zero_sha(payload.get("after")),
        default_branch=_opt_str(project.get("default_branch"), "project.default_branch"),
    )


def parse_registry(envelope: Any, received_at: float) -> list[RegistryPush]:
    """Tag pushes of manifests from a v1 or v2 notification envelope; everything else is dropped. An event
    or target that is no object is skipped; a field of a push event's target that is there but not a
    string (a list where ``mediaType`` belongs) is malformed."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("events"), list):
        raise MalformedEvent("a registry notification envelope has an 'events' list")
    _check_depth(envelope)
    pushes = []
    for n, event in enumerate(envelope["events"]):
        if not isinstance(event, dict) or event.get("action") != "push":
            continue
        target = event.get("target")
        if not isinstance(target, dict):
            continue
        where = f"events[{n}]"
        media_type = _opt_str(target.get("mediaType"), f"{where}.target.mediaType")
        tag = _opt_str(target.get("tag"), f"{where}.target.tag")
        repo = _opt_str(target.get("repository"), f"{where}.target.repository")
        digest = _opt_str(target.get("digest"), f"{where}.target.digest")
        if media_type not in MANIFEST_MEDIA_TYPES or not (tag and repo and digest):
            continue
        request = _opt_obj(event, "request", f"{where}.request") or {}
        useragent = _opt_str(request.get("useragent"), f"{where}.request.useragent") or ""
        timestamp = event.get("timestamp")
        pushes.append(RegistryPush(repo, tag, digest, parse_time(timestamp, received_at), useragent))
    return pushes
