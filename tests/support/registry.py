"""A real CNCF distribution registry (Debian's `docker-registry`, 2.8) for the test session.

The process itself (free port, storage folder, readiness, teardown) is started by the product's own
launcher, `daemon.demo.env.LocalRegistry`; this adds token auth and its access log
(Combined Log Format on stdout) parsed into (method, path, status) so a test can prove which requests
were sent. Auth is GitLab-style token auth whose realm is the stand-in; notifications go to the
stand-in's `/registry-relay`, which forwards them to whatever target the current test set.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import requests

from daemon.demo.env import LocalRegistry, StageError, find_registry_binary

from .tokens import AdminRegistryAuth, TokenIssuer

BINARY = "/usr/bin/docker-registry"
INSTALL_HINT = (
    "the registry binary {binary} is missing: run `.ci/run` (it installs what the tests need) "
    "or `apt-get install -y docker-registry`"
)
# 127.0.0.1 - - [28/Nov/2025:00:55:00 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "python-requests/2.32"
_ACCESS_LINE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<target>\S+) [^"]*" (?P<status>\d{3}) '
)
_SENTINEL_PATH = "/v2/"


class LoggedRequest(NamedTuple):
    """One line of the registry's access log. `path` has no query string."""

    method: str
    path: str
    status: int


class Registry(LocalRegistry):
    """The product's local registry launcher (`daemon.demo.env.LocalRegistry`), with GitLab-style token
    auth, notifications to the stand-in's relay, and its access log kept on stdout."""

    def __init__(
        self,
        workdir: Path,
        *,
        realm: str,
        issuer: TokenIssuer,
        notification_url: str | None = None,
        binary: str = BINARY,
    ) -> None:
        super().__init__(binary, workdir)
        self.realm = realm
        self.issuer = issuer
        self.notification_url = notification_url
        self.notification_token = secrets.token_urlsafe(24)
        self.access_log_path = self.stdout_path = workdir / "access.log"
        self.config_path = workdir / "config.yml"
        self._mark = 0
        self._session: requests.Session | None = None

    # -- addresses ------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """host:port, as it appears in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def session(self) -> requests.Session:
        """A session that authenticates as admin on whatever repository a URL names."""
        if self._session is None:
            self._session = requests.Session()
            self._session.auth = AdminRegistryAuth(self.issuer)
        return self._session

    def token(self, access: list[dict[str, object]], *, lifetime: float = 300, subject: str = "root") -> str:
        """A token for exactly `access`, signed like the stand-in's (for tests that need a raw token)."""
        return self.issuer.issue(subject, access, lifetime=lifetime)[0]

    # -- lifecycle ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        cert = self.workdir / "token-cert.pem"
        cert.write_bytes(self.issuer.cert_pem)
        config = super().config()
        config["log"] = {"level": "info", "formatter": "text", "accesslog": {"disabled": False}}
        config["auth"] = {"token": {"realm": self.realm, "service": self.issuer.service,
                                    "issuer": self.issuer.issuer, "rootcertbundle": str(cert)}}
        if self.notification_url:
            config["notifications"] = {"endpoints": [{
                "name": "relay",
                "url": self.notification_url,
                "headers": {"Authorization": [f"Bearer {self.notification_token}"]},
                "timeout": "2s",
                "threshold": 3,
                "backoff": "200ms",
            }]}
        return config

    def is_ready(self, response: requests.Response) -> bool:
        if response.status_code == 401 and "Bearer" in response.headers.get("WWW-Authenticate", ""):
            self._mark = self._sync()
            return True
        raise StageError(f"/v2/ answered {response.status_code}, not a token challenge")

    def start(self, *, timeout: float = 10.0) -> Registry:
        binary = find_registry_binary(self.binary)
        if binary is None:
            raise StageError(INSTALL_HINT.format(binary=self.binary))
        self.binary = binary
        return super().start(timeout)

    def stop(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        super().stop()

    def log_text(self) -> str:
        """The registry's own log (stderr) followed by its access log, for failure messages."""
        parts = []
        for path in (self.log_path, self.access_log_path):
            if path.exists():
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    # -- access log -----------------------------------------------------------------------------
    def _sync(self) -> int:
        """Send a marked request and wait until its log line is written; returns the log size after it.

        Go writes an access line after the handler returns, so a request a client has completed may not
        be logged yet; once a later request's line is there, every earlier one is too.
        """
        nonce = uuid.uuid4().hex
        requests.get(f"{self.url}{_SENTINEL_PATH}?log-sentinel={nonce}", timeout=5)
        needle = nonce.encode()
        deadline = time.monotonic() + 5
        while True:
            data = self.access_log_path.read_bytes()
            at = data.rfind(needle)
            if at >= 0:
                end = data.find(b"\n", at)
                return len(data) if end < 0 else end + 1
            if time.monotonic() > deadline:
                raise AssertionError("the registry access log did not record the sentinel request")
            time.sleep(0.005)

    def mark(self) -> int:
        """Start counting from now; returns the log offset (usable as `request_log(since=...)`)."""
        self._mark = self._sync()
        return self._mark

    def request_log(self, *, since: int | None = None, repo: str | None = None) -> list[LoggedRequest]:
        """Requests the registry served since the last `mark()` (or since the offset `since`).

        `repo` keeps only requests under /v2/<repo>/. Sentinel requests of this class are left out.
        """
        end = self._sync()
        start = self._mark if since is None else since
        with self.access_log_path.open("rb") as log:
            log.seek(start)
            lines = log.read(end - start).decode(errors="replace").splitlines()
        prefix = f"/v2/{repo}/" if repo else None
        entries = []
        for line in lines:
            if "log-sentinel=" in line:
                continue
            match = _ACCESS_LINE.match(line)
            if match is None:
                continue
            path = match.group("target").split("?", 1)[0]
            if prefix and not path.startswith(prefix):
                continue
            entries.append(LoggedRequest(match.group("method"), path, int(match.group("status"))))
        return entries

    def count(self, method: str, *, since: int | None = None, repo: str | None = None) -> int:
        """How many `method` requests the registry served (see `request_log`)."""
        return sum(1 for entry in self.request_log(since=since, repo=repo) if entry.method == method)
