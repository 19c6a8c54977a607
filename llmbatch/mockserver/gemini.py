"""Gemini endpoints: ``/v1beta/models/{model}:streamGenerateContent`` (and ``/v1/...``,
and ``:generateContent``) with chat's tokens, timing and faults (aiohttp).

Each streamed event is a whole ``GenerateContentResponse`` holding one token, framed
``data: ...`` with CRLF line ends as Google sends them; ``usageMetadata`` is complete
only on the last event, which carries the ``finishReason`` (``MAX_TOKENS`` when
``generationConfig.maxOutputTokens`` cut the answer). Without ``alt=sse`` the same
events come as one JSON array. The answer follows the request:
``generationConfig.thinkingConfig.includeThoughts`` streams ``expected_reasoning`` as
thought parts first (the answer's first part then carries a ``thoughtSignature``);
``tools`` with ``functionDeclarations`` make the answer one ``functionCall`` to the
first declaration with args ``{"text": <the answer text>}``, whole in one part, or
streamed as ``partialArgs`` when ``toolConfig.functionCallingConfig
.streamFunctionCallArguments`` is set.

Errors are Google-shaped (``{"error": {"code", "message", "status", "details"}}``); a
429 says when to retry only in its body (``google.rpc.RetryInfo``), with no rate-limit
or Retry-After headers, as Gemini does; a bad key is a 400 ``API_KEY_INVALID``.
"""

from __future__ import annotations

import hashlib
import math
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
from llmbatch.mockserver.wire import json_response

__all__ = ["GeminiRoutes", "contents_messages", "google_error"]

