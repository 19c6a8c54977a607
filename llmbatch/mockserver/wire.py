"""Wire shapes of the mock's answers: OpenAI and Anthropic bodies, errors, headers."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web


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
    return json_response(payload, status=status, headers=headers)


def json_response(
    payload: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``payload`` as a JSON body."""
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers=dict(headers or {}),
    )


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
    return json_response(payload, status=status, headers=headers)
