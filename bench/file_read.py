"""Reading a prompts file on the event loop: buffered blocking reads vs aiofiles.

    python -m bench.file_read [--lines 200000]

Prints, for each way, the wall time per line and the longest single stall of the loop
(the largest gap a concurrent 1 ms ticker saw), as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiofiles


async def _ticker(stop: asyncio.Event, gaps: list[float]) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def _blocking(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for _ in fh:
            n += 1
            if n % 64 == 0:
                await asyncio.sleep(0)  # a slot frees up now and then
    return n


async def _aiofiles(path: Path) -> int:
    n = 0
    async with aiofiles.open(path, "rb") as fh:
        async for _ in fh:
            n += 1
    return n


async def _measure(name: str, fn: object, path: Path) -> dict[str, float | str]:
    stop = asyncio.Event()
    gaps: list[float] = []
    tick = asyncio.create_task(_ticker(stop, gaps))
    t0 = time.perf_counter()
    n = await fn(path)  # type: ignore[operator]
    wall = time.perf_counter() - t0
    stop.set()
    await tick
    return {
        "way": name,
        "lines": n,
        "us_per_line": round(wall / n * 1e6, 2),
        "max_loop_gap_ms": round(max(gaps) * 1000, 2) if gaps else 0.0,
    }


async def main(lines: int) -> None:
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        path = Path(tmp) / "p.jsonl"
        row = json.dumps({"prompt": "x" * 200}).encode() + b"\n"
        path.write_bytes(row * lines)
        for name, fn in (("blocking", _blocking), ("aiofiles", _aiofiles)):
            print(json.dumps(await _measure(name, fn, path)))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=200_000)
    asyncio.run(main(ap.parse_args().lines))
