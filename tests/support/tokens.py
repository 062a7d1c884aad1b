"""Registry bearer tokens, signed the way GitLab signs them.

Owns the stand-in's signing key and certificate (the registry's `rootcertbundle`), the libtrust key id
the registry matches against the JWT `kid` header, and a `requests` auth that lets test helpers talk to
the registry as an administrator without going through `/jwt/auth` (so helper traffic never shows up in
the stand-in's call counters that tests assert on).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

Access = list[dict[str, Any]]

DEFAULT_SERVICE = "container_registry"
DEFAULT_ISSUER = "gitlab-standin"


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """The key id docker/libtrust derives from a public key; distribution matches it to the JWT `kid`."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class TokenIssuer:
    """An RSA key and a self-signed certificate; signs RS256 registry tokens with a libtrust `kid`."""

    def __init__(self, *, issuer: str = DEFAULT_ISSUER, service: str = DEFAULT_SERVICE) -> None:
        self.issuer = issuer
        self.service = service
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .sign(self._key, hashes.SHA256())
        )
        self.kid = libtrust_key_id(self._key.public_key())
        self._pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        subject: str,
        access: Access,
        *,
        lifetime: float = 300,
        now: float | None = None,
        kid: str | None = None,
        audience: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Sign a token; returns it with its claims. `kid`/`audience` overrides exist to test rejection."""
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience or self.service,
            "exp": issued + int(lifetime),
            "nbf": issued - 5,  # GitLab backdates nbf by 5 s against clock skew
            "iat": issued,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        token = jwt.encode(claims, self._pem, algorithm="RS256", headers={"kid": kid or self.kid})
        return token, claims


def parse_scopes(values: Sequence[str]) -> list[tuple[str, str, list[str]]]:
    """`repository:group/app:pull,push` -> (type, name, actions); several scopes may share one value."""
    scopes = []
    for value in values:
        for scope in value.split():
            kind, sep, rest = scope.partition(":")
            name, sep2, actions = rest.rpartition(":")
            if not sep or not sep2 or not name:
                continue
            scopes.append((kind, name, [a for a in actions.split(",") if a]))
    return scopes


_V2_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?:manifests|blobs|tags)/")


class AdminRegistryAuth(requests.auth.AuthBase):
    """Bearer auth for test helpers: an admin token scoped to the repository the URL names."""

    def __init__(self, issuer: TokenIssuer, *, lifetime: float = 600) -> None:
        self._issuer = issuer
        self._lifetime = lifetime
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def token_for(self, path: str) -> str:
        if path.startswith("/v2/_catalog"):
            scope, access = "catalog", [{"type": "registry", "name": "catalog", "actions": ["*"]}]
        else:
            match = _V2_PATH.match(path)
            if match is None:
                scope, access = "", []
            else:
                name = match.group("name")
                scope = name
                access = [{"type": "repository", "name": name, "actions": ["pull", "push", "delete"]}]
        with self._lock:
            cached = self._cache.get(scope)
            if cached and cached[1] > time.time() + 30:
                return cached[0]
            token, claims = self._issuer.issue("root", access, lifetime=self._lifetime)
            self._cache[scope] = (token, claims["exp"])
            return token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        path = urlsplit(r.url or "").path
        r.headers["Authorization"] = f"Bearer {self.token_for(path)}"
        return r
