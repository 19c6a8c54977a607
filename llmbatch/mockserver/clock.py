"""The mock's clock: the running event loop's, so a test on virtual time moves it too.

Its own few lines rather than llmbatch.clock: the mock shares no code with the client it
checks (tests/test_layers.py).
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["loop_now"]


def loop_now() -> float:
    """Seconds on the running loop's clock (``time.monotonic`` outside a loop)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()
