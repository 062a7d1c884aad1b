"""The baseline of ``bench_webhooks.py``: a bare Flask route answering ``POST /webhooks/gitlab`` with 204,
served by gunicorn with exactly the options ``registry-janitor web`` uses
(``daemon.server.gunicorn_options`` of the same config file); only the bind address differs.

    python benchmarks/bare_webhook_app.py --config FILE --bind 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from daemon.config import load_settings
from daemon.server import gunicorn_options


def create_bare_app() -> Flask:
    app = Flask(__name__)

    @app.post("/webhooks/gitlab")
    def gitlab_hook() -> tuple[str, int]:
        return "", 204

    return app


class _BareGunicorn(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return create_bare_app()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the janitor config whose gunicorn options to use")
    parser.add_argument("--bind", required=True, help="host:port for the bare app")
    args = parser.parse_args()
    options = {**gunicorn_options(load_settings(args.config)), "bind": args.bind}
    _BareGunicorn(options).run()


if __name__ == "__main__":
    main()
