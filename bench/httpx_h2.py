"""A plain ``httpx.AsyncClient(http2=True)`` as a streaming client: httpcore on its own.

Same workload as bench.bare (N streaming chat completions, at most C in flight, every
``data:`` line parsed with orjson), one client with its pool raised to C. It shows
httpcore's HTTP/2 failure mode (RESEARCH.md §9): every request goes to the first h2
connection, past the server's SETTINGS_MAX_CONCURRENT_STREAMS, and queues there instead
of opening another connection; compare its wall time and TLS connections with
``llmbatch --client httpx --http2`` in bench.adapters --transport h2.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from .client_main import client_main, timed_workers


async def _run(url: str, concurrency: int, n: int, model: str) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = httpx.AsyncClient(http2=True, limits=limits, timeout=httpx.Timeout(120.0))
    endpoint = f"{url}/chat/completions"
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    counter = itertools.count()
    errors: dict[str, int] = {}
    ok = 0
    tokens = 0

    async def one(i: int) -> None:
        nonlocal ok, tokens
        body = orjson.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": f"benchmark prompt {i}"}],
                "stream": True,
            }
        )
        n_tok = 0
        done = False
        async with client.stream("POST", endpoint, content=body, headers=headers) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                choices = orjson.loads(line[6:]).get("choices")
                if choices and choices[0].get("delta", {}).get("content"):
                    n_tok += 1
        if not done:
            raise RuntimeError("no [DONE]")
        ok += 1
        tokens += n_tok

    async def worker() -> None:
        while (i := next(counter)) < n:
            try:
                await one(i)
            except Exception as exc:  # noqa: BLE001 - counted, never hidden
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1

    timing = await timed_workers(worker, concurrency)
    await client.aclose()
    return {"ok": ok, "errors": errors, "tokens": tokens, **timing}


def main(argv: list[str] | None = None) -> None:
    client_main(_run, __doc__, argv)


if __name__ == "__main__":
    main()
