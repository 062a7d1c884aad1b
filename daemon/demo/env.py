"""The demo's stage: a real local registry process, a GitLab stand-in, in-process HTTP servers, and a
tiny registry client that pushes and inspects images the way ``docker push`` does.

Owns the ``docker-registry`` child process (free loopback port, its own storage folder, deletes on, no
auth) and makes sure it dies with the demo. Must not: decide anything about tags (the janitor's own
code does that), or be used outside ``registry-janitor demo`` (tests carry their own, richer fixtures).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Self
from urllib.parse import urljoin

import requests
import yaml
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

REGISTRY_BINARY = "/usr/bin/docker-registry"
INSTALL_HINT = "apt-get install -y docker-registry"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V2 = "application/vnd.docker.container.image.v1+json"
LAYER_V2 = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class StageError(RuntimeError):
    """A piece of the demo's stage could not be set up; the message says what to do."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_registry_binary(binary: str | None = None) -> str | None:
    """Debian's ``docker-registry`` (CNCF distribution 2.8), at its packaged path or on PATH."""
    binary = binary or REGISTRY_BINARY
    if Path(binary).is_file() and os.access(binary, os.X_OK):
        return binary
    return shutil.which(Path(binary).name)


class LocalRegistry:
    """``docker-registry serve`` on 127.0.0.1 with ``storage.delete.enabled: true`` and no auth.

    The one launcher of a local registry process: the demo uses it as it is, the test suite's registry
    extends ``config`` (token auth, notifications, access log) and ``is_ready`` (a token challenge)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "registry.log"  # its own log (stderr)
        self.stdout_path = self.log_path  # where its access log goes, when enabled
        self.config_path = workdir / "registry.yml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "version": 0.1,
            "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "registry-storage")},
                        "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": secrets.token_hex(16),
                     "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }

    def is_ready(self, response: requests.Response) -> bool:
        """Whether ``GET /v2/`` answered as this registry should once it serves; raise if never will."""
        return response.status_code == 200

    def start(self, timeout: float = 10.0) -> Self:
        for attempt in range(3):  # another process may take the free port before the registry binds it
            self.port = free_port()
            self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
            # setpriv: the registry gets SIGTERM if its parent is killed (SIGKILL) without cleanup; this
            # follows the creating thread, so start it from a thread that lives as long as the registry.
            # Its own session: a Ctrl-C reaches the parent, which then stops the registry in order.
            setpriv = shutil.which("setpriv")
            prefix = [setpriv, "--pdeathsig", "TERM"] if setpriv else []
            with self.stdout_path.open("ab") as out, self.log_path.open("ab") as err:
                self.process = subprocess.Popen([*prefix, self.binary, "serve", str(self.config_path)],
                                                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                                start_new_session=True)
            try:
                self._wait_ready(timeout)
                return self
            except StageError:
                taken = "address already in use" in self.log_text()
                self.stop()
                if not taken or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StageError(f"docker-registry exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if self.is_ready(requests.get(f"{self.url}/v2/", timeout=1)):
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.02)
        raise StageError(f"docker-registry did not answer on {self.url} within {timeout:.0f}s:\n"
                         f"{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


# -- a registry client as small as `docker push` needs ------------------------------------------------
def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _expect(response: requests.Response, *codes: int) -> requests.Response:
    if response.status_code not in codes:
        raise StageError(f"{response.request.method} {response.url} answered {response.status_code}: "
                         f"{response.text[:300]}")
    return response


def _upload_blob(session: requests.Session, base: str, repo: str, data: bytes) -> str:
    digest = _digest(data)
    started = _expect(session.post(f"{base}/v2/{repo}/blobs/uploads/"), 202)
    location = urljoin(base, started.headers["Location"])
    sep = "&" if "?" in location else "?"
    _expect(session.put(f"{location}{sep}digest={digest}", data=data,
                        headers={"Content-Type": "application/octet-stream"}), 201)
    return digest


def push_image(session: requests.Session, base: str, repo: str, tags: list[str]) -> str:
    """Upload a random layer and its config blob, then PUT one schema 2 manifest under every tag."""
    layer = os.urandom(2048)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Labels": {"demo": "registry-janitor"}},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_V2,
        "config": {"mediaType": CONFIG_V2, "size": len(config), "digest": _upload_blob(session, base, repo, config)},
        "layers": [{"mediaType": LAYER_V2, "size": len(layer), "digest": _upload_blob(session, base, repo, layer)}],
    }, indent=3).encode()
    for tag in tags:
        answer = _expect(session.put(f"{base}/v2/{repo}/manifests/{tag}", data=manifest,
                                     headers={"Content-Type": MANIFEST_V2}), 201)
        if answer.headers.get("Docker-Content-Digest") != _digest(manifest):
            raise StageError(f"the registry stored {tag} under an unexpected digest")
    return _digest(manifest)


def list_tags(session: requests.Session, base: str, repo: str) -> list[str]:
    answer = _expect(session.get(f"{base}/v2/{repo}/tags/list"), 200, 404)
    if answer.status_code == 404:
        return []
    return sorted(answer.json().get("tags") or [])


def digest_of(session: requests.Session, base: str, repo: str, reference: str) -> str | None:
    answer = _expect(session.head(f"{base}/v2/{repo}/manifests/{reference}",
                                  headers={"Accept": MANIFEST_V2}), 200, 404)
    return answer.headers.get("Docker-Content-Digest") if answer.status_code == 200 else None


# -- GitLab stand-in ------------------------------------------------------------------------------------
class GitLabStandin:
    """The one GitLab route the janitor's worker calls here: does this branch still exist (S4)?
    Answers as GitLab's Branches API does: the branch object, or 404 ``Branch Not Found``."""

    def __init__(self, branches: set[tuple[str, str]]) -> None:
        self.branches = set(branches)
        self.lookups: list[tuple[str, str]] = []
        self.app = Flask("gitlab-standin")
        self.app.add_url_rule("/api/v4/projects/<path:project>/repository/branches/<path:branch>",
                              view_func=self._branch)

    def _branch(self, project: str, branch: str) -> ResponseReturnValue:
        self.lookups.append((project, branch))
        if (project, branch) not in self.branches:
            return jsonify({"message": "404 Branch Not Found"}), 404
        return jsonify({"name": branch, "merged": False, "protected": branch == "main",
                        "default": branch == "main", "commit": {"id": "0" * 40}})


# -- serving WSGI apps from threads ---------------------------------------------------------------------
class _QuietHandler(WSGIRequestHandler):
    """No access line per request: the demo narrates what matters itself."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class ServedApp:
    """A WSGI app on 127.0.0.1 and a free port, served by werkzeug from a daemon thread."""

    def __init__(self, app: Any, name: str, port: int = 0) -> None:
        self._server: BaseWSGIServer = make_server("127.0.0.1", port, app, threaded=True,
                                                   request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