# Fault kind -> (status, google.rpc status, message).
_HTTP_FAULTS: dict[str, tuple[int, str, str]] = {
    "401": (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
    "404": (404, "NOT_FOUND", "models/mock is not found for API version v1beta"),
    "400": (400, "INVALID_ARGUMENT", "bad request (mock fault)"),
    "500": (500, "INTERNAL", "An internal error has occurred."),
    "502": (502, "UNAVAILABLE", "mock fault 502"),
    "503": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def google_error(
    status: int, code_name: str, message: str, *, retry_delay_s: float | None = None
) -> web.Response:
    """A Google API error; a 429 gets a RetryInfo detail (whole milliseconds)."""
    err: dict[str, Any] = {"code": status, "message": message, "status": code_name}
    if code_name == "INVALID_ARGUMENT" and "API key" in message:
        err["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            }
        ]
    if retry_delay_s is not None:
        ms = max(1, math.ceil(retry_delay_s * 1000))
        err["details"] = [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
            {"@type": _RETRY_INFO, "retryDelay": f"{ms / 1000:g}s"},
        ]
    return json_response({"error": err}, status=status)


def contents_messages(contents: Any) -> list[Any]:
    """The chat messages Gemini ``contents`` stand for (the mock's answer key): ``model``
    turns are the assistant's, text parts joined; so a one-turn ``contents`` is answered
    like the same ``prompt`` under the other formats."""
    if not isinstance(contents, list):
        return []
    messages: list[Any] = []
    for c in contents:
        if not isinstance(c, dict) or not isinstance(c.get("parts"), list):
            return []
        role = "assistant" if c.get("role") == "model" else "user"
        text = "".join(str(p.get("text") or "") for p in c["parts"] if isinstance(p, dict))
        messages.append({"role": role, "content": text})
    return messages


class GeminiRoutes:
    """Gemini's generateContent methods over one :class:`MockState`."""

    def __init__(self, state: MockState, openai: OpenAIRoutes) -> None:
        self.state = state
        self._openai = openai

    async def models(self, request: web.Request) -> web.StreamResponse:
        """POST .../models/{model}:{method}."""
        return await counted(self.state, self._respond, request)

    async def _respond(self, request: web.Request, t0: float) -> web.StreamResponse:
        state = self.state
        model, _, method = request.match_info["target"].rpartition(":")
        if method not in ("streamGenerateContent", "generateContent") or not model:
            return google_error(404, "NOT_FOUND", f"method {method!r} not found")
        body = await json_body(request)
        if body is None:
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        messages = contents_messages(body.get("contents"))
        if not messages:
            return google_error(400, "INVALID_ARGUMENT", "contents is not specified")
        given = body.get("generationConfig")
        gen: dict[str, Any] = given if isinstance(given, dict) else {}
        cap = gen.get("maxOutputTokens")
        key, plan, inp, verdict, fault = state.take(
            request.headers, messages, cap, t0, style="gemini"
        )
        if not verdict.admitted:
            return google_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                retry_delay_s=verdict.retry_after_s,
            )
        if fault:
            early = await self._early_fault(fault, request, key)
            if early is not None:
                return early
        answer = _Answer(body, gen, messages, plan.n, plan.capped, inp, key, model)
        streaming = method == "streamGenerateContent"
        if not streaming or request.query.get("alt") != "sse":
            await until_done(plan)
            state.answered(key, plan.n)
            events = [orjson.loads(e) for e in answer.events]
            whole: Any = events if streaming else answer.merged()
            return web.Response(body=orjson.dumps(whole), content_type="application/json")
        resp = web.StreamResponse(
            headers={"content-type": "text/event-stream", "x-goog-request-id": answer.rid}
        )
        await resp.prepare(request)
        frames = [b"data: " + e + b"\r\n\r\n" for e in answer.events]
        tail = frames.pop()
        if fault == "no_done":
            tail = b""
        if await stream_tokens(request, resp, plan, frames, bytes, fault, self._mid_fault, tail):
            await resp.write_eof()
            state.answered(key, plan.n)
        return resp

    async def _early_fault(
        self, fault: str, request: web.Request, key: bytes
    ) -> web.StreamResponse | None:
        """HTTP faults in Google's error shape; the others as for chat."""
        if fault in ("429", "quota"):
            headers = self.state.fault_429_headers(key)  # records when a retry may come
            delay_s = int(headers["retry-after-ms"]) / 1000.0
            message = "Resource has been exhausted (e.g. check quota)."
            return google_error(429, "RESOURCE_EXHAUSTED", message, retry_delay_s=delay_s)
        spec = _HTTP_FAULTS.get(fault)
        if spec is not None:
            return google_error(*spec)
        return await self._openai.early_fault(fault, request, key)

    async def _mid_fault(self, fault: str, resp: web.StreamResponse, request: web.Request) -> bool:
        """Mid-stream faults as Gemini sends them: an ``error`` object as an event."""
        if fault == "malformed":
            await resp.write(b"data: {this is not json\r\n\r\n")
            return False
        if fault in ("error_payload", "overloaded"):
            message = "The model is overloaded." if fault == "overloaded" else "mock error"
            err = {"error": {"code": 503, "message": message, "status": "UNAVAILABLE"}}
            await resp.write(b"data: " + orjson.dumps(err) + b"\r\n\r\n")
            await resp.write_eof()
            return True
        return await self._openai.mid_fault(fault, resp, request)


class _Answer:
    """One answer as GenerateContentResponse events (JSON bytes), one per token, the
    last one (finishReason, full usage) apart; ``merged`` is the non-streamed body."""

    def __init__(
        self,
        body: dict[str, Any],
        gen: dict[str, Any],
        messages: list[Any],
        n: int,
        capped: bool,
        input_tokens: int,
        key: bytes,
        model: str,
    ) -> None:
        self.rid = "mock" + hashlib.blake2b(key, digest_size=8).hexdigest()
        self.tokens = expected_tokens(messages, n)
        thinking = gen.get("thinkingConfig")
        wants = isinstance(thinking, dict) and thinking.get("includeThoughts")
        self.reasoning = expected_reasoning(messages) if wants else []
        self.tool = _first_function(body.get("tools"))
        config = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        self.stream_args = bool(config.get("streamFunctionCallArguments"))
        self.model = model.removeprefix("models/")
        self.finish = "MAX_TOKENS" if capped else "STOP"
        self.usage: dict[str, Any] = {
            "promptTokenCount": input_tokens,
            "candidatesTokenCount": n,
            "totalTokenCount": input_tokens + n + len(self.reasoning),
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input_tokens}],
        }
        if self.reasoning:
            self.usage["thoughtsTokenCount"] = len(self.reasoning)
        self.signature = "sig-" + self.rid
        self.events = [self._event(p) for p in self._parts()]
        self.events.append(self._event([{"text": ""}], last=True))

    def _parts(self) -> list[list[dict[str, Any]]]:
        """The parts of each event but the last."""
        out: list[list[dict[str, Any]]] = [[{"text": t, "thought": True}] for t in self.reasoning]
        text = "".join(self.tokens)
        if self.tool is None:
            out.extend([{"text": t}] for t in self.tokens)
        elif not self.stream_args:
            out.append([{"functionCall": {"name": self.tool, "args": {"text": text}}}])
        else:
            out.append([{"functionCall": {"name": self.tool, "willContinue": True}}])
            for tok in self.tokens:
                arg = {"jsonPath": "$.text", "stringValue": tok, "willContinue": True}
                out.append([{"functionCall": {"partialArgs": [arg], "willContinue": True}}])
            out.append([{"functionCall": {}}])
        if self.reasoning:
            first = len(self.reasoning)
            out[first] = [{**out[first][0], "thoughtSignature": self.signature}]
        return out

    def _event(self, parts: list[dict[str, Any]], *, last: bool = False) -> bytes:
        cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        usage: dict[str, Any] = {
            "promptTokenCount": self.usage["promptTokenCount"],
            "totalTokenCount": self.usage["promptTokenCount"],
        }
        if last:
            cand["finishReason"] = self.finish
            usage = self.usage
        event = {
            "candidates": [cand],
            "usageMetadata": usage,
            "modelVersion": self.model,
            "responseId": self.rid,
        }
        return orjson.dumps(event)

    def merged(self) -> dict[str, Any]:
        """The generateContent body: the events' parts merged, the last event's rest."""
        parts: list[dict[str, Any]] = []
        if self.reasoning:
            parts.append({"text": "".join(self.reasoning), "thought": True})
        text = "".join(self.tokens)
        if self.tool is None:
            answer: dict[str, Any] = {"text": text}
        else:
            answer = {"functionCall": {"name": self.tool, "args": {"text": text}}}
        if self.reasoning:
            answer["thoughtSignature"] = self.signature
        parts.append(answer)
        last = orjson.loads(self.events[-1])
        last["candidates"][0]["content"]["parts"] = parts
        return dict(last)


def _first_function(tools: Any) -> str | None:
    for tool in tools if isinstance(tools, list) else []:
        decls = tool.get("functionDeclarations") if isinstance(tool, dict) else None
        if isinstance(decls, list) and decls and isinstance(decls[0], dict):
            return str(decls[0].get("name") or "tool")
    return None
