"""The clock every timing in a run reads: the running event loop's.

asyncio's own loop answers ``time()`` from ``time.monotonic``, so in a real run this is the
monotonic clock (nanosecond resolution on Linux, the same clock ``time.perf_counter`` reads
there). Reading it through the loop lets a test run the whole engine on virtual time: an
event loop whose clock jumps to its next timer when nothing is ready (tests/virtualtime.py)
makes TTFT, queue times, pacing and timeouts exact and independent of the machine's load.
Outside a running loop (building a value before ``asyncio.run``) it is ``time.monotonic``.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["now"]


def now() -> float:
    """Seconds on the running loop's clock (``time.monotonic`` outside a loop)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()
