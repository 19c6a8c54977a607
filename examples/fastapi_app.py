"""A FastAPI service that fans LLM calls out through one shared ``llmbatch.Client``.

    pip install 'llmbatch[examples]'
    LLMBATCH_EXAMPLE_PROVIDER=mock uvicorn examples.fastapi_app:app --port 8001

    curl -s localhost:8001/complete -d '{"prompt": "Explain TCP slow start"}'
    curl -sN localhost:8001/stream -d '{"prompt": "Write a haiku"}'          # SSE
    printf '%s\\n' '{"id":"a","prompt":"x"}' '{"id":"b","prompt":"y"}' |
        curl -sN localhost:8001/batch --data-binary @-                          # NDJSON

The Client is created once, in the app's lifespan: every handler shares its connection
pool, rate governor, retry policy and concurrency limit (``LLMBATCH_EXAMPLE_CONCURRENCY``
requests in flight across all callers together). The provider comes from
``LLMBATCH_EXAMPLE_PROVIDER`` / ``_BASE_URL`` / ``_MODEL`` (its API key from the
provider's own variable, e.g. OPENAI_API_KEY).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

import llmbatch


def _client() -> llmbatch.Client:
    env = os.environ.get
    return llmbatch.Client(
        env("LLMBATCH_EXAMPLE_PROVIDER", "mock"),
        base_url=env("LLMBATCH_EXAMPLE_BASE_URL") or None,
        model=env("LLMBATCH_EXAMPLE_MODEL") or None,
        concurrency=int(env("LLMBATCH_EXAMPLE_CONCURRENCY", "300")),
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with _client() as llm:
        app.state.llm = llm
        yield


app = FastAPI(title="llmbatch example", lifespan=lifespan)


def _llm(request: Request) -> llmbatch.Client:
    llm: llmbatch.Client = request.app.state.llm
    return llm


async def _prompt(request: Request) -> Any:
    """The request's JSON body; a body that is not JSON is the caller's error (400)."""
    try:
        return await request.json()
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        raise HTTPException(400, detail=f"the body is not valid JSON: {exc}") from None


@app.post("/complete")
async def complete(request: Request) -> dict[str, Any]:
    """One prompt (an input-line object: prompt, messages or OpenAI Batch) → the answer."""
    prompt = await _prompt(request)
    result = await _llm(request).complete(prompt)
    if not result.ok:
        assert result.error is not None
        status = 400 if result.error.code == "input_error" else 502
        raise HTTPException(
            status, detail={"code": result.error.code, "message": result.error.message}
        )
    return {
        "id": result.id,
        "text": result.text,
        "finish_reason": result.finish_reason,
        "output_tokens": result.usage.output_tokens,
    }


@app.post("/stream")
async def stream(request: Request) -> StreamingResponse:
    """Relay the answer's text deltas to the caller as server-sent events."""
    prompt = await _prompt(request)
    llm = _llm(request)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for delta in llm.stream(prompt):
                yield b"data: " + orjson.dumps({"text": delta}) + b"\n\n"
        except llmbatch.LLMBatchError as exc:
            yield b"event: error\ndata: " + orjson.dumps({"message": str(exc)}) + b"\n\n"
            return
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@app.post("/batch")
async def batch(request: Request) -> StreamingResponse:
    """JSONL prompt lines in, one NDJSON result line out per prompt as each finishes."""
    body = await request.body()
    lines = [line for line in body.splitlines() if line.strip()]
    llm = _llm(request)

    async def results() -> AsyncIterator[bytes]:
        async with llm.batch(lines) as run:
            async for r in run:
                row = {
                    "id": r.id,
                    "ok": r.ok,
                    "text": r.text,
                    "error": None if r.error is None else r.error.code,
                }
                yield orjson.dumps(row) + b"\n"

    return StreamingResponse(results(), media_type="application/x-ndjson")
