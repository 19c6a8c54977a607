"""A built-in OpenAI-compatible mock server (aiohttp.web) for tests, demos and benchmarks.

The answer is a deterministic function of the request (``expected_text``), so every
output byte can be checked. Streaming timing, measured from ``t0`` = the moment the
handler starts (request headers parsed, before the body is read):

- the role chunk (``{"role": "assistant", "content": ""}``, no text) is written at once;
- content token i (0-based, one per SSE event and one write) is due at
  ``t0 + ttft_s + i * itl_s``: the first content token ``ttft_s`` after the request
  arrived, then one every ``itl_s``;
- the finish chunk, the usage chunk and ``[DONE]`` follow the last token in one write.

The schedule is absolute, so timer lateness does not accumulate; each token can be late
by the event loop's timer granularity (asyncio on epoll rounds up to whole milliseconds)
and by any time the loop is busy. With ``itl_s = 0`` the tokens go in one write.

Per-request overrides come as headers: ``x-mock-tokens``, ``x-mock-ttft-ms``,
``x-mock-itl-ms``, ``x-mock-fault`` (a fault kind, on every attempt) and
``x-mock-fault-attempts`` (how many attempts of the same prompt the fault hits).
Configured fault *rates* pick prompts by a hash of their content and hit only their
first ``fault_attempts`` attempts, so a retrying client always gets through.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ..governor import TokenBucket
from .answers import count_prompt_tokens, expected_text, expected_tokens, prompt_key
from .wire import (
    ANTHROPIC_HTTP_FAULTS,
    Plan,
    anthropic_error,
    anthropic_limit_headers,
    completion,
    int_header,
    json_error,
    resolve,
    sse,
    stream_headers,
    text_completion_chunk,
    wait_for,
)

__all__ = [
    "FAULT_KINDS",
    "MockConfig",
    "MockServer",
    "expected_text",
    "expected_tokens",
    "start_mock_server",
]

FAULT_KINDS = (
    "429",  # rate limited, with Retry-After
    "quota",  # 429 insufficient_quota (fatal for a run)
    "401",  # echoes the key it was given, as some providers do (tests redaction)
    "400",
    "404",  # model_not_found
    "500",
    "502",
    "503",
    "reset",  # connection closed before any response
    "disconnect",  # connection closed mid-stream
    "stall",  # stream stops sending mid-way for stall_s
    "malformed",  # a chunk that is not JSON
    "error_payload",  # {"error": ...} inside a 200 stream
    "overloaded",  # {"error": {"type": "overloaded_error"}} inside a 200 stream
    "no_done",  # stream ends without [DONE]
    "slow_first_byte",  # headers only after slow_first_byte_s
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MockConfig:
    """How the mock answers. Rates in ``faults`` are fractions of distinct prompts."""

    tokens: int = 32
    ttft_s: float = 0.02
    itl_s: float = 0.002
    model: str = "mock-model"
    faults: Mapping[str, float] = field(default_factory=dict)
    fault_attempts: int = 1
    retry_after_s: float = 0.05
    stall_s: float = 30.0
    slow_first_byte_s: float = 2.0
    # Rate limits like a real provider's: per limit_window_s (a minute, scaled down in
    # tests), refilled continuously, with a burst of 1/60 of the window's allowance.
    rpm: float | None = None
    tpm: float | None = None  # prompt + completion tokens
    limit_window_s: float = 60.0


@dataclass(slots=True)
class MockStats:
    """Counters exposed at GET /mock/stats."""

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    completed: int = 0
    rate_limited: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    # (monotonic time, tokens) of every request admitted under a rate limit.
    admitted: list[tuple[float, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "completed": self.completed,
            "rate_limited": self.rate_limited,
            "faults": dict(self.faults),
        }


class _Handler:
    def __init__(self, cfg: MockConfig) -> None:
        self.cfg = cfg
        self.stats = MockStats()
        self._attempts: dict[bytes, int] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._flight_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._limits: dict[str, tuple[float, TokenBucket]] = {}
        for name, limit in (("requests", cfg.rpm), ("tokens", cfg.tpm)):
            if limit is not None:
                bucket = TokenBucket(limit / cfg.limit_window_s, max(1.0, limit / 60.0))
                self._limits[name] = (limit, bucket)

    # -- routing -----------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/mock/stats", self.get_stats)
        app.router.add_post("/mock/reset", self.reset)
        return app

    async def models(self, request: web.Request) -> web.Response:
        data = {"object": "list", "data": [{"id": self.cfg.model, "object": "model"}]}
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(self.stats.as_dict()), content_type="application/json"
        )

    async def reset(self, request: web.Request) -> web.Response:
        self.stats = MockStats()
        self._attempts.clear()
        return web.Response(text="ok")

    # -- chat ----------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        st = self.stats
        st.requests += 1
        st.in_flight += 1
        if st.in_flight > st.max_in_flight:
            st.max_in_flight = st.in_flight
        if self._flight_waiters:
            self._flight_waiters = resolve(self._flight_waiters, st.in_flight)
        try:
            return await self._chat(request)
        finally:
            st.in_flight -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        body = await _json_body(request)
        if body is None:
            return json_error(400, "invalid_request_error", "body is not valid JSON")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return json_error(400, "invalid_request_error", "'messages' is required")
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        return await self._openai_answer(request, body, messages, cap, t0, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        body = await _json_body(request)
        if body is None:
            return json_error(400, "invalid_request_error", "body is not valid JSON")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return json_error(400, "invalid_request_error", "'prompt' must be a string")
        messages = [{"role": "user", "content": prompt}]
        return await self._openai_answer(
            request, body, messages, body.get("max_tokens"), t0, chat=False
        )

    async def _openai_answer(
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
        plan = self._plan(request, cap, t0)
        limit_headers, rejected = self._admit_openai(messages, plan)
        if rejected is not None:
            return rejected
        key = prompt_key(messages)
        fault = self._fault_for(key, request)
        if fault:
            early = await self._early_fault(fault, request)
            if early is not None:
                return early
        tokens = expected_tokens(messages, plan.n)
        finish = "length" if plan.capped else "stop"
        inp = count_prompt_tokens(messages)
        usage = {"prompt_tokens": inp, "completion_tokens": plan.n, "total_tokens": inp + plan.n}
        model = body.get("model") or self.cfg.model
        if not body.get("stream"):
            await _until_done(plan)
            self._completed()
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
        frame, tail = _chat_frames(model, finish) if chat else _completion_frames(model, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            last = {**text_completion_chunk(model, "", None), "choices": [], "usage": usage}
            if chat:
                last["object"] = "chat.completion.chunk"
                last["id"] = "chatcmpl-mock"
            tail += b"data: " + orjson.dumps(last) + b"\n\n"
        if fault != "no_done":
            tail += b"data: [DONE]\n\n"
        if chat:
            await resp.write(frame(None))  # the role chunk, at once
        if await self._stream_tokens(
            request, resp, plan, tokens, frame, fault, self._mid_stream_fault, tail
        ):
            await resp.write_eof()
            self._completed()
        return resp

    def _admit_openai(
        self, messages: list[Any], plan: Plan
    ) -> tuple[dict[str, str], web.Response | None]:
        """Rate-limit headers, and a 429 (OpenAI's shape) when the request is over a limit."""
        if not self._limits:
            return {}, None
        headers, retry_after_s = self._admit(count_prompt_tokens(messages) + plan.n)
        if retry_after_s is None:
            return headers, None
        self.stats.rate_limited += 1
        headers["retry-after-ms"] = str(max(1, int(retry_after_s * 1000)))
        return headers, json_error(429, "rate_limit_exceeded", "Rate limit reached", headers)

    def _completed(self) -> None:
        self.stats.completed += 1
        if self._waiters:
            self._waiters = resolve(self._waiters, self.stats.completed)

    async def wait_completed(self, count: int) -> None:
        """Return once ``count`` answers were sent in full (for tests: no polling)."""
        if self.stats.completed < count:
            await wait_for(self._waiters, count)

    async def wait_in_flight(self, count: int) -> None:
        """Return once ``count`` requests are being answered at the same time."""
        if self.stats.in_flight < count:
            await wait_for(self._flight_waiters, count)

    def _admit(self, tokens: int) -> tuple[dict[str, str], float | None]:
        """Charge one request of ``tokens``; (OpenAI-style headers, retry-after or None)."""
        costs = {"requests": 1.0, "tokens": float(tokens)}
        retry_after_s: float | None = None
        for name, (_, bucket) in self._limits.items():
            short = costs[name] - bucket.available
            if short > 0:
                wait = short / bucket.rate_per_s
                retry_after_s = wait if retry_after_s is None else max(retry_after_s, wait)
        if retry_after_s is None:
            for name, (_, bucket) in self._limits.items():
                bucket.reserve(costs[name])
            self.stats.admitted.append((time.monotonic(), tokens))
        headers: dict[str, str] = {}
        for name, (limit, bucket) in self._limits.items():
            left = max(0.0, bucket.available)
            headers[f"x-ratelimit-limit-{name}"] = str(int(limit))
            headers[f"x-ratelimit-remaining-{name}"] = str(int(left))
            reset_s = (bucket.capacity - left) / bucket.rate_per_s
            headers[f"x-ratelimit-reset-{name}"] = f"{reset_s:.3f}s"
        return headers, retry_after_s

    def _pick_fault(self, key: bytes, headers: Mapping[str, str]) -> str | None:
        forced = headers.get("x-mock-fault")
        limit = int_header(headers, "x-mock-fault-attempts", None)
        if forced is None and not self.cfg.faults:
            return None
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        if forced:
            return forced if limit is None or attempt <= limit else None
        if attempt > self.cfg.fault_attempts:
            return None
        # A stable point in [0, 1) per prompt, mapped onto the cumulative fault rates.
        u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64
        acc = 0.0
        for kind, rate in self.cfg.faults.items():
            acc += rate
            if u < acc:
                return kind
        return None

    async def _early_fault(self, fault: str, request: web.Request) -> web.StreamResponse | None:
        cfg = self.cfg
        if fault == "429":
            return json_error(
                429,
                "rate_limit_exceeded",
                "Rate limit reached",
                {"retry-after-ms": str(int(cfg.retry_after_s * 1000))},
            )
        if fault == "quota":
            return json_error(429, "insufficient_quota", "You exceeded your current quota")
        if fault == "401":
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            return json_error(401, "invalid_api_key", f"Incorrect API key provided: {key}")
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

    async def _mid_stream_fault(
        self, fault: str, resp: web.StreamResponse, request: web.Request
    ) -> bool:
        """Apply a mid-stream fault; True when the response is over."""
        if fault == "disconnect":
            transport = request.transport
            if transport is not None:
                transport.abort()
            return True
        if fault == "stall":
            await asyncio.sleep(self.cfg.stall_s)
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

    # -- /v1/completions and /v1/messages: chat's tokens, timing and faults ------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        """Legacy completions: chat's text for ``[{"role": "user", "content": prompt}]``."""
        return await self._counted(self._completions(request))

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic Messages: chat's text for the request's ``messages`` (not ``system``)."""
        return await self._counted(self._messages(request))

    async def _counted(self, handler: Awaitable[web.StreamResponse]) -> web.StreamResponse:
        st = self.stats
        st.requests += 1
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        if self._flight_waiters:
            self._flight_waiters = resolve(self._flight_waiters, st.in_flight)
        try:
            return await handler
        finally:
            st.in_flight -= 1

    def _plan(self, request: web.Request, cap: Any, t0: float) -> Plan:
        h, cfg = request.headers, self.cfg
        n = int_header(h, "x-mock-tokens", cfg.tokens)
        capped = isinstance(cap, int) and 0 < cap < n
        ttft_ms = int_header(h, "x-mock-ttft-ms", None)
        itl_ms = int_header(h, "x-mock-itl-ms", None)
        return Plan(
            n=cap if capped else n,
            capped=capped,
            ttft=cfg.ttft_s if ttft_ms is None else ttft_ms / 1000.0,
            itl=cfg.itl_s if itl_ms is None else itl_ms / 1000.0,
            t0=t0,
        )

    def _fault_for(self, key: bytes, request: web.Request) -> str | None:
        fault = self._pick_fault(key, request.headers)
        if fault:
            self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1
        return fault

    async def _stream_tokens(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        plan: Plan,
        tokens: list[str],
        frame: Callable[[str], bytes],
        fault: str | None,
        mid_fault: Callable[[str, web.StreamResponse, web.Request], Awaitable[bool]],
        tail: bytes,
    ) -> bool:
        """Write one frame per token on schedule, then ``tail``; False when a fault ended it.

        The schedule is absolute (token i due at t0 + ttft + i * itl): a timer that fires
        late (epoll rounds up to whole ms; a busy loop) delays one token, not all after it.
        """
        due = plan.t0 + plan.ttft
        delay = due - time.monotonic()
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
                due = max(due, time.monotonic())  # a stall shifts the rest of the stream
            pieces.append(frame(tok))
            if plan.itl > 0:
                await resp.write(pieces.pop())
                if i < plan.n - 1:
                    due += plan.itl
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
        pieces.append(tail)
        await resp.write(b"".join(pieces))
        return True

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        body = await _json_body(request)
        if body is None:
            return anthropic_error(400, "invalid_request_error", "body is not valid JSON")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return anthropic_error(400, "invalid_request_error", "messages: Field required")
        cap = body.get("max_tokens")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            return anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
        plan = self._plan(request, cap, t0)
        limit_headers: dict[str, str] = {}
        if self._limits:
            admitted, retry_after_s = self._admit(count_prompt_tokens(messages) + plan.n)
            limit_headers = anthropic_limit_headers(admitted)
            if retry_after_s is not None:
                self.stats.rate_limited += 1
                limit_headers["retry-after"] = str(max(1, math.ceil(retry_after_s)))
                limit_headers["retry-after-ms"] = str(max(1, int(retry_after_s * 1000)))
                return anthropic_error(
                    429,
                    "rate_limit_error",
                    "Number of requests has exceeded your rate limit",
                    limit_headers,
                )
        key = prompt_key(messages)
        fault = self._fault_for(key, request)
        if fault:
            early = await self._anthropic_early_fault(fault, request)
            if early is not None:
                return early
        tokens = expected_tokens(messages, plan.n)
        system = body.get("system")
        inp = count_prompt_tokens(messages) + (
            len(system.split()) if isinstance(system, str) else 0
        )
        msg: dict[str, Any] = {
            "id": "msg_mock" + hashlib.blake2b(key, digest_size=6).hexdigest(),
            "type": "message",
            "role": "assistant",
            "model": body.get("model") or self.cfg.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": inp, "output_tokens": 1},
        }
        stop_reason = "max_tokens" if plan.capped else "end_turn"
        if not body.get("stream"):
            await _until_done(plan)
            self._completed()
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
        if await self._stream_tokens(
            request, resp, plan, tokens, frame, fault, self._anthropic_mid_fault, tail
        ):
            await resp.write_eof()
            self._completed()
        return resp

    async def _anthropic_early_fault(
        self, fault: str, request: web.Request
    ) -> web.StreamResponse | None:
        """HTTP faults in Anthropic's error shape; the others as for chat."""
        spec = ANTHROPIC_HTTP_FAULTS.get(fault)
        if spec is None:
            return await self._early_fault(fault, request)
        status, etype, message = spec
        headers: dict[str, str] = {}
        if fault == "401":  # echo the key, as for chat (so redaction is tested here too)
            message = f"{message}: {request.headers.get('x-api-key', '')}"
        elif fault == "429":
            wait = self.cfg.retry_after_s
            headers = {
                "retry-after": str(max(1, math.ceil(wait))),
                "retry-after-ms": str(int(wait * 1000)),
            }
        return anthropic_error(status, etype, message, headers)

    async def _anthropic_mid_fault(
        self, fault: str, resp: web.StreamResponse, request: web.Request
    ) -> bool:
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
        return await self._mid_stream_fault(fault, resp, request)


def _chat_frames(model: Any, finish: str) -> tuple[Callable[[str | None], bytes], bytes]:
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


def _completion_frames(model: Any, finish: str) -> tuple[Callable[[str | None], bytes], bytes]:
    """(token frame, closing chunk) of a text_completion stream."""

    def frame(tok: str | None) -> bytes:
        return b"data: " + orjson.dumps(text_completion_chunk(model, tok or "", None)) + b"\n\n"

    return frame, b"data: " + orjson.dumps(text_completion_chunk(model, "", finish)) + b"\n\n"


async def _json_body(request: web.Request) -> dict[str, Any] | None:
    """The request's JSON object, or None when the body is not one."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


async def _until_done(plan: Plan) -> None:
    """Sleep until a non-streamed answer would have finished streaming."""
    done_at = plan.t0 + plan.ttft + plan.itl * (plan.n - 1)
    await asyncio.sleep(max(0.0, done_at - time.monotonic()))


class MockServer:
    """A running mock server; ``url`` is its OpenAI-style base URL (ending in /v1)."""

    def __init__(self, runner: web.AppRunner, handler: _Handler, host: str, port: int) -> None:
        self._runner = runner
        self._handler = handler
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}/v1"

    @property
    def stats(self) -> MockStats:
        """Live counters (requests, in-flight, max in-flight, faults injected)."""
        return self._handler.stats

    async def wait_completed(self, count: int) -> None:
        """Wait until ``count`` answers have been sent in full."""
        await self._handler.wait_completed(count)

    async def wait_in_flight(self, count: int) -> None:
        """Wait until ``count`` requests are in flight at once."""
        await self._handler.wait_in_flight(count)

    async def close(self) -> None:
        """Stop listening and close open connections."""
        await self._runner.cleanup()


async def start_mock_server(
    cfg: MockConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> MockServer:
    """Start the mock on ``host:port`` (port 0 = an ephemeral port) in the running loop."""
    handler = _Handler(cfg or MockConfig())
    runner = web.AppRunner(
        handler.app(), access_log=None, handle_signals=False, shutdown_timeout=0.1
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    bound = runner.addresses[0]
    return MockServer(runner, handler, host, int(bound[1]))
