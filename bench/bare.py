"""The reference: a bare aiohttp streaming loop (RESEARCH.md section 1).

One ClientSession, ``TCPConnector(limit=C)``, ``async for line in resp.content``,
``orjson.loads`` of every ``data:`` line, N requests with at most C in flight
(C workers pulling from one counter, like llmbatch's dispatcher). Prints one JSON
line: requests ok, errors by kind, content tokens, work-phase CPU and wall time.

    python -m bench.bare --url http://127.0.0.1:8000/v1 --concurrency 300 --requests 2000
"""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp
import orjson

from .client_main import client_main, timed_workers


async def _run(url: str, concurrency: int, n: int, model: str) -> dict[str, Any]:
    counter = itertools.count()
    errors: dict[str, int] = {}
    ok = 0
    tokens = 0
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    endpoint = f"{url}/chat/completions"

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal ok, tokens
        body = orjson.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": f"benchmark prompt {i}"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        n_tok = 0
        done = False
        async with session.post(endpoint, data=body, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].rstrip()
                if payload == b"[DONE]":
                    done = True
                    continue
                chunk = orjson.loads(payload)
                choices = chunk.get("choices")
                if choices and choices[0].get("delta", {}).get("content"):
                    n_tok += 1
        if not done:
            raise RuntimeError("no [DONE]")
        ok += 1
        tokens += n_tok

    async def worker(session: aiohttp.ClientSession) -> None:
        while (i := next(counter)) < n:
            try:
                await one(session, i)
            except Exception as exc:  # noqa: BLE001 - counted, never hidden
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        timing = await timed_workers(lambda: worker(session), concurrency)
    return {"ok": ok, "errors": errors, "tokens": tokens, **timing}


def main(argv: list[str] | None = None) -> None:
    client_main(_run, __doc__, argv)


if __name__ == "__main__":
    main()
