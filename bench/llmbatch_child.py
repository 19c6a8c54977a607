"""Run the llmbatch CLI in this process, recording the cost of the work phase.

``python -m bench.llmbatch_child run PROMPTS ...`` is ``llmbatch run PROMPTS ...`` plus:

- ``BENCH_STATS_FILE``: where to write {"work_cpu_s", "work_wall_s"}, measured from
  the start to the end of ``Dispatcher.run`` (imports, config and startup excluded;
  CPU is getrusage(RUSAGE_SELF), so the writer thread counts);
- ``BENCH_HTTPX_POOL_SIZE``: connections per httpx client in the adapter's rotation
  (the adapter's ``pool_size`` default; ``0`` means a single pool of any size);
- ``BENCH_H2_STREAMS``: at most this many streams per h2 connection in the httpx adapter
  (below the server's SETTINGS_MAX_CONCURRENT_STREAMS; the default is httpcore's 100);

Nothing in llmbatch is changed on disk; the hooks are installed in memory.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any


def _install_hooks() -> None:
    stats_file = os.environ.get("BENCH_STATS_FILE")
    if stats_file:
        import llmbatch

        original = llmbatch.Batch.wait

        async def timed_run(self: Any) -> Any:
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            try:
                return await original(self)
            finally:
                ru1 = resource.getrusage(resource.RUSAGE_SELF)
                cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
                with open(stats_file, "w") as fh:
                    json.dump({"work_cpu_s": cpu, "work_wall_s": time.perf_counter() - t0}, fh)

        llmbatch.Batch.wait = timed_run  # type: ignore[method-assign]
    pool = os.environ.get("BENCH_HTTPX_POOL_SIZE")
    if pool is not None:
        from llmbatch.http import httpx as httpx_adapter

        size = int(pool) or 10**9
        defaults = httpx_adapter.HttpxAdapter.__init__.__kwdefaults__
        assert defaults is not None and "pool_size" in defaults
        defaults["pool_size"] = size
    streams = os.environ.get("BENCH_H2_STREAMS")
    if streams is not None:
        from llmbatch.http import httpx as httpx_adapter

        defaults = httpx_adapter.HttpxAdapter.__init__.__kwdefaults__
        assert defaults is not None and "h2_max_streams" in defaults
        defaults["h2_max_streams"] = int(streams)


def main() -> None:
    _install_hooks()
    from llmbatch.cli.app import main as cli_main

    sys.argv = ["llmbatch", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
