"""Pacing on virtual time: the real engine against the mock's rate-limit models, no sockets.

A run against a per-minute limit lasts minutes of wall time. Here the engine (admission
ramp, rate governor, ``--concurrency auto``, retries with Retry-After) runs in an event
loop whose clock jumps to the next timer whenever nothing is ready, so minutes pass in a
fraction of a second. Requests go to an adapter that answers from the mock's own
rate-limit models (``llmbatch.mockserver.ratelimits``: its own code, not the pacer's),
with the mock's deterministic answers; that model's log (``MockRateLimits.measured``)
says how close the run came to the rate it allows.

What this leaves out is the wire: the same pacing over real sockets is tested in
test_pacing_e2e.py (wall clock, upper bounds only) and measured in bench/pacing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmbatch.config.load import RunConfig, load_config
from llmbatch.engine.batch import BatchRun
from llmbatch.engine.core import Engine
from llmbatch.http.base import ClientAdapter, ClientOptions, HTTPRequest, StreamingResponse
from llmbatch.metrics import RunMetrics
from llmbatch.mockserver import MockConfig, expected_text
from llmbatch.mockserver.answers import (
    answer_length,
    count_prompt_tokens,
    expected_tokens,
    prompt_key,
)
from llmbatch.mockserver.ratelimits import MockRateLimits
from llmbatch.mockserver.state import retry_after_headers
from llmbatch.mockserver.streaming import chat_frames
from llmbatch.pacing import AdaptiveConcurrency, governor_for
from llmbatch.providers import make_provider
from llmbatch.records import Outcome
from llmbatch.rundir.reader import iter_items

from . import virtualtime

__all__ = ["SimResult", "VirtualClockLoop", "simulate"]

WALL_ZERO_S = 1_800_000_000.0  # the virtual Unix time at loop time 0 (RFC 3339 resets)
RATE_LIMITED_BODY = b'{"error":{"type":"rate_limit_exceeded","message":"Rate limit reached"}}'


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class VirtualClockLoop(virtualtime.VirtualClockLoop):
    """The virtual-time loop from tests/virtualtime.py, with virtual Unix time too."""

    def wall(self) -> float:
        """Virtual Unix time."""
        return WALL_ZERO_S + self.now_s


class ModelAdapter(ClientAdapter):
    """Answers from the mock's rate-limit model: 429 with its headers and Retry-After, or
    a chat stream (headers at once, the tokens ``cfg.ttft_s`` later, the answer's end
    ``cfg.itl_s`` per token after that)."""

    name = "model"

    def __init__(
        self, limits: MockRateLimits, cfg: MockConfig, *, style: str, options: ClientOptions
    ) -> None:
        super().__init__(options)
        self._limits = limits
        self._cfg = cfg
        self._style = style
        self.requests = 0
        self.rate_limited = 0

    @contextlib.asynccontextmanager
    async def open(self, request: HTTPRequest) -> AsyncIterator[StreamingResponse]:
        body = orjson.loads(request.body)
        messages = body["messages"]
        n = answer_length(prompt_key(messages), self._cfg.tokens, self._cfg.tokens_spread)
        self.requests += 1
        verdict = self._limits.admit(count_prompt_tokens(messages), n, self._style)
        if not verdict.admitted:
            self.rate_limited += 1
            headers = dict(verdict.headers)
            retry_after_headers(verdict.retry_after_s or 0.0, headers)
            yield StreamingResponse(429, headers, _chunks(RATE_LIMITED_BODY))
            return
        headers = {"content-type": "text/event-stream", **verdict.headers}
        yield StreamingResponse(200, headers, self._body(messages, n, body.get("model")))

    async def _body(self, messages: Any, n: int, model: Any) -> AsyncIterator[bytes]:
        cfg = self._cfg
        frame, tail = chat_frames(model, "stop")
        await asyncio.sleep(cfg.ttft_s)
        yield frame(None) + b"".join(frame(t) for t in expected_tokens(messages, n))
        await asyncio.sleep(cfg.itl_s * max(0, n - 1))
        self._limits.finish(n)
        inp = count_prompt_tokens(messages)
        usage = {"prompt_tokens": inp, "completion_tokens": n, "total_tokens": inp + n}
        last = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "choices": []}
        yield tail + b"data: " + orjson.dumps({**last, "usage": usage}) + b"\n\ndata: [DONE]\n\n"

    async def aclose(self) -> None:
        pass


@dataclass
class SimResult:
    """What one simulated run did, as the server model counted it."""

    measured: dict[str, dict[str, Any]]  # MockRateLimits.measured()
    requests: int  # every attempt the server saw
    rate_limited: int  # of them answered 429
    succeeded: int
    exact: bool  # every answer is the mock's, byte for byte
    duration_s: float  # virtual
    concurrency_limit: int | None
    summary: dict[str, Any] = field(default_factory=dict)

    def ratio(self, name: str = "requests") -> float:
        """Achieved against allowed rate for limit ``name``."""
        m = self.measured[name]
        return float(m["achieved_per_s"] or 0.0) / float(m["allowed_per_s"])

    @property
    def share_429(self) -> float:
        return self.rate_limited / max(1, self.requests)


def _config(flags: dict[str, Any], family: str) -> RunConfig:
    """A run's config for a profile of OpenAI's wire that reads ``family``'s headers (the
    server's style); ``flags`` are run options."""
    target: dict[str, Any] = {
        "kind": "openai",
        "base_url": "http://model.invalid/v1",
        "model": "mock-model",
        "limits": {},
    }
    if family:
        target["limits"] = {"headers": family}
    return load_config(
        None,
        flags={"provider": "target", "progress": False, **flags},
        environ={},
        data={"providers": {"target": target}},
    )


