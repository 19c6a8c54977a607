"""Cyclic garbage-collector settings for one batch run of the CLI.

A run allocates a few container objects per streamed token (the parsed JSON chunk, its
lists and dicts), almost all freed by reference counting at once. With the default
gen-0 threshold (700 allocations) the collector still ran ~500 times per 2,000
requests, each time walking every object young enough to be scanned, and the older
generations walked everything start-up had imported: 7% of the run's CPU (measured,
bench/RESULTS.md). For the run, what start-up created is frozen out of the collector
(it lives until exit anyway) and gen 0 is collected every 20,000 allocations: cycles
are still freed, just in fewer, larger batches. Only the CLI does this; a library
caller's process keeps its own settings.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["GEN0_THRESHOLD", "batch_gc"]

GEN0_THRESHOLD = 20_000


@contextlib.contextmanager
def batch_gc() -> Iterator[None]:
    """Freeze what exists now out of the cyclic GC and collect gen 0 less often."""
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(old[0], GEN0_THRESHOLD), old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()
