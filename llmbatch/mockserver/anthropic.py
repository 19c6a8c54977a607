"""Anthropic endpoint: /v1/messages with chat's tokens, timing and faults (aiohttp)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from aiohttp import web

from llmbatch.mockserver.answers import expected_tokens
from llmbatch.mockserver.openai import OpenAIRoutes
from llmbatch.mockserver.state import MockState
from llmbatch.mockserver.streaming import counted, json_body, stream_tokens, until_done
from llmbatch.mockserver.wire import ANTHROPIC_HTTP_FAULTS, anthropic_error, sse, stream_headers

__all__ = ["AnthropicRoutes"]


class AnthropicRoutes:
    """Anthropic Messages over one :class:`MockState`; non-HTTP faults as for chat."""

    def __init__(self, state: MockState, openai: OpenAIRoutes) -> None:
        self.state = state
        self._openai = openai

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/messages: chat's text for the request's ``messages`` (not ``system``)."""
        return await counted(self.state, self._messages, request)

    async def _messages(self, request: web.Request, t0: float) -> web.StreamResponse:
        state = self.state
        if not state.key_accepted(request.headers):
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        body = await json_body(request)
        if body is None:
            return anthropic_error(400, "invalid_request_error", "body is not valid JSON")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return anthropic_error(400, "invalid_request_error", "messages: Field required")
        cap = body.get("max_tokens")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            return anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
        key, plan, messages_tokens, verdict, fault = state.take(
            request.headers, messages, cap, t0, style="anthropic"
        )
        if not verdict.admitted:
            return anthropic_error(
                429,
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
                verdict.headers,
            )
        limit_headers = verdict.headers
        if fault:
            early = await self._early_fault(fault, request, key)
            if early is not None:
                return early
        tokens = expected_tokens(messages, plan.n)
        system = body.get("system")
        # Usage counts the system prompt too; admission counted the messages alone.
        inp = messages_tokens + (len(system.split()) if isinstance(system, str) else 0)
        msg: dict[str, Any] = {
            "id": "msg_mock" + hashlib.blake2b(key, digest_size=6).hexdigest(),
            "type": "message",
            "role": "assistant",
            "model": body.get("model") or state.cfg.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": inp, "output_tokens": 1},
        }
        stop_reason = "max_tokens" if plan.capped else "end_turn"
        if not body.get("stream"):
            await until_done(plan)
            state.answered(key, plan.n, inp, plan.n)
            done = {
                **msg,
                "content": [{"type": "text", "text": "".join(tokens)}],
                "stop_reason": stop_reason,
                "usage": {"input_tokens": inp, "output_tokens": plan.n},
            }
            return web.Response(
                body=orjson.dumps(done), content_type="application/json", headers=limit_headers
            )
        resp = web.StreamResponse(
            headers={**stream_headers("request-id", "req_mock", key), **limit_headers}
        )
        await resp.prepare(request)
        await resp.write(
            sse("message_start", {"type": "message_start", "message": msg})
            + sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            + sse("ping", {"type": "ping"})
        )

        def frame(tok: str) -> bytes:
            delta = {"type": "text_delta", "text": tok}
            return sse(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )

        tail = sse("content_block_stop", {"type": "content_block_stop", "index": 0}) + sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": plan.n},
            },
        )
        if fault != "no_done":
            tail += sse("message_stop", {"type": "message_stop"})
        if await stream_tokens(request, resp, plan, tokens, frame, fault, self._mid_fault, tail):
            await resp.write_eof()
            state.answered(key, plan.n, inp, plan.n)
        return resp

    async def _early_fault(
        self, fault: str, request: web.Request, key: bytes
    ) -> web.StreamResponse | None:
        """HTTP faults in Anthropic's error shape; the others as for chat."""
        spec = ANTHROPIC_HTTP_FAULTS.get(fault)
        if spec is None:
            return await self._openai.early_fault(fault, request, key)
        status, etype, message = spec
        headers: dict[str, str] = {}
        if fault == "401":  # echo the key, as for chat (so redaction is tested here too)
            message = f"{message}: {request.headers.get('x-api-key', '')}"
        elif fault == "429":
            headers = self.state.fault_429_headers(key)
        return anthropic_error(status, etype, message, headers)

    async def _mid_fault(self, fault: str, resp: web.StreamResponse, request: web.Request) -> bool:
        """Mid-stream faults as Anthropic sends them (``event: error``)."""
        if fault == "malformed":
            await resp.write(b"event: content_block_delta\ndata: {this is not json\n\n")
            return False
        if fault in ("error_payload", "overloaded"):
            etype = "overloaded_error" if fault == "overloaded" else "api_error"
            err = {"type": "error", "error": {"type": etype, "message": f"mock {fault}"}}
            await resp.write(sse("error", err))
            await resp.write_eof()
            return True
        return await self._openai.mid_fault(fault, resp, request)