def _rows(prompts: int) -> list[dict[str, Any]]:
    return [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(prompts)]


class _Exact:
    """Checks each outcome against the mock's deterministic answer (``ok``: all were)."""

    def __init__(self, rows: list[dict[str, Any]], server: MockConfig) -> None:
        self._rows = rows
        self._server = server
        self.ok = True

    def __call__(self, outcome: Outcome, line: dict[str, Any]) -> None:
        body = outcome.body or {}
        prompt = self._rows[int(outcome.record_id[1:])]["prompt"]
        messages = [{"role": "user", "content": prompt}]
        n = answer_length(prompt_key(messages), self._server.tokens, self._server.tokens_spread)
        text = body.get("choices", [{}])[0].get("message", {}).get("content")
        self.ok = self.ok and outcome.ok and text == expected_text(messages, n)


async def _items(rows: list[dict[str, Any]]) -> AsyncIterator[Any]:
    for item in iter_items(rows):
        yield item


def _setup(
    server: MockConfig, flags: dict[str, Any], family: str
) -> tuple[VirtualClockLoop, MockRateLimits, RunConfig]:
    """The running virtual-time loop, the server's limits on its clock, the run's config."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualClockLoop)
    limits = MockRateLimits(server, clock=loop.time, wall_clock=loop.wall)
    return loop, limits, _config(flags, family)


def _adapter(
    limits: MockRateLimits, server: MockConfig, style: str, cfg: RunConfig
) -> ModelAdapter:
    options = ClientOptions(max_connections=cfg.max_concurrency, timeouts=cfg.timeouts)
    return ModelAdapter(limits, server, style=style, options=options)


@dataclass(frozen=True)
class Spec:
    """One simulated run: the server, the prompts, the run options, the header style the
    server answers in and the header family the client reads them as."""

    server: MockConfig
    prompts: int
    flags: dict[str, Any]
    style: str = "openai"
    family: str = ""


async def _run(spec: Spec) -> SimResult:
    server = spec.server
    loop, limits, cfg = _setup(server, spec.flags, spec.family)
    adapter = _adapter(limits, server, spec.style, cfg)
    aimd = None
    if cfg.adaptive:
        aimd = AdaptiveConcurrency(
            initial=min(cfg.concurrency, cfg.max_concurrency),
            floor=1,
            cap=cfg.max_concurrency,
            clock=loop.time,
        )
    engine = Engine(
        cfg,
        make_provider(cfg.provider, None, cfg.provider.base_url),
        adapter,
        governor=governor_for(cfg, clock=loop.time, wall_clock=loop.wall),
        concurrency=aimd,
        clock=loop.time,
    )
    rows = _rows(spec.prompts)
    exact = _Exact(rows, server)
    metrics = RunMetrics()
    t0 = loop.time()
    await BatchRun(engine, _items(rows), metrics, on_record=exact).run()
    return SimResult(
        measured=limits.measured(),
        requests=adapter.requests,
        rate_limited=adapter.rate_limited,
        succeeded=metrics.succeeded,
        exact=exact.ok and metrics.succeeded == spec.prompts,
        duration_s=loop.time() - t0,
        concurrency_limit=None if aimd is None else aimd.limit,
    )


def simulate(
    server: MockConfig,
    *,
    prompts: int,
    style: str = "openai",
    family: str = "",
    **flags: Any,
) -> SimResult:
    """Run ``prompts`` prompts through the engine against ``server``'s limits, on virtual
    time. The server answers with ``style``'s rate-limit headers (openai, anthropic),
    read as header ``family`` says ("" = generic: a server of unknown kind); ``flags``
    are run options (concurrency, ...)."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(_run(Spec(server, prompts, flags, style, family)))
