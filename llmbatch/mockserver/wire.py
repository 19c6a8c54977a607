"""Wire shapes of the mock's answers: OpenAI and Anthropic bodies, errors, headers, waiters."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web


def resolve(
    waiters: list[tuple[int, asyncio.Future[None]]], value: int
) -> list[tuple[int, asyncio.Future[None]]]:
    """Wake the waiters whose target ``value`` has reached; return the others."""
    keep = []
    for target, fut in waiters:
        if value >= target:
            if not fut.done():
                fut.set_result(None)
        else:
            keep.append((target, fut))
    return keep


async def wait_for(waiters: list[tuple[int, asyncio.Future[None]]], target: int) -> None:
    """Wait until ``resolve`` is called with a value of at least ``target``."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append((target, fut))
    await fut


def completion(model: str, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
    """A non-streaming chat.completion body."""
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ],
        "usage": usage,
    }


def json_error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An OpenAI-shaped HTTP error."""
    payload = {"error": {"message": message, "type": code, "code": code}}
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers=dict(headers or {}),
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """How one answer is streamed: token count, whether max_tokens cut it, timing."""

    n: int
    capped: bool
    ttft: float
    itl: float
    t0: float


# Fault kind -> (status, Anthropic error type, message). Anthropic has no quota 429:
# an empty credit balance is a 400 invalid_request_error.
ANTHROPIC_HTTP_FAULTS: dict[str, tuple[int, str, str]] = {
    "429": (429, "rate_limit_error", "Number of requests has exceeded your rate limit"),
    "quota": (400, "invalid_request_error", "Your credit balance is too low"),
    "401": (401, "authentication_error", "invalid x-api-key"),
    "404": (404, "not_found_error", "model: not found"),
    "400": (400, "invalid_request_error", "bad request (mock fault)"),
    "500": (500, "api_error", "mock fault 500"),
    "502": (502, "api_error", "mock fault 502"),
    "503": (503, "api_error", "mock fault 503"),
}


def anthropic_limit_headers(openai_headers: Mapping[str, str]) -> dict[str, str]:
    """``_admit``'s x-ratelimit-* headers under Anthropic's names (reset as RFC 3339)."""
    out: dict[str, str] = {}
    now = time.time()
    for name in ("requests", "tokens"):
        prefix = f"anthropic-ratelimit-{name}"
        limit = openai_headers.get(f"x-ratelimit-limit-{name}")
        if limit is None:
            continue
        out[f"{prefix}-limit"] = limit
        out[f"{prefix}-remaining"] = openai_headers.get(f"x-ratelimit-remaining-{name}", "0")
        reset_s = float(openai_headers.get(f"x-ratelimit-reset-{name}", "0s").rstrip("s"))
        out[f"{prefix}-reset"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + reset_s))
    return out


def sse(event: str, data: Any) -> bytes:
    """One named SSE event with a JSON payload."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def stream_headers(id_header: str, prefix: str, key: bytes) -> dict[str, str]:
    """Headers of a streamed answer, with a request id derived from the prompt."""
    rid = f"{prefix}-" + hashlib.blake2b(key, digest_size=6).hexdigest()
    return {"content-type": "text/event-stream", "cache-control": "no-cache", id_header: rid}


def text_completion_chunk(model: Any, text: str, finish: str | None) -> dict[str, Any]:
    """One text_completion chunk (also the non-streaming body's shape)."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {
        "id": "cmpl-mock",
        "object": "text_completion",
        "created": 0,
        "model": model,
        "choices": [choice],
    }


def anthropic_error(
    status: int, etype: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An Anthropic-shaped HTTP error."""
    payload = {"type": "error", "error": {"type": etype, "message": message}}
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def int_header(headers: Mapping[str, str], name: str, default: Any) -> Any:
    """An integer request header, or ``default`` when absent or malformed."""
    val = headers.get(name)
    if val is None:
        return default
    try:
        return int(val)
    except ValueError:
        return default
