"""The command line shared by the reference client children (bench.bare, bench.openai_sdk)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

RunFn = Callable[[str, int, int, str], Awaitable[dict[str, Any]]]


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
