"""Writing an answer over time: frames per token on an absolute schedule (aiohttp)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
from aiohttp import web

from llmbatch.mockserver.clock import loop_now
from llmbatch.mockserver.state import MockState, Plan
from llmbatch.mockserver.wire import text_completion_chunk

__all__ = [
    "MidFault",
    "chat_frames",
    "completion_frames",
    "counted",
    "json_body",
    "stream_tokens",
]

MidFault = Callable[[str, web.StreamResponse, web.Request], Awaitable[bool]]
T = TypeVar("T")


def chat_frames(model: Any, finish: str) -> tuple[Callable[[str | None], bytes], bytes]:
    """(token frame, closing chunk) of a chat stream; frame(None) is the role chunk."""
    head = (
        b'data: {"id":"chatcmpl-mock","object":"chat.completion.chunk","created":0,"model":'
        + orjson.dumps(model)
        + b',"choices":[{"index":0,"delta":'
    )

    def frame(tok: str | None) -> bytes:
        if tok is None:
            return head + b'{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
        return head + b'{"content":' + orjson.dumps(tok) + b'},"finish_reason":null}]}\n\n'

    return frame, head + b'{},"finish_reason":' + orjson.dumps(finish) + b"}]}\n\n"


def completion_frames(model: Any, finish: str) -> tuple[Callable[[str | None], bytes], bytes]:
    """(token frame, closing chunk) of a text_completion stream."""

    def frame(tok: str | None) -> bytes:
        return b"data: " + orjson.dumps(text_completion_chunk(model, tok or "", None)) + b"\n\n"

    return frame, b"data: " + orjson.dumps(text_completion_chunk(model, "", finish)) + b"\n\n"


async def counted(
    state: MockState,
    respond: Callable[[web.Request, float], Awaitable[web.StreamResponse]],
    request: web.Request,
) -> web.StreamResponse:
    """``respond(request, t0)`` counted in flight; ``t0`` is when the handler started."""
    t0 = loop_now()
    state.begin()
    try:
        return await respond(request, t0)
    finally:
        state.end()


async def json_body(request: web.Request) -> dict[str, Any] | None:
    """The request's JSON object, or None when the body is not one."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


async def until_done(plan: Plan) -> None:
    """Sleep until a non-streamed answer would have finished streaming."""
    done_at = plan.t0 + plan.ttft + plan.itl * (plan.n - 1)
    await asyncio.sleep(max(0.0, done_at - loop_now()))


async def stream_tokens(
    request: web.Request,
    resp: web.StreamResponse,
    plan: Plan,
    tokens: Sequence[T],
    frame: Callable[[T], bytes],
    fault: str | None,
    mid_fault: MidFault,
    tail: bytes,
) -> bool:
    """Write one frame per token on schedule, then ``tail``; False when a fault ended it.

    The schedule is absolute (token i due at t0 + ttft + i * itl): a timer that fires
    late (epoll rounds up to whole ms; a busy loop) delays one token, not all after it.
    Over the server's capacity each step is stretched by the slowdown at that moment.
    """
    due = plan.t0 + plan.ttft * plan.slowdown()
    delay = due - loop_now()
    if delay > 0:
        await asyncio.sleep(delay)
    cut = plan.n // 2
    pieces: list[bytes] = []
    for i, tok in enumerate(tokens):
        if fault and i == cut:
            if pieces:  # what came before the fault reaches the client first
                await resp.write(b"".join(pieces))
                pieces = []
            if await mid_fault(fault, resp, request):
                return False
            due = max(due, loop_now())  # a stall shifts the rest of the stream
        pieces.append(frame(tok))
        if plan.itl > 0:
            await resp.write(pieces.pop())
            if i < plan.n - 1:
                due += plan.itl * plan.slowdown()
                delay = due - loop_now()
                if delay > 0:
                    await asyncio.sleep(delay)
    pieces.append(tail)
    await resp.write(b"".join(pieces))
    return True
