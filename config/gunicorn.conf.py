"""gunicorn settings for running the web process by hand:

    gunicorn -c config/gunicorn.conf.py 'daemon.wsgi:app'

``registry-janitor web`` applies the same defaults itself. Never add the worker here: the scheduler
must run in its own process (``registry-janitor worker``), not inside gunicorn workers.
"""

import os

bind = os.environ.get("JANITOR_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("JANITOR_WEB_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("JANITOR_WEB_THREADS", "4"))
timeout = 30
graceful_timeout = 10
errorlog = "-"
