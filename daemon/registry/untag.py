"""The untag methods (``oci``, ``placeholder``, ``gitlab-api``, ``auto``), their guards, and restore.

Owns the order of requests around each write: the S3 guard immediately before it, the saved manifest,
and what a write's answer means (404 is ``skipped: missing``, S8). The guard is a GET of the tag: one
request that both re-checks the digest and reads the manifest to save. The caller's ``on_saved`` keeps
that manifest before the write is sent (the executor stores it with the untag), so the gap between the
check and the write is one round trip and one local store write, and an untag interrupted after the
call, at any point, still has its manifest. A request carrying such a manifest (``UntagRequest.saved``,
from an interrupted attempt) is resumed: its tag parked on a placeholder is finished by deleting that
placeholder, and its tag found gone was removed by that attempt; both are ``done`` with the manifest,
never ``skipped: missing``. The placeholder method works in the view's lanes when it has them
(``lanes()``): several tags of a batch guarded, kept and parked side by side, each still guarded right
before its own write, and a batch's placeholder deleted while the next batch is parked; an exception
from ``on_saved`` begins nothing more, and is raised once the requests already sent are answered.
Before the first write of a repository's batch it reads what the
project's token was granted (``granted_actions``, from the token itself): when the method needs an action
the token lacks (GitLab leaves ``delete`` out of tokens without the ``api`` scope and the Maintainer role),
nothing is written and every untag of the batch fails ``no_delete_permission``, so no tag is ever parked
on a placeholder the token cannot delete. A dry run reports the same finding on its ``dry_run`` results.
Works only through ``types.ProjectView`` (the operations a project's view offers), never through the
class behind it. Must not: decide what to untag, write anything when ``dry_run`` is set, or delete a
manifest by digest other than a placeholder the janitor pushed itself (S5: ``delete_placeholder`` is only
given the digest of a fresh ``new_placeholder`` or of a manifest whose config carries the placeholder
label).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass, replace
from typing import TypeVar, cast

from daemon.domain.credentials import actions_needed, missing_actions, registry_fix
from daemon.domain.model import NO_DELETE_PERMISSION, UntagMethod
from daemon.registry.errors import (
    NoDeletePermissionError,
    PermanentRegistryError,
    RegistryError,
    RestoreConflictError,
    RestoreError,
    TagNotFoundError,
)
from daemon.registry.failures import failure_detail, failure_parts, failure_reason
from daemon.registry.names import checked_ref
from daemon.registry.placeholder import Placeholder, candidate_config, is_placeholder_config, new_placeholder
from daemon.registry.types import (
    UNTAG_METHODS,
    Manifest,
    OnSaved,
    ProjectView,
    UntagRequest,
    UntagResult,
    sha256_digest,
)

log = logging.getLogger(__name__)

#: A tag DELETE answered with these means "this registry cannot delete tags" (spec section 8).
_NO_TAG_DELETE_STATUS = frozenset({400, 405})
_NO_TAG_DELETE_CODES = frozenset({"UNSUPPORTED", "DIGEST_INVALID"})
_BLOBS_GONE_CODES = frozenset({"MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN", "MANIFEST_UNKNOWN"})

Batch = list[tuple[int, UntagRequest]]
_T = TypeVar("_T")


@dataclass(frozen=True)
class _Leftover:
    """The tag points at a placeholder an interrupted run parked it on: finishing means deleting that."""

    digest: str


def untag(reg: ProjectView, items: Sequence[UntagRequest], *, method: str, dry_run: bool,
          on_saved: OnSaved | None = None) -> list[UntagResult]:
    if method not in UNTAG_METHODS:
        raise ValueError(f"unknown untag method {method!r}; expected one of {', '.join(UNTAG_METHODS)}")
    if method == "gitlab-api" and reg.tag_deleter is None and not dry_run:
        raise ValueError("the gitlab-api untag method needs a tag deleter (RegistryClient(tag_deleter=...))")
    results: dict[int, UntagResult] = {}
    batches: dict[str, Batch] = {}
    for i, item in enumerate(items):
        try:
            reg.check_scope(item.repository)
        except RegistryError:
            results[i] = UntagResult(item, "skipped", "out_of_scope")
            continue
        try:
            checked_ref(item.tag)
        except RegistryError as exc:  # never reaches a URL, and joins no batch that asks anything
            results[i] = _failed(item, exc)
            continue
        batches.setdefault(item.repository, []).append((i, item))
    for batch in batches.values():
        results.update(_untag_repository(reg, batch, method, dry_run, on_saved))
    for result in results.values():
        log.info(
            "untag %s %s:%s expected %s -> %s%s%s",
            reg.project_path,
            result.request.repository,
            result.request.tag,
            result.request.expected_digest,
            result.outcome,
            f" ({result.reason})" if result.reason else "",
            f" via {result.method}" if result.method else "",
        )
    return [results[i] for i in range(len(items))]


def _untag_repository(
    reg: ProjectView, batch: Batch, method: str, dry_run: bool, on_saved: OnSaved | None
) -> Iterator[tuple[int, UntagResult]]:
    if dry_run:
        yield from _dry_run(reg, batch, method)
        return
    if method == "auto" and reg.auto_method == "placeholder":
        method = "placeholder"
    refused = _refusal(reg, batch[0][1].repository, method)
    if refused is not None:
        for i, item in batch:
            yield i, _failed(item, refused)
        return
    if method == "placeholder":
        yield from _placeholder(reg, batch, on_saved)
    elif method == "gitlab-api":
        denied: UntagResult | None = None
        for i, item in batch:
            if denied is not None:  # GitLab refused this token the delete: the rest is not asked
                yield i, replace(denied, request=item)
                continue
            deleted = _via_gitlab(reg, item, on_saved)
            if deleted.reason == NO_DELETE_PERMISSION:
                denied = deleted
            yield i, deleted
    else:
        for n, (i, item) in enumerate(batch):
            result = _oci(reg, item, on_saved, fallback=method == "auto")
            if result is None:  # the registry cannot delete a tag: remember, and park the rest instead
                log.info("registry %s cannot delete tags; using the placeholder method", reg.base_url)
                reg.remember_tag_delete_unsupported()
                yield from _placeholder(reg, batch[n:], on_saved)
                return
            yield i, result


def _dry_run(reg: ProjectView, batch: Batch, method: str) -> Iterator[tuple[int, UntagResult]]:
    """Reads only: the guard tells what would happen, and the token's grants whether the write could.
    A token that may not even read is not sent to read each tag: every untag reports the finding."""
    refused = _refusal(reg, batch[0][1].repository, method)
    if refused is not None and (not isinstance(refused, NoDeletePermissionError) or "pull" not in refused.granted):
        for i, item in batch:
            yield i, _dry_run_refused(item, refused)
        return
    for i, item in batch:
        guard = _guard(reg, item)
        if isinstance(guard, UntagResult):
            yield i, guard
        else:
            yield i, UntagResult(item, "dry_run") if refused is None else _dry_run_refused(item, refused)


def _dry_run_refused(item: UntagRequest, refused: RegistryError) -> UntagResult:
    if isinstance(refused, NoDeletePermissionError):
        return UntagResult(item, "dry_run", NO_DELETE_PERMISSION, detail=str(refused))
    return _failed(item, refused)


def refusal(reg: ProjectView, repository: str, method: str) -> NoDeletePermissionError | None:
    """Why the project's token may not untag in ``repository`` by ``method``, read from the token (no
    registry request when it is cached); None when nothing is known to be missing, or the grants could
    not be read (the untag itself then meets and reports that error)."""
    if method not in UNTAG_METHODS:
        raise ValueError(f"unknown untag method {method!r}; expected one of {', '.join(UNTAG_METHODS)}")
    found = _refusal(reg, repository, method)
    return found if isinstance(found, NoDeletePermissionError) else None


def _refusal(reg: ProjectView, repository: str, method: str) -> RegistryError | None:
    """Why nothing may be written to ``repository`` by ``method``: the token lacks an action the method
    needs (``NoDeletePermissionError``), or its grants could not be read; None when nothing is known
    to be missing (a registry without auth, or a token that says nothing readable)."""
    try:
        granted = reg.granted_actions(repository)
    except RegistryError as exc:
        return exc
    untag_method = cast(UntagMethod, method)
    if granted is None or not missing_actions(granted, untag_method):
        return None
    return NoDeletePermissionError(
        f"{registry_fix(reg.project_path, repository, granted)}. Untagging with the {method} method needs "
        f"{','.join(actions_needed(untag_method))}; nothing was written, the tags keep their images. Retry "
        "the failed untags once the token is fixed",
        granted=granted,
    )


def _guard(reg: ProjectView, item: UntagRequest) -> UntagResult | Manifest | _Leftover:
    """S3, right before the write: the manifest to save if the tag still points at the expected digest."""
    try:
        current = reg.get_manifest(item.repository, item.tag)
        if current is None:
            return UntagResult(item, "skipped", "missing")
        if current.digest == item.expected_digest:
            return current
        if _is_leftover(reg, item.repository, current):
            return _Leftover(current.digest)
    except RegistryError as exc:
        return _failed(item, exc)
    return UntagResult(item, "skipped", "superseded")


def _write_guard(reg: ProjectView, item: UntagRequest) -> UntagResult | Manifest | _Leftover:
    """``_guard`` before a write. A tag found gone that an interrupted attempt saved (``item.saved``)
    was removed by that attempt's write: that untag is done, with the manifest it saved."""
    guard = _guard(reg, item)
    if isinstance(guard, UntagResult) and (guard.outcome, guard.reason) == ("skipped", "missing") \
            and item.saved is not None:
        return UntagResult(item, "done", None, item.saved)
    return guard


