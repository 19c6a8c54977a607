"""OpenAI Responses endpoint: /v1/responses with chat's tokens, timing and faults (aiohttp).

The answer follows the request: a ``reasoning`` object adds a reasoning item whose
summary streams ``expected_reasoning`` first; ``tools`` make the answer one
``function_call`` to the first tool, its arguments ``{"text": <the answer text>}``
streamed a token at a time; otherwise a message streams the text. A ``max_output_tokens``
below the answer's length cuts it: the response ends ``incomplete``. Rate limits and
429s carry OpenAI's headers; errors are OpenAI-shaped; in the stream an ``error`` event
is followed by ``response.failed``, as OpenAI sends them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from aiohttp import web

from llmbatch.mockserver.answers import (
    expected_reasoning,
    expected_tokens,
)
from llmbatch.mockserver.openai import OpenAIRoutes
from llmbatch.mockserver.state import MockState
from llmbatch.mockserver.streaming import counted, json_body, stream_tokens, until_done
from llmbatch.mockserver.wire import json_error, sse, stream_headers

__all__ = ["ResponsesRoutes", "input_messages"]


def input_messages(value: Any) -> list[Any]:
    """The chat messages a Responses ``input`` stands for (the mock's answer key):
    a string is one user message, so ``input: "Hi"`` is answered like ``prompt: "Hi"``."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value else []
    return list(value) if isinstance(value, list) else []


_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


def _is_item(item: Any) -> bool:
    """An input item the mock knows: a message (by role) or one of ``_ITEM_TYPES``."""
    return isinstance(item, dict) and ("role" in item or item.get("type") in _ITEM_TYPES)


class ResponsesRoutes:
    """The Responses API over one :class:`MockState`; HTTP faults as for chat."""

    def __init__(self, state: MockState, openai: OpenAIRoutes) -> None:
        self.state = state
        self._openai = openai

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/responses."""
        return await counted(self.state, self._respond, request)

    async def _respond(self, request: web.Request, t0: float) -> web.StreamResponse:
        state = self.state
        body = await json_body(request)
        if body is None:
            return json_error(400, "invalid_request_error", "body is not valid JSON")
        messages = input_messages(body.get("input"))
        if not messages:
            return json_error(400, "invalid_request_error", "'input' is required")
        unknown = [m for m in messages if not _is_item(m)]
        if unknown:
            return json_error(400, "invalid_request_error", f"Invalid input item: {unknown[0]!r}")
        cap = body.get("max_output_tokens")
        key, plan, inp, verdict, fault = state.take(request.headers, messages, cap, t0)
        if not verdict.admitted:
            return json_error(429, "rate_limit_exceeded", "Rate limit reached", verdict.headers)
        if fault:
            early = await self._openai.early_fault(fault, request, key)
            if early is not None:
                return early
        answer = _Answer(body, messages, plan.n, plan.capped, inp, key, state.cfg.model)
        if not body.get("stream"):
            await until_done(plan)
            state.answered(key, plan.n)
            return web.Response(
                body=orjson.dumps(answer.final()),
                content_type="application/json",
                headers=verdict.headers,
            )
        resp = web.StreamResponse(
            headers={**stream_headers("x-request-id", "req_resp", key), **verdict.headers}
        )
        await resp.prepare(request)
        await resp.write(answer.head)
        tail = answer.close + (answer.terminal if fault != "no_done" else b"")
        frames = answer.frames
        if await stream_tokens(request, resp, plan, frames, bytes, fault, self._mid_fault, tail):
            await resp.write_eof()
            state.answered(key, plan.n)
        return resp

    async def _mid_fault(self, fault: str, resp: web.StreamResponse, request: web.Request) -> bool:
        """Mid-stream faults as OpenAI sends them: an ``error`` event, then response.failed."""
        if fault == "malformed":
            await resp.write(b"event: response.output_text.delta\ndata: {this is not json\n\n")
            return False
        if fault in ("error_payload", "overloaded"):
            err = {"type": "error", "code": "server_error", "message": f"mock {fault}"}
            failed = {
                "type": "response.failed",
                "response": {"object": "response", "status": "failed", "error": err},
            }
            await resp.write(sse("error", err) + sse("response.failed", failed))
            await resp.write_eof()
            return True
        return await self._openai.mid_fault(fault, resp, request)


class _Answer:
    """One answer's events, built in stream order (sequence numbers count up): ``head``
    before the first token, ``frames`` one write per token with the structure events
    leading up to it, ``close`` the events finishing the items, then the terminal event."""

    def __init__(
        self,
        body: dict[str, Any],
        messages: list[Any],
        n: int,
        capped: bool,
        input_tokens: int,
        key: bytes,
        default_model: str,
    ) -> None:
        self.tokens = expected_tokens(messages, n)
        wants_reasoning = isinstance(body.get("reasoning"), dict)
        self.reasoning = expected_reasoning(messages) if wants_reasoning else []
        tools = body.get("tools")
        first = tools[0] if isinstance(tools, list) and tools else None
        self.tool = str(first.get("name") or "tool") if isinstance(first, dict) else None
        self.capped = capped
        n_out = n + len(self.reasoning)
        self.usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": n_out,
            "output_tokens_details": {"reasoning_tokens": len(self.reasoning)},
            "total_tokens": input_tokens + n_out,
        }
        self.digest = hashlib.blake2b(key, digest_size=8).hexdigest()
        self.snapshot: dict[str, Any] = {
            "id": f"resp_mock{self.digest}",
            "object": "response",
            "created_at": 0,
            "status": "in_progress",
            "model": body.get("model") or default_model,
            "output": [],
            "usage": None,
        }
        self._seq = 0
        self.items = self._items()
        self.head = self._event("response.created", response=self.snapshot) + self._event(
            "response.in_progress", response=self.snapshot
        )
        self.frames: list[bytes] = []
        self.close = b""
        lead = self._reasoning_frames() if self.reasoning else b""
        if self.tool is not None:
            self._call_frames(lead)
        else:
            self._text_frames(lead)
        self.terminal = self._event(
            "response.incomplete" if capped else "response.completed", response=self.final()
        )

    def _items(self) -> list[dict[str, Any]]:
        d = self.digest
        items: list[dict[str, Any]] = []
        if self.reasoning:
            summary = [{"type": "summary_text", "text": "".join(self.reasoning)}]
            items.append({"type": "reasoning", "id": f"rs_{d}", "summary": summary})
        text = "".join(self.tokens)
        status = "incomplete" if self.capped else "completed"
        if self.tool is not None:
            items.append(
                {
                    "type": "function_call",
                    "id": f"fc_{d}",
                    "call_id": f"call_{d}",
                    "name": self.tool,
                    "arguments": orjson.dumps({"text": text}).decode(),
                    "status": status,
                }
            )
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            items.append(
                {
                    "type": "message",
                    "id": f"msg_{d}",
                    "status": status,
                    "role": "assistant",
                    "content": [part],
                }
            )
        return items

    def _event(self, etype: str, **fields: Any) -> bytes:
        data = {"type": etype, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse(etype, data)

    def _added(self, oi: int, item: dict[str, Any]) -> bytes:
        return self._event("response.output_item.added", output_index=oi, item=item)

    def _reasoning_frames(self) -> bytes:
        """Frames of the reasoning summary; returns the events that finish it."""
        item = self.items[0]
        ids = {"item_id": item["id"], "output_index": 0, "summary_index": 0}
        pending = self._added(0, {**item, "summary": []}) + self._event(
            "response.reasoning_summary_part.added",
            **ids,
            part={"type": "summary_text", "text": ""},
        )
        for tok in self.reasoning:
            delta = self._event("response.reasoning_summary_text.delta", **ids, delta=tok)
            self.frames.append(pending + delta)
            pending = b""
        part = item["summary"][0]
        return (
            self._event("response.reasoning_summary_text.done", **ids, text=part["text"])
            + self._event("response.reasoning_summary_part.done", **ids, part=part)
            + self._event("response.output_item.done", output_index=0, item=item)
        )

    def _call_frames(self, lead: bytes) -> None:
        oi = len(self.items) - 1
        item = self.items[oi]
        ids = {"item_id": item["id"], "output_index": oi}
        pending = lead + self._added(oi, {**item, "arguments": "", "status": "in_progress"})
        # The opening and closing JSON pieces travel with the first and the last token.
        pieces = [orjson.dumps(t).decode()[1:-1] for t in self.tokens]
        pieces[0] = '{"text":"' + pieces[0]
        pieces[-1] += '"}'
        for piece in pieces:
            delta = self._event("response.function_call_arguments.delta", **ids, delta=piece)
            self.frames.append(pending + delta)
            pending = b""
        self.close = self._event(
            "response.function_call_arguments.done", **ids, arguments=item["arguments"]
        ) + self._event("response.output_item.done", output_index=oi, item=item)

    def _text_frames(self, lead: bytes) -> None:
        oi = len(self.items) - 1
        item = self.items[oi]
        ids = {"item_id": item["id"], "output_index": oi, "content_index": 0}
        part = item["content"][0]
        pending = (
            lead
            + self._added(oi, {**item, "status": "in_progress", "content": []})
            + self._event("response.content_part.added", **ids, part={**part, "text": ""})
        )
        for tok in self.tokens:
            delta = self._event("response.output_text.delta", **ids, delta=tok, logprobs=[])
            self.frames.append(pending + delta)
            pending = b""
        self.close = (
            self._event("response.output_text.done", **ids, text=part["text"], logprobs=[])
            + self._event("response.content_part.done", **ids, part=part)
            + self._event("response.output_item.done", output_index=oi, item=item)
        )

    def final(self) -> dict[str, Any]:
        """The whole response object (the terminal event's, and the non-streamed body)."""
        out = {**self.snapshot, "status": "completed", "output": self.items, "usage": self.usage}
        if self.capped:
            out["status"] = "incomplete"
            out["incomplete_details"] = {"reason": "max_output_tokens"}
        return out
