"""One project's view of the registry: the requests themselves, every one scoped to the project (S6).

Owns: manifest reads and writes, tag and placeholder deletes, blob reads and uploads, tag listing, and
the auth dance per request (cached token upfront; on 401 learn the challenge, refresh once, then
``RegistryAuthError``). ``_request`` checks that the repository is the project's path or below it before
anything is sent. Implements ``types.ProjectView`` for ``untag``. Must not: decide what to untag, touch
storage, or delete a manifest by digest except the janitor's own placeholder (``delete_placeholder``,
S5; ``delete_tag`` refuses anything but a tag).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from urllib.parse import urljoin, urlsplit

import requests

from daemon.registry import untag as _untag
from daemon.registry.auth import fetch_token, granted_actions, parse_challenge
from daemon.registry.errors import (
    NoDeletePermissionError,
    OutOfScopeError,
    PermanentRegistryError,
    RegistryAuthError,
)
from daemon.registry.names import checked_ref, in_project_path, is_digest
from daemon.registry.site import RegistrySite
from daemon.registry.transport import raise_for_status
from daemon.registry.types import (
    MANIFEST_MEDIA_TYPES,
    Manifest,
    OnSaved,
    TagDeleter,
    UntagRequest,
    UntagResult,
    sha256_digest,
)

_ACCEPT = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
#: Tags per page when listing; distribution accepts up to 1000.
TAG_PAGE = 1000


class ProjectRegistry:
    """The registry as one project sees it. Every request it makes is scoped to ``project_path`` (S6)."""

    def __init__(
        self,
        site: RegistrySite,
        project_path: str,
        registry_token: str,
        tag_deleter: TagDeleter | None,
    ) -> None:
        self.site = site
        self.project_path = project_path
        self.tag_deleter = tag_deleter
        self._registry_token = registry_token

    def __repr__(self) -> str:  # never show the token
        return f"ProjectRegistry({self.site.base_url!r}, {self.project_path!r})"

    @property
    def base_url(self) -> str:
        return self.site.base_url

    @property
    def placeholder_batch(self) -> int:
        """Most tags parked on one placeholder before it is deleted (shared by the registry's views)."""
        return self.site.placeholder_batch

    def lanes(self) -> Executor | None:
        """The threads a placeholder batch's tags are guarded and parked in side by side (shared by the
        registry's views); None when they go one after another."""
        return self.site.lanes()

    @property
    def auto_method(self) -> str:
        """What ``auto`` uses on this registry now: ``oci`` until the registry refused a tag delete."""
        return self.site.auto_method

    def remember_tag_delete_unsupported(self) -> None:
        self.site.remember_tag_delete_unsupported()

    @property
    def placeholder_delete_works(self) -> bool:
        """True once a placeholder was deleted on this registry (by any project's view)."""
        return self.site.placeholder_delete_works

    def remember_placeholder_delete_works(self) -> None:
        self.site.remember_placeholder_delete_works()

    def check_scope(self, repository: str) -> None:
        """Raise ``OutOfScopeError`` unless the repository is the project's path or below it."""
        if not in_project_path(self.project_path, repository):
            raise OutOfScopeError(
                f"repository {repository!r} is outside project {self.project_path!r}; "
                "the janitor only touches the project's own path and the repositories below it"
            )

    def head(self, repository: str, ref: str) -> str | None:
        """The digest ``ref`` (a tag or digest) points at, or None when absent."""
        resp = self._request("HEAD", repository, f"manifests/{checked_ref(ref)}", headers=_ACCEPT)
        if resp.status_code == 404:
            return None
        raise_for_status(resp, f"HEAD {repository}:{ref}")
        digest = resp.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        found = self.get_manifest(repository, ref)
        return found.digest if found else None

    def get_manifest(self, repository: str, ref: str) -> Manifest | None:
        """The manifest exactly as stored (any of the four media types), or None when absent."""
        resp = self._request("GET", repository, f"manifests/{checked_ref(ref)}", headers=_ACCEPT)
        if resp.status_code == 404:
            return None
        raise_for_status(resp, f"GET {repository}:{ref}")
        body = resp.content
        computed = sha256_digest(body)
        claimed = resp.headers.get("Docker-Content-Digest") or computed
        expected = ref if is_digest(ref) else claimed
        if expected.startswith("sha256:") and expected != computed:
            raise PermanentRegistryError(
                f"GET {repository}:{ref}: manifest bytes hash to {computed}, not {expected}; "
                "a proxy between the janitor and the registry may be rewriting them"
            )
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return Manifest(expected, _media_type(media_type, body), body)

    def put_manifest(self, repository: str, ref: str, manifest: Manifest) -> str:
        """Store ``manifest`` under ``ref``; returns the digest the registry computed."""
        resp = self._request(
            "PUT",
            repository,
            f"manifests/{checked_ref(ref)}",
            headers={"Content-Type": manifest.media_type},
            data=manifest.body,
        )
        raise_for_status(resp, f"PUT {repository}:{ref}")
        return resp.headers.get("Docker-Content-Digest") or manifest.digest

    def list_tags(self, repository: str) -> list[str]:
        """Every tag of the repository (following ``Link`` pages); empty when the repository is unknown."""
        tags: list[str] = []
        url: str | None = None
        while True:
            if url is None:
                resp = self._request("GET", repository, "tags/list", params={"n": str(TAG_PAGE)})
            else:
                resp = self._request("GET", repository, url=url)
            if resp.status_code == 404:
                return tags
            raise_for_status(resp, f"list tags of {repository}")
            tags.extend(resp.json().get("tags") or [])
            following = resp.links.get("next", {}).get("url")
            if not following:
                return tags
            url = urljoin(f"{self.site.base_url}/v2/{repository}/tags/list", following)

    def tag_count(self, repository: str) -> int | None:
        """How many tags the repository holds now (for the bulk guard's fraction rule, S7)."""
        return len(self.list_tags(repository))

    def restore(self, repository: str, tag: str, manifest: Manifest) -> None:
        """Put ``tag`` back at the saved manifest. ``RestoreError`` when the registry lost its blobs."""
        _untag.restore(self, repository, tag, manifest)

    def untag(
        self,
        requests_: Sequence[UntagRequest],
        *,
        method: str = "auto",
        dry_run: bool = False,
        on_saved: OnSaved | None = None,
    ) -> list[UntagResult]:
        """Untag each request's tag, guarded by S3/S5/S6; one result per request, in order. ``on_saved``
        is given each manifest before its write (``types.OnSaved``)."""
        return _untag.untag(self, requests_, method=method, dry_run=dry_run, on_saved=on_saved)

    def untag_refusal(self, repository: str, method: str = "auto") -> NoDeletePermissionError | None:
        """Why this project's token may not untag in ``repository`` by ``method`` (it was not granted
        ``delete``, or another action the method needs), read from the token before any write; None when
        nothing is known to be missing."""
        return _untag.refusal(self, repository, method)

    def delete_tag(self, repository: str, tag: str) -> None:
        """``DELETE /v2/<repo>/manifests/<tag>``: removes that one tag (registries that support it).

        Refuses a digest before any request: a delete by digest removes every tag on it (S5).
        """
        if is_digest(checked_ref(tag)):
            raise PermanentRegistryError(
                f"{tag!r} is not a tag; the janitor deletes a manifest by digest only for its own placeholder"
            )
        resp = self._request("DELETE", repository, f"manifests/{tag}")
        raise_for_status(resp, f"DELETE {repository}:{tag}")

    def delete_placeholder(self, repository: str, digest: str) -> None:
        """``DELETE /v2/<repo>/manifests/<digest>`` of a placeholder the janitor pushed itself.

        The one manifest delete by digest the janitor makes (S5). ``digest`` must name a unique placeholder
        from ``placeholder.new_placeholder``, or one whose config carries the placeholder label (left by an
        interrupted run): no other tag points at it, so deleting it removes exactly the tags parked on it.
        Callers guarantee that; this method only refuses a reference that is not a digest.
        """
        if not is_digest(checked_ref(digest)):
            raise PermanentRegistryError(f"{digest!r} is not a digest; a placeholder is deleted by its digest")
        resp = self._request("DELETE", repository, f"manifests/{digest}")
        raise_for_status(resp, f"DELETE {repository}:{digest}")

    def get_blob(self, repository: str, digest: str) -> bytes | None:
        """The blob's bytes, or None when the registry does not hold it."""
        resp = self._request("GET", repository, f"blobs/{checked_ref(digest)}")
        if resp.status_code == 404:
            return None
        raise_for_status(resp, f"GET blob {repository}@{digest}")
        return resp.content

    def upload_blob(self, repository: str, data: bytes, digest: str) -> None:
        """Monolithic upload in two steps (POST, then PUT with the digest): distribution 2.8 needs both."""
        resp = self._request("POST", repository, "blobs/uploads/")
        raise_for_status(resp, f"start blob upload to {repository}")
        location = resp.headers.get("Location")
        if resp.status_code != 202 or not location:
            raise PermanentRegistryError(f"start blob upload to {repository}: no upload location")
        url = urljoin(f"{self.site.base_url}/v2/{repository}/blobs/uploads/", location)
        resp = self._request(
            "PUT",
            repository,
            url=url,
            params={"digest": digest},
            headers={"Content-Type": "application/octet-stream"},
            data=data,
        )
        raise_for_status(resp, f"finish blob upload to {repository}")

    def _request(
        self,
        method: str,
        repository: str,
        path: str = "",
        *,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send with the cached token; on 401 learn the challenge, refresh once, then give up."""
        self.check_scope(repository)
        site = self.site
        if url is None:
            url = f"{site.base_url}/v2/{repository}/{path}"
        elif _origin(url) != _origin(site.base_url):
            raise PermanentRegistryError(f"registry sent the janitor to another host: {url}")
        key = (self.project_path, repository)
        token, fresh = self._token(repository)
        for refreshed in (False, True):
            resp = site.transport.send(method, url, headers=_auth(headers, token), data=data, params=params)
            if resp.status_code != 401:
                if token is None and site.challenge is None:
                    site.remember_serves_without_token()
                return resp
            if token is not None:
                site.tokens.invalidate(key, token)
            site.learn_challenge(resp)
            if refreshed or fresh:
                break
            token, fresh = self._token(repository)
        refused = parse_challenge(resp.headers.get("WWW-Authenticate"))
        error = refused.params.get("error") if refused else None
        raise RegistryAuthError(
            f"registry refused access to {repository} for project {self.project_path}"
            f"{f' ({error})' if error else ''}; check the project's registry_token (it needs pull, push "
            f"and delete on {self.project_path})",
            status=401,
        )

    def granted_actions(self, repository: str) -> frozenset[str] | None:
        """What this project's registry token may do on ``repository`` (``pull``, ``push``, ``delete``),
        read from the token the registry's token service issued; None when the registry asks for no
        token or issues tokens the janitor cannot read (then nothing is known to be missing).

        Uses the cached token when there is one, else asks the token service; only while the registry's
        challenge is not known yet does it send one ``GET /v2/`` to learn it."""
        self.check_scope(repository)
        if self.site.challenge is None and not self.site.serves_without_token:
            self.probe(repository)
        token, _ = self._token(repository)
        return None if token is None else granted_actions(token, repository)

    def probe(self, repository: str) -> None:
        """One cheap authenticated read (``GET /v2/``), so the registry's challenge and a token for
        ``repository`` are known."""
        resp = self._request("GET", repository, url=f"{self.site.base_url}/v2/")
        raise_for_status(resp, f"reach the registry for {repository}")

    def _token(self, repository: str) -> tuple[str | None, bool]:
        challenge = self.site.challenge
        if challenge is None:
            return None, False
        return self.site.tokens.get(
            (self.project_path, repository),
            lambda: fetch_token(self.site.transport, challenge, self.project_path, repository, self._registry_token,
                                realms=self.site.realms),
        )


def _auth(headers: Mapping[str, str] | None, token: str | None) -> dict[str, str]:
    out = dict(headers or {})
    if token is not None:
        out["Authorization"] = f"Bearer {token}"
    return out


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _media_type(header: str, body: bytes) -> str:
    if header in MANIFEST_MEDIA_TYPES:
        return header
    try:
        declared = json.loads(body).get("mediaType")
    except (ValueError, AttributeError):
        declared = None
    return declared if isinstance(declared, str) and declared else header