def _keep(on_saved: OnSaved | None, item: UntagRequest, manifest: Manifest, method: str) -> None:
    """Hand the manifest about to be untagged to the caller, who keeps it before the write is sent."""
    if on_saved is not None:
        on_saved(item, manifest, method)


def _is_leftover(reg: ProjectView, repository: str, manifest: Manifest) -> bool:
    config_digest = candidate_config(manifest)
    if config_digest is None:
        return False
    config = reg.get_blob(repository, config_digest)
    return config is not None and is_placeholder_config(config)


def _finish_leftover(
    reg: ProjectView, item: UntagRequest, leftover: _Leftover, on_saved: OnSaved | None
) -> UntagResult:
    """Delete the placeholder an interrupted run parked the tag on. The manifest is the one that run saved
    (``item.saved``), or else read by the digest the tag was guarded at (the image stays: only tags go)
    and kept before the delete."""
    saved = item.saved
    try:
        if saved is None:
            saved = reg.get_manifest(item.repository, item.expected_digest)
            if saved is not None:
                _keep(on_saved, item, saved, "placeholder")
        reg.delete_placeholder(item.repository, leftover.digest)
    except RegistryError as exc:
        if exc.status != 404:
            return _failed(item, exc)
        if item.saved is None:
            return UntagResult(item, "skipped", "missing")
        # deleted already (by a run that recorded nothing): the tags parked on it went with it
    return UntagResult(item, "done", None, saved, "placeholder")


