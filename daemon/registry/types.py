"""Values crossing the registry client's boundary: manifests, untag requests and results, and three Protocols.

Frozen dataclasses, media type names, ``TagDeleter`` (the ``gitlab-api`` method's way out),
``ProjectView`` (what ``untag`` needs from ``ProjectRegistry``, so the untag methods depend on operations,
not on the class) and ``OnSaved`` (how the caller keeps each manifest before its write); no HTTP, no I/O,
no decisions. The worker turns ``UntagResult`` into audit rows; ``Manifest`` is what it stores so that
``restore`` can put a tag back.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from daemon.domain.model import UNTAG_METHODS, Manifest, UntagMethod, UntagOutcome

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
#: Sent as ``Accept`` on every manifest read, so indexes come back as stored and nothing is converted.
MANIFEST_MEDIA_TYPES = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)

__all__ = ["MANIFEST_MEDIA_TYPES", "UNTAG_METHODS", "Manifest", "OnSaved", "ProjectView", "TagDeleter",
           "UntagMethod", "UntagOutcome", "UntagRequest", "UntagResult", "sha256_digest"]


def sha256_digest(body: bytes) -> str:
    """The content digest a registry gives these bytes (``sha256:<hex>``)."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class UntagRequest:
    """Remove ``tag`` from ``repository``, but only while it still points at ``expected_digest`` (S3).

    ``saved``: the manifest an earlier, interrupted attempt kept (``OnSaved``) right before its write. The
    tag parked on a placeholder of the janitor's, or gone, is then that attempt's work: it is finished
    and reported ``done`` with this manifest.
    """

    repository: str
    tag: str
    expected_digest: str
    saved: Manifest | None = None


@dataclass(frozen=True)
class UntagResult:
    """What happened to one ``UntagRequest``.

    ``reason``: for ``skipped`` one of ``superseded``, ``missing``, ``out_of_scope``; for ``failed``
    ``<code>: <one sentence>`` (``registry_unreachable: registry unreachable at http://...: connection
    refused``, ``daemon.registry.failures``), or ``no_delete_permission`` when the project's token may not
    untag (nothing was written); for ``dry_run`` None, or ``no_delete_permission`` when the write would
    fail for that. ``detail`` says, with a ``no_delete_permission``, what the token was granted and how to
    fix it; with another failure, the whole exception (for the log).
    ``saved`` is the manifest read just before the write (None when nothing was written). ``method`` is
    the method that actually wrote (``oci``, ``placeholder``, ``gitlab-api``).
    """

    request: UntagRequest
    outcome: UntagOutcome
    reason: str | None = None
    saved: Manifest | None = None
    method: str | None = None
    detail: str | None = None


class OnSaved(Protocol):
    """Called by ``untag`` with each manifest it is about to untag, after the S3 guard read it and before
    the write (``method``: the method about to write), so the manifest is kept before the tag can change:
    an untag interrupted at any point after the call still has it. Must return only once it is kept. An
    exception stops the whole call there, as an interruption would: it propagates, and nothing more is
    written.
    """

    def __call__(self, request: UntagRequest, manifest: Manifest, method: str) -> None: ...


class TagDeleter(Protocol):
    """Deletes one tag through GitLab's API (the ``gitlab-api`` method); implemented in ``daemon.gitlab.tags``.

    Return normally once the tag is gone. Raise ``TagNotFoundError`` when it was already absent,
    ``TransientRegistryError`` for errors worth retrying, ``PermanentRegistryError`` for the rest.
    """

    def delete_tag(self, project_path: str, repository: str, tag: str) -> None: ...


@runtime_checkable
class ProjectView(Protocol):
    """The operations the untag methods and restore use on one project's view of a registry.

    Implemented by ``daemon.registry.project.ProjectRegistry``. Every request is scoped to
    ``project_path`` (S6, checked before anything is sent). The only manifest delete by digest is
    ``delete_placeholder``, and it is only ever given a placeholder the janitor pushed itself (S5).
    """

    @property
    def project_path(self) -> str: ...

    @property
    def base_url(self) -> str: ...

    @property
    def tag_deleter(self) -> TagDeleter | None: ...

    @property
    def placeholder_batch(self) -> int: ...

    def lanes(self) -> Executor | None: ...

    @property
    def auto_method(self) -> str: ...

    def remember_tag_delete_unsupported(self) -> None: ...

    @property
    def placeholder_delete_works(self) -> bool: ...

    def remember_placeholder_delete_works(self) -> None: ...

    def check_scope(self, repository: str) -> None: ...

    def granted_actions(self, repository: str) -> frozenset[str] | None: ...

    def head(self, repository: str, ref: str) -> str | None: ...

    def get_manifest(self, repository: str, ref: str) -> Manifest | None: ...

    def put_manifest(self, repository: str, ref: str, manifest: Manifest) -> str: ...

    def delete_tag(self, repository: str, tag: str) -> None: ...

    def delete_placeholder(self, repository: str, digest: str) -> None: ...

    def get_blob(self, repository: str, digest: str) -> bytes | None: ...

    def upload_blob(self, repository: str, data: bytes, digest: str) -> None: ...
