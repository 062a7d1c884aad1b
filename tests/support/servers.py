"""In-process HTTP servers for tests: serve a WSGI app from a thread, record what arrives, poll.

Nothing here knows about GitLab or the registry. The stand-in, the relay target of a test, and a
janitor app under test can all be served with `ServerThread`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from flask import Flask, Response, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

T = TypeVar("T")


class _QuietHandler(WSGIRequestHandler):
    """No per-request line on stderr: pytest output stays readable."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class ServerThread:
    """Serve a WSGI app on 127.0.0.1 and a free port, threaded, until `stop()`."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", name: str = "test-server") -> None:
        self._server: BaseWSGIServer = make_server(host, 0, app, threaded=True, request_handler=_QuietHandler)
        self.host = host
        self.port: int = self._server.server_port
        self.url = f"http://{host}:{self.port}"
        # a short poll interval makes stop() quick (shutdown waits for the serve loop to notice)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )

    def start(self) -> ServerThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Call `probe` until it returns something truthy; return it, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Recorder:
    """An HTTP endpoint that records every request and answers `status` (settable while running)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        app = Flask("recorder")
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]

        @app.route("/", defaults={"path": ""}, methods=methods)
        @app.route("/<path:path>", methods=methods)
        def record(path: str) -> Response:
            item = RecordedRequest(
                method=request.method,
                path=request.path,
                headers=dict(request.headers.items()),
                body=request.get_data(),
            )
            with self._lock:
                self._requests.append(item)
            return Response(status=self.status)

        self._server = ServerThread(app, name="recorder")
        self.url = self._server.url

    def start(self) -> Recorder:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def received(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def wait_for(
        self, predicate: Callable[[RecordedRequest], bool], *, timeout: float = 5.0
    ) -> RecordedRequest:
        """The first recorded request matching `predicate`, waiting up to `timeout` seconds."""

        def probe() -> RecordedRequest | None:
            return next((r for r in self.received() if predicate(r)), None)

        return wait_for(probe, timeout=timeout, message="a matching request at the recorder")
