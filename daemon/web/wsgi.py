"""WSGI entry point for running under an external gunicorn: ``gunicorn 'daemon.web.wsgi:app'``.
Reads the config named by ``$JANITOR_CONFIG`` (else config/janitor.yaml)."""

from daemon.config import load_settings
from daemon.web.server import build_app

app = build_app(load_settings())
