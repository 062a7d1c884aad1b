"""What the ``daemon`` loggers write, captured as lines through a given formatter (the CLI's own)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def captured_lines(formatter: logging.Formatter) -> Iterator[Callable[[], list[str]]]:
    """Within the block, every ``daemon`` record at INFO or above is written through ``formatter``; the
    function yielded returns the lines written so far."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("daemon")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield lambda: stream.getvalue().splitlines()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
