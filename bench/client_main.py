"""What the reference client children share (bench.bare, bench.openai_sdk, bench.httpx_h2):
the command line, and timing the work phase."""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

RunFn = Callable[[str, int, int, str], Awaitable[dict[str, Any]]]


async def timed_workers(
    worker: Callable[[], Awaitable[None]], concurrency: int
) -> dict[str, float]:
    """Run ``concurrency`` copies of ``worker`` to the end; their CPU and wall seconds."""
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"work_cpu_s": cpu, "work_wall_s": wall}


def client_main(run: RunFn, description: str | None, argv: list[str] | None = None) -> None:
    """Parse --url/--concurrency/--requests/--model/--loop, run, print the result as JSON."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--model", default="mock-model")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = ap.parse_args(argv)
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        out = runner.run(run(args.url, args.concurrency, args.requests, args.model))
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
