"""Running the web app under gunicorn (``registry-janitor web``): one app per gunicorn worker process,
each built by ``daemon.wiring`` after the fork, with its own store connection. Gunicorn's own lines go
through the process's logging set-up (the format of ``--log-format``), as the app's do; the app writes the
access log (``daemon.web.access``), so gunicorn's is off."""

from __future__ import annotations

import logging
import os
import shlex
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from daemon.config import Settings
from daemon.wiring import build_app, build_store


class JanitorLogger(Logger):
    """Gunicorn's logger, writing through the root logger's handlers (one format for the whole process)
    instead of handlers of its own; its syslog and log config settings still apply as gunicorn documents."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger, output in ((self.error_log, cfg.errorlog), (self.access_log, cfg.accesslog)):
            if output == "-":  # to stderr: as the rest of the process writes
                handler = self._get_gunicorn_handler(logger)
                if handler is not None:
                    logger.removeHandler(handler)
                logger.propagate = True


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        # As gunicorn's own command does: GUNICORN_CMD_ARGS overrides the defaults above.
        extra = os.environ.get("GUNICORN_CMD_ARGS")
        if extra:
            parsed = self.cfg.parser().parse_args(shlex.split(extra))
            for key, value in vars(parsed).items():
                if value is not None and key != "args" and key.lower() in self.cfg.settings:
                    self.cfg.set(key.lower(), value)

    def load(self) -> Flask:
        return build_app(self.settings)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """Defaults that suit the webhook path; ``GUNICORN_CMD_ARGS`` overrides any of them."""
    return {
        "bind": settings.server.bind,
        "workers": int(os.environ.get("JANITOR_WEB_WORKERS", "2")),
        "worker_class": "gthread",
        "threads": int(os.environ.get("JANITOR_WEB_THREADS", "4")),
        "timeout": 30,
        "graceful_timeout": 10,
        "accesslog": None,  # the app logs each request (daemon.web.access)
        "errorlog": "-",
        "logger_class": JanitorLogger,
        "loglevel": logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
        # No per-field limit of gunicorn's own (its 431 is an HTML page): the app answers a header field over
        # daemon.web.MAX_HEADER_BYTES with a JSON 431. Gunicorn still bounds the whole header block to
        # limit_request_fields (100) fields of 8190 bytes.
        "limit_request_field_size": 0,
    }


def serve(settings: Settings, config_path: str | None) -> None:
    if config_path:
        os.environ["JANITOR_CONFIG"] = config_path
    build_store(settings).close()  # migrate once, before the workers fork
    _Gunicorn(settings, gunicorn_options(settings)).run()
