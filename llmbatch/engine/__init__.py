"""The engine behind ``llmbatch.Client`` (internal: use the public API in ``llmbatch``).

- ``core``: what one Client shares (pool, governor, retry policy, concurrency limiter)
  and running one request (pacing, attempts, timing);
- ``stream``: one attempt (SSE decoding, content types, keepalive);
- ``gate``: the admission ramp (slow start) and the systematic-failure check;
- ``batch``: scheduling a batch, records, stop and grace.
"""

from llmbatch.engine.batch import BatchEnd, BatchRun, StopReason
from llmbatch.engine.core import Engine, NullText, TextTarget
from llmbatch.engine.stream import LiveCounts

__all__ = ["BatchEnd", "BatchRun", "Engine", "LiveCounts", "NullText", "StopReason", "TextTarget"]
