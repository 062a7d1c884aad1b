"""WSGI entry point for running under an external gunicorn: ``gunicorn 'daemon.wsgi:app'``.
Reads the config named by ``$JANITOR_CONFIG`` (else config/janitor.yaml)."""

from daemon.config import load_settings
from daemon.wiring import build_app

app = build_app(load_settings())