def _oci(reg: ProjectView, item: UntagRequest, on_saved: OnSaved | None, *, fallback: bool) -> UntagResult | None:
    """``DELETE /v2/<repo>/manifests/<tag>``; None when ``fallback`` and the registry cannot do that."""
    guard = _write_guard(reg, item)
    if isinstance(guard, UntagResult):
        return guard
    if isinstance(guard, _Leftover):
        return _finish_leftover(reg, item, guard, on_saved)
    _keep(on_saved, item, guard, "oci")
    try:
        reg.delete_tag(item.repository, item.tag)
    except RegistryError as exc:
        if exc.status == 404:
            return UntagResult(item, "skipped", "missing")
        unsupported = exc.status in _NO_TAG_DELETE_STATUS or bool(_NO_TAG_DELETE_CODES & set(exc.codes))
        if fallback and unsupported and isinstance(exc, PermanentRegistryError):
            return None
        return _failed(item, exc)
    return UntagResult(item, "done", None, guard, "oci")


def _via_gitlab(reg: ProjectView, item: UntagRequest, on_saved: OnSaved | None) -> UntagResult:
    guard = _write_guard(reg, item)
    if isinstance(guard, UntagResult):
        return guard
    if isinstance(guard, _Leftover):
        return _finish_leftover(reg, item, guard, on_saved)
    assert reg.tag_deleter is not None
    _keep(on_saved, item, guard, "gitlab-api")
    try:
        reg.tag_deleter.delete_tag(reg.project_path, item.repository, item.tag)
    except TagNotFoundError:
        return UntagResult(item, "skipped", "missing")
    except Exception as exc:  # foreign code: one failing tag must not lose the results of the others
        return _failed(item, exc)
    return UntagResult(item, "done", None, guard, "gitlab-api")


