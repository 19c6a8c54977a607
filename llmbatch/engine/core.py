"""The engine: what one Client shares across every request, and running one request.

One Engine per Client: one connection pool (the adapter), one rate governor, one retry
policy and one concurrency limiter. ``slot()`` bounds every request in flight together,
whoever sends it (a batch, ``complete``, ``stream``, many FastAPI handlers at once): it
is the one owner of concurrency. With ``--concurrency auto`` its size is the adaptive
controller's limit, so in-flight requests follow the controller as it grows and shrinks.

``execute`` runs one request under the retry policy: wait for the admission ramp and the
governor, stream an attempt, learn from its headers and errors, build the Outcome. An error fatal
for the whole run (a bad key, exhausted quota) is raised; every other failure becomes a
failed Outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

import orjson

from llmbatch.clock import now
from llmbatch.config.model import ProviderConfig, RunConfig
from llmbatch.engine.gate import Ramp
from llmbatch.engine.retry import Verdict, classify, run_with_retries
from llmbatch.engine.stream import AnswerBounds, LiveCounts, stream_attempt
from llmbatch.errors import (
    BudgetExceeded,
    ProviderError,
    RateLimited,
    RequestError,
    StatusError,
    UnexpectedError,
    WrongEventLoop,
)
from llmbatch.http.base import ClientAdapter
from llmbatch.pacing import (
    AdaptiveConcurrency,
    ConcurrencyControl,
    ConcurrencyLimiter,
    OutputEstimate,
    Pacer,
    PollWait,
    estimate_input_tokens,
    governor_for,
)
from llmbatch.pacing.signals import OVERLOADED, STRAINED, overload_signal
from llmbatch.pricing import (
    PriceBook,
    Rates,
    Spend,
    TokenUsage,
    cost_of,
    request_model,
    usage_from_body,
    worst_case_usd,
)
from llmbatch.providers.anthropic import DEFAULT_MAX_TOKENS as ANTHROPIC_DEFAULT_MAX_TOKENS
from llmbatch.providers.base import Provider, StreamAssembler
from llmbatch.records import Attempt, Cost, Outcome, PromptRecord, RequestMetrics
from llmbatch.redaction import ID_LIMIT, Redactor

__all__ = ["Engine", "NullText", "TextTarget"]

# The budget's bound on a request's output when it sets no max_tokens and the model's
# context window is unknown (docs/cost.md): a guess, so set max_tokens for a hard bound.
UNBOUNDED_OUTPUT_TOKENS = 32_768


class TextTarget(Protocol):
    """Where a request's text goes while it streams (a file, a queue, nowhere)."""

    def extend(self, texts: list[str]) -> None:
        """Add the answer deltas that one read of the stream brought, in order."""

    def extend_reasoning(self, texts: list[str]) -> None:
        """Add the reasoning deltas that one read of the stream brought, in order."""

    def restart(self) -> None:
        """Forget what the failed attempt wrote: a retry starts the text over."""


class NullText:
    """A TextTarget that keeps nothing (the answer is in the Outcome's body anyway)."""

    __slots__ = ()

    def extend(self, texts: list[str]) -> None:
        pass

    def extend_reasoning(self, texts: list[str]) -> None:
        pass

    def restart(self) -> None:
        pass


NULL_TEXT = NullText()


