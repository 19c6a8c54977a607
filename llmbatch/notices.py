"""One-line notices on stderr: warnings that do not stop a command.

Errors become messages in cli.py only; these are facts a user should see while a
command goes on (a damaged results line, a capped concurrency), one line each.
"""

from __future__ import annotations

import sys

__all__ = ["warn"]


def warn(message: str | None) -> None:
    """Print ``llmbatch: warning: message`` on stderr; None prints nothing."""
    if message:
        print(f"llmbatch: warning: {message}", file=sys.stderr, flush=True)
