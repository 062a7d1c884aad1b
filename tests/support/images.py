"""Test images in the real registry, over plain HTTP: push, inspect, and untag one tag safely.

A small but real distribution client (blob upload in two steps, manifest PUT, HEAD with the Accept
headers a registry needs to answer for every manifest kind). It talks to anything with a `url` and a
`requests.Session` that authenticates (the `Registry` fixture, or the stand-in's own access).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import uuid
from typing import Any, Protocol
from urllib.parse import urljoin

import requests

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG_V2 = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_V2 = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT_MANIFESTS = ", ".join([MANIFEST_V2, OCI_MANIFEST, OCI_INDEX, MANIFEST_LIST])
#: The build time of a seeded image (the same seed gives the same digest).
SEEDED_CREATED = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)

_CONFIG_FOR = {MANIFEST_V2: CONFIG_V2, OCI_MANIFEST: OCI_CONFIG}
_LAYER_FOR = {MANIFEST_V2: LAYER_V2, OCI_MANIFEST: OCI_LAYER}
_INDEX_CHILD = {OCI_INDEX: OCI_MANIFEST, MANIFEST_LIST: MANIFEST_V2}


class RegistryLike(Protocol):
    """What the helpers need: the API base and a session that authenticates as admin."""

    @property
    def url(self) -> str: ...

    @property
    def session(self) -> requests.Session: ...


class RegistryError(AssertionError):
    """The registry answered something a helper did not expect (shows status and body)."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check(response: requests.Response, *expected: int) -> requests.Response:
    if response.status_code not in expected:
        raise RegistryError(
            f"{response.request.method} {response.url} -> {response.status_code} "
            f"(expected {expected}): {response.text[:500]}"
        )
    return response


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=3, sort_keys=False).encode()


def blob_exists(reg: RegistryLike, repo: str, digest: str) -> bool:
    response = reg.session.head(f"{reg.url}/v2/{repo}/blobs/{digest}")
    return _check(response, 200, 404).status_code == 200


def upload_blob(reg: RegistryLike, repo: str, data: bytes) -> str:
    """Upload `data` as a blob of `repo` (POST then PUT, as docker does); returns its digest."""
    digest = sha256_digest(data)
    if blob_exists(reg, repo, digest):
        return digest
    started = _check(reg.session.post(f"{reg.url}/v2/{repo}/blobs/uploads/"), 202)
    location = urljoin(reg.url, started.headers["Location"])
    separator = "&" if "?" in location else "?"
    _check(
        reg.session.put(
            f"{location}{separator}digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        ),
        201,
    )
    return digest


def put_manifest(reg: RegistryLike, repo: str, reference: str, body: bytes, media_type: str) -> str:
    """PUT a manifest under a tag or digest; returns the digest the registry computed."""
    response = _check(
        reg.session.put(
            f"{reg.url}/v2/{repo}/manifests/{reference}", data=body, headers={"Content-Type": media_type}
        ),
        201,
    )
    digest = response.headers["Docker-Content-Digest"]
    if digest != sha256_digest(body):
        raise RegistryError(f"registry digest {digest} differs from the body's {sha256_digest(body)}")
    return digest


def get_manifest(reg: RegistryLike, repo: str, reference: str) -> tuple[bytes, str, str] | None:
    """(body, media type, digest) of a manifest, or None when the tag or digest is unknown."""
    response = reg.session.get(
        f"{reg.url}/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT_MANIFESTS}
    )
    if _check(response, 200, 404).status_code == 404:
        return None
    return response.content, response.headers["Content-Type"], response.headers["Docker-Content-Digest"]


def get_blob(reg: RegistryLike, repo: str, digest: str) -> bytes | None:
    """A blob's bytes (GET /v2/<repo>/blobs/<digest>), or None when the registry holds no such blob."""
    response = reg.session.get(f"{reg.url}/v2/{repo}/blobs/{digest}")
    if _check(response, 200, 404).status_code == 404:
        return None
    return response.content


def delete_manifest(reg: RegistryLike, repo: str, reference: str) -> requests.Response:
    """DELETE /v2/<repo>/manifests/<reference>, unchecked: tests look at what the registry answers."""
    return reg.session.delete(f"{reg.url}/v2/{repo}/manifests/{reference}")


def _image_parts(size: int, seed: int | None, media_type: str,
                 created: str) -> tuple[bytes, bytes, bytes]:
    """(layer, config, manifest) bytes of a one-layer image; the same seed (and `created`) gives the same
    image."""
    if media_type not in _CONFIG_FOR:
        raise ValueError(f"push_image builds {sorted(_CONFIG_FOR)}, not {media_type}")
    layer = os.urandom(size) if seed is None else random.Random(seed).randbytes(size)
    config = _canonical(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Labels": {"test.image": str(uuid.uuid4()) if seed is None else f"seed-{seed}"}},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer)]},
        }
    )
    manifest = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": _CONFIG_FOR[media_type],
                "size": len(config),
                "digest": sha256_digest(config),
            },
            "layers": [
                {"mediaType": _LAYER_FOR[media_type], "size": len(layer), "digest": sha256_digest(layer)}
            ],
        }
    )
    return layer, config, manifest