class Engine:
    """Shared state of one Client; ``execute`` runs one request inside a ``slot()``."""

    def __init__(
        self,
        cfg: RunConfig,
        provider: Provider,
        client: ClientAdapter,
        *,
        secrets: Iterable[str | None] = (),
        governor: Pacer | None = None,
        concurrency: ConcurrencyControl | None = None,
        prices: PriceBook | None = None,
        budget: Spend | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock``: one clock for pacing and request timing (the governor's); by default
        the running event loop's (llmbatch/clock.py), virtual in tests."""
        self.cfg = cfg
        self.prices = prices if prices is not None else PriceBook(cfg)
        self.budget = budget
        self.clock = clock or now
        self.timer = self.clock
        self.provider = provider
        self.client = client
        # The API key and URL credentials: out of every message and record (redaction.py).
        self.redactor = Redactor(secrets)
        self.governor: Pacer = governor if governor is not None else governor_for(cfg)
        self.aimd: ConcurrencyControl | None = None
        limit_source: Callable[[], int]
        if cfg.adaptive:
            # ``concurrency``: a controller from outside (a Ray worker's cluster share).
            aimd = concurrency or AdaptiveConcurrency(
                initial=min(cfg.concurrency, cfg.max_concurrency), floor=1, cap=cfg.max_concurrency
            )
            self.aimd = aimd
            limit_source = lambda: aimd.limit  # noqa: E731 - read on every acquire
        else:
            fixed = cfg.concurrency
            limit_source = lambda: fixed  # noqa: E731
        self.limiter = ConcurrencyLimiter(limit_source)
        self.ramp = Ramp(lambda: self.limiter.limit)
        self.output_estimate = OutputEstimate()
        self.live = LiveCounts()
        self.attempt_listeners: list[Callable[[RequestError], None]] = []
        # Called with each response's headers (llmbatch compare notes the server's id).
        self.header_listeners: list[Callable[[Any], None]] = []
        self.succeeded = 0  # requests of any caller that ended with an answer
        # The event loop the engine lives on: its pool, limiter and governor belong to it.
        self.loop: asyncio.AbstractEventLoop | None = None

    def check_loop(self) -> None:
        """Raise WrongEventLoop unless called from the engine's own event loop (the first
        loop that uses it, when nothing set it)."""
        running = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = running
        elif running is not self.loop:
            raise WrongEventLoop(
                "this Client was started on another event loop: a Client belongs to the "
                "event loop that started it (its connections, concurrency limit and rate "
                "limits live there); use one Client per event loop, started and closed in "
                "it (nothing was sent or recorded)"
            )

    @property
    def concurrency_limit(self) -> int:
        """How many requests may be in flight now."""
        return self.limiter.limit

    @property
    def max_in_flight(self) -> int:
        """The most requests that can ever be in flight (connection pool size)."""
        return self.cfg.max_concurrency if self.cfg.adaptive else self.cfg.concurrency

    async def acquire_slot(self) -> None:
        """Wait for an in-flight slot and take it (pair with ``release_slot``)."""
        self.check_loop()
        await self.limiter.acquire()
        self.live.in_flight += 1

    def release_slot(self) -> None:
        """Give a slot back."""
        self.live.in_flight -= 1
        self.limiter.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the engine's in-flight slots for the duration of the block."""
        await self.acquire_slot()
        try:
            yield
        finally:
            self.release_slot()

    @property
    def content_seen(self) -> bool:
        """True once any request streamed content (the job is not systematically wrong)."""
        return self.succeeded > 0 or self.live.tokens > 0

    async def reserve_cost(self, rec: PromptRecord) -> float | None:
        """Hold ``rec``'s worst-case cost in the budget (``max_cost``) before it is sent;
        None without a budget. Waits while requests in flight may still make room.

        Raises BudgetExceeded when it can never fit, or its model has no price.
        """
        budget = self.budget
        if budget is None:
            return None
        model = request_model(rec.body, self.cfg.provider)
        rates = self.prices.rates(model)
        if rates is None:
            raise BudgetExceeded(f"{self.prices.why_unpriced(model)}: max_cost needs a price")
        worst = worst_case_usd(*token_bounds(rec, rates, self.cfg.provider), rates)
        if not await budget.admit(worst):
            raise BudgetExceeded(
                f"the next request ({rec.id!r}) could cost up to ${worst:.6f}, more than is "
                f"left of max_cost ${budget.max_usd:g} (see docs/cost.md)"
            )
        return worst

    async def execute(
        self,
        rec: PromptRecord,
        text: TextTarget = NULL_TEXT,
        *,
        taken_at: float | None = None,
        retry_after_text: bool = True,
        raise_failure: bool = False,
        reserved_usd: float | None = None,
    ) -> Outcome:
        """Run ``rec`` to an Outcome (call inside ``slot()``).

        ``taken_at`` (llmbatch.clock.now) starts its queue time. With ``retry_after_text``
        False, a failure after some text reached ``text`` is not retried (the caller has
        already shown that text). Raises the RequestError of an error fatal for the run,
        and with ``raise_failure`` that of any final failure. ``reserved_usd`` is what
        ``reserve_cost`` held for it: the request's real cost replaces it at the end.
        """
        run = _Request(self, rec, text, taken_at or self.timer(), retry_after_text)
        if reserved_usd is None or self.budget is None:
            return await run.run(raise_failure)
        actual = reserved_usd  # cancelled or fatal: nothing says it cost less
        try:
            outcome = await run.run(raise_failure)
            actual = outcome.cost.usd if outcome.cost is not None else reserved_usd
            return outcome
        finally:
            self.budget.settle(reserved_usd, actual)

    def price(
        self,
        rec: PromptRecord,
        body: dict[str, Any] | None,
        est_in: int,
        chunks: int,
        partial: list[int],
    ) -> Cost | None:
        """What ``rec`` cost; None when its model has no known price.

        ``body`` is the answer (None for a failure): priced from the usage it reports,
        or, when it reports none, from ``est_in`` and its ``chunks`` (flagged estimated).
        ``partial`` holds the chunks of each attempt that failed after streaming some:
        most providers bill those, so they are added, estimated the same way.
        """
        rates = self.prices.rates(request_model(rec.body, self.cfg.provider))
        if rates is None:
            return None
        parts: list[Cost] = []
        if body is not None:
            usage = usage_from_body(body)
            if usage is not None:
                parts.append(cost_of(usage, rates))
            else:
                parts.append(cost_of(TokenUsage(est_in, chunks), rates, estimated=True))
        for n in partial:
            parts.append(cost_of(TokenUsage(est_in, n), rates, estimated=True))
        if not parts:
            return Cost(0.0, source=rates.source)  # nothing was answered: nothing billed
        return parts[0] if len(parts) == 1 else _sum_costs(parts)

    def on_attempt_error(self, exc: RequestError, *, age_s: float | None = None) -> None:
        """Learn from a failed attempt, one owner per signal (pacing/signals.py).

        Its rate-limit headers and a 429's pause go to the rate pacer; the concurrency
        controller hears only what says the server is overloaded (a 429 without rate
        information among them). ``age_s``: since the attempt was sent.
        """
        live = self.live
        live.failed_attempts += 1
        live.last_error = exc.code
        for listener in self.attempt_listeners:  # e.g. a batch's first-attempts check
            listener(exc)
        rate_info = False
        if isinstance(exc, StatusError) and exc.headers:
            refused = isinstance(exc, RateLimited)
            rate_info = self.governor.observe_headers(exc.headers, age_s=age_s, refused=refused)
        if isinstance(exc, RateLimited):
            self.ramp.open()  # the limit is found: the pacer and its Retry-After own it now
            # A huge Retry-After must not freeze every request: cap the shared pause.
            pause_s = exc.retry_after_s
            if pause_s is not None:
                pause_s = min(pause_s, self.cfg.retry.backoff_max_s)
            self.governor.on_rate_limited(pause_s, age_s=age_s)
        if self.aimd is not None:
            signal = overload_signal(exc, rate_info=rate_info)
            if signal == OVERLOADED:
                self.aimd.on_rate_limited()
            elif signal == STRAINED:
                self.aimd.on_error()

    def on_success(self, ttft_s: float | None, *, held: bool = False) -> None:
        """An answer arrived: feed the adaptive controller (which may open more slots).

        ``held``: the rate governor held the request back. Then the rate, not
        concurrency, was the bottleneck: more slots would only queue more requests at
        the governor (each holding a reservation made on estimates), so the controller
        does not hear of it.
        """
        self.succeeded += 1
        if self.aimd is not None and ttft_s is not None and not held:
            self.aimd.on_success(ttft_s)
            self.limiter.notify()


class _Request:
    """The state of one request across its attempts."""

    __slots__ = (
        "sent_at",
        "eng",
        "rec",
        "text",
        "attempts",
        "metrics",
        "waiting_since",
        "may_retry_text",
        "backing_off",
        "partial",
        "ramp_told",
        "paced_at",
        "held",
    )

    def __init__(
        self,
        eng: Engine,
        rec: PromptRecord,
        text: TextTarget,
        taken_at: float,
        retry_after_text: bool,
    ) -> None:
        self.eng = eng
        self.rec = rec
        self.text = text
        self.attempts: list[Attempt] = []
        self.metrics = RequestMetrics()
        # Queue time runs from here to the final attempt's send: the slot, the governor
        # and (on a retry) the backoff since the last failure, never failed attempts.
        self.waiting_since = taken_at
        self.may_retry_text = retry_after_text
        self.backing_off = False  # counted in live.retrying while waiting to retry
        self.sent_at = taken_at  # when the current attempt was sent (the engine's timer)
        self.partial: list[int] = []  # chunks streamed by each attempt that then failed
        self.ramp_told = False  # the admission ramp heard of this attempt's answer
        self.paced_at = 0.0  # when the current attempt was sent, on the pacing clock
        self.held = False  # the rate governor held the current attempt back

    def _end_backoff(self) -> None:
        if self.backing_off:
            self.backing_off = False
            self.eng.live.retrying -= 1

    async def run(self, raise_failure: bool) -> Outcome:
        try:
            return await self._run(raise_failure)
        finally:
            self._end_backoff()

    async def _run(self, raise_failure: bool) -> Outcome:
        eng, rec = self.eng, self.rec
        request = eng.provider.build_request(rec)
        est_in, cap = estimate_tokens(rec)
        est_out = eng.output_estimate.for_request(cap)
        cfg = eng.cfg
        bounds = AnswerBounds.for_request(
            rec.body, eng.provider.profile.params, cfg.max_answer_bytes, cfg.max_event_bytes
        )

        async def attempt(n: int) -> tuple[StreamAssembler, str | None]:
            if n > 1:
                self.text.restart()
                self._end_backoff()
            await eng.ramp.wait_turn()
            self.ramp_told = False
            try:
                self.held = await _pace(eng.governor, est_in, est_out)
            except BaseException:  # cancelled while paced: its turn goes to the next
                eng.ramp.answered(informed=False)
                raise
            self.sent_at = eng.timer()
            self.paced_at = eng.clock()
            m = self.metrics = RequestMetrics(
                queue_s=self.sent_at - self.waiting_since, sent_at=self.sent_at
            )
            asm = eng.provider.new_assembler(rec)
            try:
                try:
                    rid = await stream_attempt(
                        eng.client,
                        request,
                        asm,
                        self.text.extend,
                        m,
                        eng.cfg.timeouts,
                        self._on_headers,
                        eng.live,
                        bounds,
                        self.text.extend_reasoning,
                        eng.timer,
                    )
                except RequestError as exc:
                    eng.redactor.scrub(exc)  # first: nothing sees the server's text unredacted
                    raise
                except Exception as unexpected:
                    # Never let one odd response kill a caller: record it and go on.
                    name = type(unexpected).__name__
                    err = UnexpectedError(f"{name}: {unexpected}")
                    eng.redactor.scrub(err)
                    raise err from unexpected
            except RequestError as exc:
                self.waiting_since = eng.timer()
                eng.live.tokens -= m.chunks
                if m.chunks:
                    self.partial.append(m.chunks)
                self.attempts.append(_attempt_record(n, exc))
                eng.on_attempt_error(exc, age_s=eng.clock() - self.paced_at)
                raise
            finally:
                if not self.ramp_told:  # whatever happened, never leave the others waiting
                    eng.ramp.answered(informed=False)
            if rid is not None:  # a header from the server, like any other
                rid = eng.redactor.clip(rid, ID_LIMIT)
            self.attempts.append(Attempt(n, 200, None, None, rid, 0.0))
            return asm, rid

        def on_retry(exc: BaseException, wait_s: float) -> None:
            if not self.backing_off:
                self.backing_off = True
                eng.live.retrying += 1
            if self.attempts:
                self.attempts[-1].wait_s = wait_s

        def may_retry(exc: BaseException) -> bool:
            return self.may_retry_text or self.metrics.chunks == 0

        try:
            asm, rid = await run_with_retries(
                attempt, eng.cfg.retry, on_retry=on_retry, may_retry=may_retry
            )
        except RequestError as exc:
            if raise_failure or classify(exc) is Verdict.ABORT_RUN:
                raise
            failed = _failure(rec, exc, self.attempts, self.metrics)
            failed.cost = eng.price(rec, None, est_in, 0, self.partial)
            return failed
        m = self.metrics
        inp, out = asm.usage()
        if out is not None:
            m.output_tokens, m.output_tokens_estimated = out, False
        else:
            m.output_tokens, m.output_tokens_estimated = m.chunks, True
        m.input_tokens = inp
        reasoning = asm.reasoning_tokens()
        if reasoning is not None:
            m.reasoning_tokens, m.reasoning_tokens_estimated = reasoning, False
        elif m.reasoning_chunks:
            m.reasoning_tokens, m.reasoning_tokens_estimated = m.reasoning_chunks, True
        eng.governor.settle(est_in, est_out, inp, out)
        eng.output_estimate.observe(m.output_tokens)
        eng.on_success(m.ttft_s, held=self.held)
        body = asm.body()
        return Outcome(
            record_id=rec.id,
            status_code=200,
            request_id=rid,
            body=body,
            error_code=None,
            error_message=None,
            attempts=self.attempts,
            metrics=m,
            line_no=rec.line_no,
            cost=eng.price(rec, body, est_in, m.chunks, self.partial),
        )

    def _on_headers(self, headers: Any) -> None:
        # age_s: which of our sends the server's rate-limit figures can include.
        eng = self.eng
        informed = eng.governor.observe_headers(headers, age_s=eng.clock() - self.paced_at)
        for listener in eng.header_listeners:
            listener(headers)
        self.ramp_told = True
        eng.ramp.answered(informed=informed)  # the fast path: as soon as headers are in


async def _pace(governor: Pacer, est_in: int, est_out: int) -> bool:
    """Wait for the rate governor (queue time, never TTFT); True if it held the request
    (a wait for budget: a PollWait, a cluster's grant on its way, is not one)."""
    wait_s = governor.reserve(est_in, est_out)
    held = False
    while wait_s > 0:
        held = held or not isinstance(wait_s, PollWait)
        await asyncio.sleep(wait_s)
        wait_s = governor.paused_for_s()  # a 429 may have come in meanwhile
    return held


def estimate_tokens(rec: PromptRecord) -> tuple[int, int | None]:
    """(input token estimate, max_tokens or None) for the governor; corrected from usage."""
    body = rec.body
    chars = 0
    messages = body.get("messages") or body.get("contents") or body.get("input")
    n_messages = 1
    if isinstance(messages, str):  # a Responses API input string
        chars = len(messages)
    elif isinstance(messages, list):
        n_messages = len(messages)
        for msg in messages:
            # Chat and Responses messages hold "content", Gemini's contents "parts".
            content = msg.get("content", msg.get("parts")) if isinstance(msg, dict) else None
            chars += len(content) if isinstance(content, str) else len(str(content))
    elif isinstance(body.get("prompt"), str):
        chars = len(body["prompt"])
    gen = body.get("generationConfig")
    cap = (
        body.get("max_tokens")
        or body.get("max_completion_tokens")
        or body.get("max_output_tokens")
        or (gen.get("maxOutputTokens") if isinstance(gen, dict) else None)
    )
    if not isinstance(cap, int) or cap <= 0:
        cap = None
    return estimate_input_tokens(chars, n_messages), cap


def token_bounds(rec: PromptRecord, rates: Rates, profile: ProviderConfig) -> tuple[int, int]:
    """(input, output) tokens ``rec`` can use at most, for the budget's worst case.

    Input: the bytes of the request body as JSON (every text, tool and parameter): no
    byte-level BPE token is shorter than a byte, and the JSON's quotes and keys outnumber
    the few framing tokens per message. Output: the request's ``max_tokens`` (or
    ``max_completion_tokens``), else the profile's, else Anthropic's default 1024, else
    the model's context window, else UNBOUNDED_OUTPUT_TOKENS (an assumption).
    """
    body = {**profile.params, **rec.body}
    input_bound = len(orjson.dumps(body, default=str))
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        cap = body.get(key)
        if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
            return input_bound, cap
    if profile.kind == "anthropic":
        return input_bound, ANTHROPIC_DEFAULT_MAX_TOKENS
    if rates.context_window:
        return input_bound, rates.context_window
    return input_bound, UNBOUNDED_OUTPUT_TOKENS


def _sum_costs(parts: list[Cost]) -> Cost:
    first = parts[0]
    return Cost(
        usd=sum(c.usd for c in parts),
        input_usd=sum(c.input_usd for c in parts),
        cached_input_usd=sum(c.cached_input_usd for c in parts),
        cache_write_usd=sum(c.cache_write_usd for c in parts),
        output_usd=sum(c.output_usd for c in parts),
        reasoning_usd=sum(c.reasoning_usd for c in parts),
        source=first.source,
        estimated=any(c.estimated for c in parts),
    )


def _http_facts(exc: RequestError) -> tuple[int | None, str | None]:
    """(status, provider request id) of the response an error came with: an HTTP error,
    or a provider error inside a 2xx answer; (None, None) when there was no response."""
    if isinstance(exc, StatusError | ProviderError):
        return exc.status, exc.request_id
    return None, None


def _attempt_record(n: int, exc: RequestError) -> Attempt:
    """The attempt's entry in the record (``exc`` already scrubbed: redacted, then clipped)."""
    status, rid = _http_facts(exc)
    return Attempt(n, status, exc.code, str(exc), rid, 0.0)


def _failure(
    rec: PromptRecord,
    exc: RequestError,
    attempts: list[Attempt],
    m: RequestMetrics,
) -> Outcome:
    status, rid = _http_facts(exc)
    return Outcome(
        record_id=rec.id,
        status_code=status,
        request_id=rid,
        body=None,
        error_code=exc.code,
        error_message=str(exc),  # scrubbed when the attempt failed
        attempts=attempts,
        metrics=m,
        line_no=rec.line_no,
    )
