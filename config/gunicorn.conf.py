"""gunicorn settings for running the web process by hand:

    gunicorn -c config/gunicorn.conf.py 'daemon.wsgi:app'

``registry-janitor web`` applies the same defaults itself. Never add the worker here: the scheduler
must run in its own process (``registry-janitor worker``), not inside gunicorn workers. Logs are set up as
``registry-janitor web`` sets them up: ``JANITOR_LOG_FORMAT`` and ``JANITOR_LOG_LEVEL``, gunicorn's own lines
in the same format, and the app's access log (gunicorn's stays off).
"""

import logging
import os

from daemon.cli.options import setup_logging

setup_logging(os.environ.get("JANITOR_LOG_FORMAT", "text"))

bind = os.environ.get("JANITOR_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("JANITOR_WEB_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("JANITOR_WEB_THREADS", "4"))
timeout = 30
graceful_timeout = 10
errorlog = "-"
logger_class = "daemon.server.JanitorLogger"
loglevel = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
