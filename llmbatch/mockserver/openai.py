"""OpenAI endpoints: /v1/chat/completions and /v1/completions (aiohttp handlers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from llmbatch.mockserver.answers import expected_tokens
from llmbatch.mockserver.clock import loop_now
from llmbatch.mockserver.state import MockState
from llmbatch.mockserver.streaming import (
    chat_frames,
    completion_frames,
    json_body,
    stream_tokens,
    until_done,
)
from llmbatch.mockserver.wire import completion, json_error, stream_headers, text_completion_chunk

__all__ = ["OpenAIRoutes"]


class OpenAIRoutes:
    """Chat and legacy completions over one :class:`MockState`."""

    def __init__(self, state: MockState) -> None:
        self.state = state

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""

        def parse(body: dict[str, Any]) -> tuple[list[Any], Any] | web.StreamResponse:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return json_error(400, "invalid_request_error", "'messages' is required")
            return messages, body.get("max_completion_tokens") or body.get("max_tokens")

        return await self._handle(request, parse, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions: chat's text for ``[{"role": "user", "content": prompt}]``."""

        def parse(body: dict[str, Any]) -> tuple[list[Any], Any] | web.StreamResponse:
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                return json_error(400, "invalid_request_error", "'prompt' must be a string")
            return [{"role": "user", "content": prompt}], body.get("max_tokens")

        return await self._handle(request, parse, chat=False)

    async def _handle(
        self,
        request: web.Request,
        parse: Callable[[dict[str, Any]], tuple[list[Any], Any] | web.StreamResponse],
        *,
        chat: bool,
    ) -> web.StreamResponse:
        """Count the request in flight, read its body, answer (or refuse what ``parse`` did)."""
        t0 = loop_now()
        self.state.begin()
        try:
            if not self.state.key_accepted(request.headers):
                return json_error(401, "invalid_api_key", "Unauthorized: no valid API key")
            body = await json_body(request)
            if body is None:
                return json_error(400, "invalid_request_error", "body is not valid JSON")
            parsed = parse(body)
            if isinstance(parsed, web.StreamResponse):
                return parsed
            messages, cap = parsed
            return await self._answer(request, body, messages, cap, t0, chat=chat)
        finally:
            self.state.end()

    async def _answer(
        self,
        request: web.Request,
        body: dict[str, Any],
        messages: list[Any],
        cap: Any,
        t0: float,
        *,
        chat: bool,
    ) -> web.StreamResponse:
        """An OpenAI answer: chat.completion(.chunk)s, or text_completion(s) when not ``chat``."""
        state = self.state
        key, plan, inp, verdict, fault = state.take(request.headers, messages, cap, t0)
        if not verdict.admitted:
            return json_error(429, "rate_limit_exceeded", "Rate limit reached", verdict.headers)
        limit_headers = verdict.headers
        if fault:
            early = await self.early_fault(fault, request, key)
            if early is not None:
                return early
        tokens = expected_tokens(messages, plan.n)
        finish = "length" if plan.capped else "stop"
        usage = {"prompt_tokens": inp, "completion_tokens": plan.n, "total_tokens": inp + plan.n}
        model = body.get("model") or state.cfg.model
        if not body.get("stream"):
            await until_done(plan)
            state.answered(key, plan.n, inp, plan.n)
            text = "".join(tokens)
            done = (
                completion(model, text, finish, usage)
                if chat
                else {**text_completion_chunk(model, text, finish), "usage": usage}
            )
            return web.Response(
                body=orjson.dumps(done), content_type="application/json", headers=limit_headers
            )
        prefix = "mock" if chat else "cmpl"
        resp = web.StreamResponse(
            headers={**stream_headers("x-request-id", prefix, key), **limit_headers}
        )
        await resp.prepare(request)
        frame, tail = chat_frames(model, finish) if chat else completion_frames(model, finish)
        reported = (0, 0)
        if (body.get("stream_options") or {}).get("include_usage"):
            reported = (inp, plan.n)
            last = {**text_completion_chunk(model, "", None), "choices": [], "usage": usage}
            if chat:
                last["object"] = "chat.completion.chunk"
                last["id"] = "chatcmpl-mock"
            tail += b"data: " + orjson.dumps(last) + b"\n\n"
        if fault != "no_done":
            tail += b"data: [DONE]\n\n"
        if chat:
            await resp.write(frame(None))  # the role chunk, at once
        if await stream_tokens(request, resp, plan, tokens, frame, fault, self.mid_fault, tail):
            await resp.write_eof()
            state.answered(key, plan.n, *reported)
        return resp

    async def early_fault(
        self, fault: str, request: web.Request, key: bytes
    ) -> web.StreamResponse | None:
        """A fault that replaces the answer (an HTTP error, a reset); None = answer anyway."""
        cfg = self.state.cfg
        if fault == "429":
            headers = self.state.fault_429_headers(key)
            return json_error(429, "rate_limit_exceeded", "Rate limit reached", headers)
        if fault == "quota":
            return json_error(429, "insufficient_quota", "You exceeded your current quota")
        if fault == "401":
            given = request.headers.get("authorization", "").removeprefix("Bearer ")
            return json_error(401, "invalid_api_key", f"Incorrect API key provided: {given}")
        if fault == "404":
            return json_error(404, "model_not_found", "The model does not exist")
        if fault == "400":
            return json_error(400, "invalid_request_error", "bad request (mock fault)")
        if fault in ("500", "502", "503"):
            return json_error(int(fault), "server_error", f"mock fault {fault}")
        if fault == "reset":
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise ConnectionResetError("mock reset")
        if fault == "slow_first_byte":
            await asyncio.sleep(cfg.slow_first_byte_s)
        return None

    async def mid_fault(self, fault: str, resp: web.StreamResponse, request: web.Request) -> bool:
        """Apply a mid-stream fault; True when the response is over."""
        if fault == "disconnect":
            transport = request.transport
            if transport is not None:
                transport.abort()
            return True
        if fault == "stall":
            await asyncio.sleep(self.state.cfg.stall_s)
            return False
        if fault == "malformed":
            await resp.write(b"data: {this is not json\n\n")
            return False
        if fault in ("error_payload", "overloaded"):
            etype = "overloaded_error" if fault == "overloaded" else "server_error"
            payload = {"error": {"type": etype, "message": f"mock {fault}"}}
            await resp.write(b"data: " + orjson.dumps(payload) + b"\n\n")
            await resp.write_eof()
            return True
        return False
