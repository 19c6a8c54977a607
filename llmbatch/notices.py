"""One-line notices on stderr: warnings that do not stop a command, and library logs.

Errors become messages in cli.py only; these are facts a user should see while a
command goes on (a damaged results line, a capped concurrency), one line each.
Libraries (asyncio, aiohttp) log with tracebacks; during a command their records are
folded to one line per cause, so a condition hit a thousand times never floods the
terminal or the cron mail.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

__all__ = ["one_line_per_cause", "quiet_embedded_server", "warn"]

LIBRARY_LOGGERS = ("asyncio", "aiohttp")


def warn(message: str | None) -> None:
    """Print ``llmbatch: warning: message`` on stderr; None prints nothing."""
    if message:
        print(f"llmbatch: warning: {message}", file=sys.stderr, flush=True)


class _OneLinePerCause(logging.Handler):
    """Prints the first record of each cause as one line; counts the repeats."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._seen: set[tuple[str, object, str]] = set()
        self.repeats = 0

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        key = (record.name, record.msg, type(exc).__name__)
        if key in self._seen:
            self.repeats += 1
            return
        self._seen.add(key)
        try:
            text = record.getMessage()
        except Exception:  # a library's bad format string must not hide the cause
            text = str(record.msg)
        if exc is not None:
            text += f": {type(exc).__name__}: {exc}"
        warn(f"{record.name}: {' '.join(text.split())} (repeats not shown)")


@contextlib.contextmanager
def one_line_per_cause(names: tuple[str, ...] = LIBRARY_LOGGERS) -> Iterator[None]:
    """While inside, the named loggers print one line per cause and no tracebacks."""
    handler = _OneLinePerCause()
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate
        if handler.repeats:
            warn(f"{handler.repeats} more library messages like the above were not shown")


@contextlib.contextmanager
def quiet_embedded_server() -> Iterator[None]:
    """Silence aiohttp's server log while the embedded mock runs inside a run.

    Its only errors are writes to connections our own client closed (a stop, a second
    Ctrl-C, an abort); the client side reports whatever matters.
    """
    logger = logging.getLogger("aiohttp.server")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
