"""``python -m daemon`` is the ``registry-janitor`` command."""

from daemon.cli import main

main()