def _placeholder(reg: ProjectView, batch: Batch, on_saved: OnSaved | None) -> Iterator[tuple[int, UntagResult]]:
    """``placeholder_batch`` tags at a time. With lanes, a batch's placeholder is deleted in one of them
    while the next batch is parked (a registry deletes a manifest in time that grows with the
    repository's tags); every delete sent is waited for before this returns or raises."""
    size = reg.placeholder_batch
    lanes = reg.lanes()
    deleting: list[Future[list[tuple[int, UntagResult]]]] = []
    try:
        for start in range(0, len(batch), size):
            settled, delete = _placeholder_chunk(reg, batch[start : start + size], on_saved)
            yield from settled
            if lanes is None:
                yield from delete()
            else:
                deleting.append(lanes.submit(delete))
    except BaseException:
        wait(deleting)
        raise
    for future in deleting:
        yield from future.result()


def _placeholder_chunk(
    reg: ProjectView, chunk: Batch, on_saved: OnSaved | None
) -> tuple[list[tuple[int, UntagResult]], Callable[[], list[tuple[int, UntagResult]]]]:
    """Park each guarded tag on one fresh placeholder, its manifest kept first; returns the untags settled
    without that, and the delete of that one digest that finishes the parked ones. With lanes
    (``reg.lanes()``) several tags are guarded and parked at once, each still guarded right before its
    own write and its manifest kept between the two."""
    repository = chunk[0][1].repository
    placeholder = new_placeholder()
    try:  # before any guard, so each guard is followed directly by its PUT
        reg.upload_blob(repository, placeholder.config, placeholder.config_digest)
        if not reg.placeholder_delete_works:
            _probe_delete(reg, repository, placeholder)
    except RegistryError as exc:
        return [(i, _failed(item, exc)) for i, item in chunk], lambda: []

    def park(i: int, item: UntagRequest) -> tuple[int, UntagResult | Manifest]:
        """The tag parked (the manifest kept before it), or how its untag ended without that."""
        guard = _write_guard(reg, item)
        if isinstance(guard, UntagResult):
            return i, guard
        if isinstance(guard, _Leftover):
            return i, _finish_leftover(reg, item, guard, on_saved)
        _keep(on_saved, item, guard, "placeholder")
        try:
            reg.put_manifest(repository, item.tag, placeholder.manifest)
        except RegistryError as exc:
            return i, UntagResult(item, "skipped", "missing") if exc.status == 404 else _failed(item, exc)
        return i, guard

    items = dict(chunk)
    settled: list[tuple[int, UntagResult]] = []
    parked: list[tuple[int, UntagRequest, Manifest]] = []
    for i, outcome in _in_lanes(reg.lanes(), park, chunk):
        if isinstance(outcome, UntagResult):
            settled.append((i, outcome))
        else:
            parked.append((i, items[i], outcome))
    return settled, lambda: _delete_parked(reg, repository, placeholder.manifest.digest, parked)


def _delete_parked(reg: ProjectView, repository: str, digest: str,
                   parked: list[tuple[int, UntagRequest, Manifest]]) -> list[tuple[int, UntagResult]]:
    """Delete the placeholder ``parked`` tags point at: they are done, or failed when it stays."""
    if not parked:
        return []
    try:
        reg.delete_placeholder(repository, digest)
    except RegistryError as exc:
        if exc.status != 404:  # 404: someone deleted it already, so the tags are gone all the same
            reason = (f"placeholder_left: the tag points at placeholder {digest}, whose delete failed "
                      f"({failure_parts(exc)[1]}); retrying the untag finishes it")
            return [(i, UntagResult(item, "failed", reason, saved, "placeholder", detail=failure_detail(exc)))
                    for i, item, saved in parked]
    return [(i, UntagResult(item, "done", None, saved, "placeholder")) for i, item, saved in parked]


