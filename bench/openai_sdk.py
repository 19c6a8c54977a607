"""The official OpenAI SDK as a streaming client (run only when ``openai`` is importable).

Same workload as bench.bare: N streaming chat completions, at most C in flight, the
SDK's own parsing of every chunk; the httpx pool is raised to C (RESEARCH.md §1).
"""

from __future__ import annotations

import itertools
from typing import Any

from .client_main import client_main, timed_workers


async def _run(url: str, concurrency: int, n: int, model: str) -> dict[str, Any]:
    import httpx
    import openai

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = openai.AsyncOpenAI(
        base_url=url,
        api_key="unused",
        max_retries=0,
        http_client=httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0)),
    )
    counter = itertools.count()
    errors: dict[str, int] = {}
    ok = 0
    tokens = 0

    async def worker() -> None:
        nonlocal ok, tokens
        while (i := next(counter)) < n:
            try:
                stream = await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": f"benchmark prompt {i}"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                n_tok = 0
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        n_tok += 1
                ok += 1
                tokens += n_tok
            except Exception as exc:  # noqa: BLE001 - counted, never hidden
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1

    timing = await timed_workers(worker, concurrency)
    await client.close()
    return {"ok": ok, "errors": errors, "tokens": tokens, **timing}


def main(argv: list[str] | None = None) -> None:
    client_main(_run, __doc__, argv)


if __name__ == "__main__":
    main()