def push_image(
    reg: RegistryLike,
    repo: str,
    tags: list[str] | tuple[str, ...] | str,
    *,
    size: int = 1024,
    seed: int | None = None,
    media_type: str = MANIFEST_V2,
    created: dt.datetime | None = None,
) -> str:
    """Push a one-layer image and point every tag at it; returns the manifest digest.

    `seed=None` makes a new, unique image each call, built now (its config's `created`, which GitLab shows
    as the tag's `created_at`); a given seed always gives the same digest (built at `SEEDED_CREATED`, as a
    reproducible build is). `created` sets the build time. `tags` may be empty: the image is then pushed
    by digest only (untagged).
    """
    tag_list = [tags] if isinstance(tags, str) else list(tags)
    if created is None:
        created = dt.datetime.now(dt.UTC) if seed is None else SEEDED_CREATED
    spec = "microseconds" if created.microsecond else "seconds"
    stamp = created.astimezone(dt.UTC).isoformat(timespec=spec).replace("+00:00", "Z")
    layer, config, manifest = _image_parts(size, seed, media_type, stamp)
    upload_blob(reg, repo, layer)
    upload_blob(reg, repo, config)
    digest = sha256_digest(manifest)
    for reference in tag_list or [digest]:
        put_manifest(reg, repo, reference, manifest, media_type)
    return digest


def push_index(
    reg: RegistryLike,
    repo: str,
    tags: list[str] | tuple[str, ...] | str,
    *,
    seed: int | None = None,
    media_type: str = OCI_INDEX,
    size: int = 512,
) -> str:
    """Push two images (amd64, arm64) by digest and an index over them; tag the index; returns its digest."""
    if media_type not in _INDEX_CHILD:
        raise ValueError(f"push_index builds {sorted(_INDEX_CHILD)}, not {media_type}")
    child_type = _INDEX_CHILD[media_type]
    entries = []
    for n, arch in enumerate(("amd64", "arm64")):
        child_seed = None if seed is None else seed * 10 + n
        child = push_image(reg, repo, [], size=size, seed=child_seed, media_type=child_type)
        body = get_manifest(reg, repo, child)
        assert body is not None
        entries.append(
            {
                "mediaType": child_type,
                "size": len(body[0]),
                "digest": child,
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    index = _canonical({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    tag_list = [tags] if isinstance(tags, str) else list(tags)
    digest = sha256_digest(index)
    for reference in tag_list or [digest]:
        put_manifest(reg, repo, reference, index, media_type)
    return digest


def tags(reg: RegistryLike, repo: str) -> list[str]:
    """Every tag of `repo` (following pagination); [] when the repository is unknown or empty."""
    found: list[str] = []
    url: str | None = f"{reg.url}/v2/{repo}/tags/list?n=1000"
    while url:
        response = _check(reg.session.get(url), 200, 404)
        if response.status_code == 404:
            return []
        found.extend(response.json().get("tags") or [])
        next_link = response.links.get("next", {}).get("url")
        url = urljoin(reg.url, next_link) if next_link else None
    return sorted(found)


def digest_of(reg: RegistryLike, repo: str, tag: str) -> str | None:
    """The digest `tag` points at (HEAD, any manifest kind), or None when it does not exist."""
    response = reg.session.head(f"{reg.url}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT_MANIFESTS})
    if _check(response, 200, 404).status_code == 404:
        return None
    return response.headers["Docker-Content-Digest"]


def catalog(reg: RegistryLike) -> list[str]:
    """Every repository name the registry holds (needs `registry:catalog:*`)."""
    found: list[str] = []
    url: str | None = f"{reg.url}/v2/_catalog?n=1000"
    while url:
        response = _check(reg.session.get(url), 200)
        found.extend(response.json().get("repositories") or [])
        next_link = response.links.get("next", {}).get("url")
        url = urljoin(reg.url, next_link) if next_link else None
    return found


def push_placeholder(reg: RegistryLike, repo: str, tag_list: list[str]) -> str:
    """Point `tag_list` at a new, unique, empty manifest; returns its digest."""
    config = _canonical(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"registry-janitor.placeholder": str(uuid.uuid4())}},
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    )
    upload_blob(reg, repo, config)
    manifest = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG_V2, "size": len(config), "digest": sha256_digest(config)},
            "layers": [],
        }
    )
    digest = sha256_digest(manifest)
    for tag in tag_list:
        put_manifest(reg, repo, tag, manifest, MANIFEST_V2)
    return digest


def untag(reg: RegistryLike, repo: str, tag: str) -> bool:
    """Remove just `tag` (placeholder technique), keeping the image and its other tags.

    Returns False when the tag does not exist. The only manifest deleted by digest is the placeholder.
    """
    if digest_of(reg, repo, tag) is None:
        return False
    placeholder = push_placeholder(reg, repo, [tag])
    _check(delete_manifest(reg, repo, placeholder), 202, 404)
    return True