def _in_lanes(lanes: Executor | None, work: Callable[[int, UntagRequest], _T], batch: Batch) -> list[_T]:
    """``work`` for each item of ``batch``: one after another without ``lanes``, else side by side in
    them. An exception (the caller could not keep a manifest: an interruption) stops it the same way
    either way: no item not yet begun is begun, the writes already sent finish, and the first exception
    is raised once they have."""
    if lanes is None or len(batch) < 2:
        return [work(i, item) for i, item in batch]
    stop = threading.Event()

    def lane(i: int, item: UntagRequest) -> _T | None:
        if stop.is_set():
            return None
        try:
            return work(i, item)
        except BaseException:
            stop.set()
            raise

    futures = [lanes.submit(lane, i, item) for i, item in batch]
    done: list[_T] = []
    failure: BaseException | None = None
    for future in futures:
        try:
            result = future.result()
        except BaseException as exc:
            failure = failure or exc
            continue
        if result is not None:
            done.append(result)
    if failure is not None:
        raise failure
    return done


def _probe_delete(reg: ProjectView, repository: str, placeholder: Placeholder) -> None:
    """Once per registry: check it deletes manifests at all before parking any tag on a placeholder."""
    manifest = placeholder.manifest
    reg.put_manifest(repository, manifest.digest, manifest)
    try:
        reg.delete_placeholder(repository, manifest.digest)
    except PermanentRegistryError as exc:
        if exc.status == 405:
            raise PermanentRegistryError(
                f"registry {reg.base_url} does not delete manifests (HTTP 405); enable "
                "storage.delete.enabled in its configuration, or use untag_method gitlab-api",
                status=exc.status,
                codes=exc.codes,
            ) from exc
        raise
    reg.remember_placeholder_delete_works()


def restore(reg: ProjectView, repository: str, tag: str, manifest: Manifest) -> None:
    """Put ``tag`` back at ``manifest``, unless the tag was pushed again since (``RestoreConflictError``)."""
    reg.check_scope(repository)
    if sha256_digest(manifest.body) != manifest.digest:
        raise RestoreError(
            f"the saved manifest of {repository}:{tag} does not hash to {manifest.digest}; it cannot be "
            "restored from this record. Push the image again from its pipeline"
        )
    current = reg.head(repository, tag)
    if current == manifest.digest:
        return
    if current is not None:
        found = reg.get_manifest(repository, tag)
        if found is not None and not _is_leftover(reg, repository, found):
            raise RestoreConflictError(
                f"{repository}:{tag} now points at {found.digest}, pushed after the untag; not overwriting "
                f"it. To get {manifest.digest} back, restore it under another tag"
            )
    try:
        stored = reg.put_manifest(repository, tag, manifest)
    except PermanentRegistryError as exc:
        if _BLOBS_GONE_CODES & set(exc.codes) or exc.status == 404:
            raise RestoreError(
                f"cannot restore {repository}:{tag}: the registry no longer holds what {manifest.digest} "
                f"refers to (HTTP {exc.status}{' ' + ', '.join(sorted(set(exc.codes))) if exc.codes else ''}), "
                "probably removed by garbage collection; rebuild the image (rerun the pipeline that pushed "
                "it) and push it again",
                status=exc.status,
                codes=exc.codes,
            ) from exc
        raise
    if stored != manifest.digest:
        raise RestoreError(f"restoring {repository}:{tag} stored {stored}, not {manifest.digest}")


def _failed(item: UntagRequest, exc: Exception) -> UntagResult:
    """A failed untag: its reason ``<code>: <one sentence>``, the whole exception in ``detail``."""
    if isinstance(exc, NoDeletePermissionError):
        return UntagResult(item, "failed", NO_DELETE_PERMISSION, detail=str(exc))
    return UntagResult(item, "failed", failure_reason(exc), detail=failure_detail(exc))
