"""Bounded-concurrency dispatch: prompts in, one result record per prompt out.

``concurrency`` workers pull from the prompt iterator, so at most that many prompts
are held in memory whatever the input size. Each request runs under the retry policy
and a per-attempt deadline; its text is streamed to the run directory as it arrives.

Stopping (a signal, --max-runtime, or an error fatal for the run) stops taking new
prompts; requests in flight get a grace period, then are cancelled. A request that
did not finish gets no record, so the next run with the same command does it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .clients.base import ClientAdapter
from .config import RunConfig
from .errors import (
    DeadlineExceeded,
    HTTPStatusError,
    InputError,
    LLMBatchError,
    RateLimited,
    RequestError,
    TruncatedStream,
    UnexpectedError,
)
from .governor import AdaptiveConcurrency, ConcurrencyLimiter, RateGovernor, estimate_input_tokens
from .metrics import INPUT_ERROR, RunMetrics, request_metrics_dict
from .providers.base import Provider, StreamAssembler
from .reader import error_record_id
from .records import Attempt, Outcome, PromptRecord, RequestMetrics
from .retry import Verdict, classify, run_with_retries
from .sse import SSEDecoder
from .writer import ResumeIndex, RunDir, TextSink

__all__ = ["Dispatcher", "RunResult", "StopReason"]

# Identical request-fatal errors with no success yet that mean the whole job is wrong
# (an unknown model, a malformed default parameter): stop instead of failing them all.
SYSTEMATIC_FAILURE_THRESHOLD = 3
SUMMARY_EVERY_S = 2.0
# Output tokens assumed for the rate governor when a request sets no max_tokens.
DEFAULT_OUTPUT_ESTIMATE = 256
# After the end marker, how long the rest of a response may take to arrive (for reuse).
DRAIN_AFTER_END_S = 1.0


class StopReason:
    """Why dispatching stopped early (values are shown to the user)."""

    INTERRUPTED = "interrupted"
    MAX_RUNTIME = "max_runtime"
    ABORTED = "aborted"


@dataclass
class RunResult:
    """How a run ended."""

    metrics: RunMetrics
    stop_reason: str | None
    abort_message: str | None
    pending_left: bool


class Dispatcher:
    """Drives one run. Create, then ``await run(items)``; ``stop()`` may be called anytime."""

    def __init__(
        self,
        cfg: RunConfig,
        provider: Provider,
        client: ClientAdapter,
        rundir: RunDir,
        index: ResumeIndex,
        metrics: RunMetrics,
        *,
        on_outcome: Callable[[Outcome], None] | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.cfg = cfg
        self.provider = provider
        self.client = client
        self.rundir = rundir
        self.index = index
        self.metrics = metrics
        self.on_outcome = on_outcome
        self.grace_s = cfg.grace_s
        self._secrets = tuple(x for x in secrets if x)
        lim = cfg.provider.limits
        # Limits with a minute window get ~1 s of burst; scaled windows scale the burst too.
        self.governor = RateGovernor(
            rpm=lim.rpm,
            input_tpm=lim.input_tpm,
            output_tpm=lim.output_tpm,
            total_tpm=lim.tpm,
            window_s=lim.window_s,
            burst_s=lim.window_s / 60.0,
        )
        self.aimd: AdaptiveConcurrency | None = None
        self.limiter: ConcurrencyLimiter | None = None
        if cfg.adaptive:
            self.aimd = AdaptiveConcurrency(
                initial=min(cfg.concurrency, cfg.max_concurrency), floor=1, cap=cfg.max_concurrency
            )
            aimd = self.aimd
            self.limiter = ConcurrencyLimiter(lambda: aimd.limit)
        self.live_output_tokens = 0
        self.in_flight = 0
        self._stop_reason: str | None = None
        self._abort_message: str | None = None
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._held_failures: list[Outcome] = []
        self._holding = True
        self._input_exhausted = False
        # One probe request goes first; the rest wait for its response headers, which may
        # carry the provider's rate limits (so a burst never runs into an unknown limit).
        self._probe_sent = False
        self._content_seen = False  # any request has streamed content
        self._cancelled = 0  # requests cut off by a stop: work left for the next run
        self._probe_done = asyncio.Event()

    # -- control ---------------------------------------------------------------------
    def stop(
        self, reason: str, *, message: str | None = None, grace_s: float | None = None
    ) -> None:
        """Stop taking new prompts; cancel requests still running after ``grace_s``."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._abort_message = message
        self._stopping.set()
        grace = self.grace_s if grace_s is None else grace_s
        loop = asyncio.get_running_loop()
        if grace <= 0:
            self._cancel_all()
        else:
            loop.call_later(grace, self._cancel_all)

    def _cancel_all(self) -> None:
        for t in self._tasks:
            t.cancel()

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping.is_set()

    # -- run -------------------------------------------------------------------------
    async def run(self, items: Iterator[PromptRecord | InputError]) -> RunResult:
        """Dispatch every item; return when all are done or the run was stopped."""
        self.rundir.on_error = lambda exc: self.stop(
            StopReason.ABORTED, message=str(exc), grace_s=0
        )
        self.rundir.start()
        ticker = asyncio.create_task(self._summary_ticker())
        workers = [asyncio.create_task(self._worker(items)) for _ in range(self.cfg.concurrency)]
        self._tasks.update(workers)
        try:
            results = await asyncio.gather(*workers, return_exceptions=True)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        for r in results:
            if isinstance(r, LLMBatchError):
                raise r
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r
        self._release_held()
        self._held_failures.clear()
        self.metrics.ended_at = time.monotonic()
        if self.aimd is not None:
            self.metrics.concurrency_limit = self.aimd.limit
        self.rundir.write_summary(self.metrics.summary())
        return RunResult(
            metrics=self.metrics,
            stop_reason=self._stop_reason,
            abort_message=self._abort_message,
            pending_left=self._stop_reason is not None
            and (not self._input_exhausted or self._cancelled > 0),
        )

    async def _summary_ticker(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_EVERY_S)
            if self.aimd is not None:
                self.metrics.concurrency_limit = self.aimd.limit
            self.rundir.write_summary(self.metrics.summary())

    async def _worker(self, items: Iterator[PromptRecord | InputError]) -> None:
        limiter = self.limiter
        while not self._stopping.is_set():
            if limiter is not None:
                await limiter.acquire()
            try:
                if self._stopping.is_set():
                    return
                item = next(items, None)
                if item is None:
                    self._input_exhausted = True
                    return
                if isinstance(item, InputError):
                    self._record_input_error(item)
                elif item.id in self.index:
                    self.metrics.skipped += 1
                else:
                    await self._process(item)
            finally:
                if limiter is not None:
                    limiter.release()

    # -- one request ------------------------------------------------------------------
    async def _process(self, rec: PromptRecord) -> None:
        taken_at = time.perf_counter()
        request = self.provider.build_request(rec)
        est_in, est_out = _estimate_tokens(rec)
        sink = self.rundir.begin_text(rec.id)
        attempts: list[Attempt] = []
        holder: list[RequestMetrics] = []
        waiting_since = [taken_at]
        self.in_flight += 1

        async def attempt(n: int) -> StreamAssembler:
            if n > 1:
                self.rundir.restart_text(sink)
            await self._pace(est_in, est_out)
            # Queue time: waiting for a slot, the rate governor and (on a retry) the
            # backoff since the last attempt failed; never the failed attempts themselves.
            m = RequestMetrics(queue_s=time.perf_counter() - waiting_since[0])
            holder[:] = [m]
            try:
                try:
                    asm, rid = await self._attempt(rec, request, sink, m)
                except RequestError:
                    raise
                except Exception as unexpected:
                    # Never let one odd response kill a worker: record it and go on.
                    name = type(unexpected).__name__
                    raise UnexpectedError(f"{name}: {unexpected}") from unexpected
            except RequestError as exc:
                waiting_since[0] = time.perf_counter()
                self.live_output_tokens -= m.chunks
                attempts.append(_attempt_record(n, exc, self._secrets))
                self._on_attempt_error(exc)
                raise
            finally:
                self._probe_done.set()  # whatever happened, never leave the others waiting
            attempts.append(Attempt(n, 200, None, None, rid, 0.0))
            return asm

        def on_retry(exc: BaseException, wait_s: float) -> None:
            if attempts:
                attempts[-1].wait_s = wait_s

        try:
            asm = await run_with_retries(attempt, self.cfg.retry, on_retry=on_retry)
        except RequestError as exc:
            verdict = classify(exc)
            if verdict is Verdict.ABORT_RUN:
                self.rundir.finish_text(sink, complete=False, keep_partial=False)
                msg = redact(f"{type(exc).__name__}: {exc}", self._secrets)
                self.stop(StopReason.ABORTED, message=msg)
                return
            text_file = self.rundir.finish_text(
                sink, complete=False, keep_partial=self.cfg.keep_partial
            )
            m = holder[0] if holder else RequestMetrics()
            outcome = _failure(rec, exc, attempts, m, text_file, self._secrets)
            self._finish(outcome)
            return
        except asyncio.CancelledError:
            # Interrupted: no record, so the next run does this request again.
            self._cancelled += 1
            self.rundir.finish_text(sink, complete=False, keep_partial=False)
            raise
        finally:
            self.in_flight -= 1
        text_file = self.rundir.finish_text(sink, complete=True, keep_partial=False)
        m = holder[0]
        inp, out = asm.usage()
        if out is not None:
            m.output_tokens, m.output_tokens_estimated = out, False
        else:
            m.output_tokens, m.output_tokens_estimated = m.chunks, True
        m.input_tokens = inp
        self.governor.settle(est_in, est_out, inp, out)
        if self.aimd is not None and m.ttft_s is not None:
            self.aimd.on_success(m.ttft_s)
            if self.limiter is not None:
                self.limiter.notify()
        outcome = Outcome(
            record_id=rec.id,
            status_code=200,
            request_id=attempts[-1].request_id,
            body=asm.body(),
            error_code=None,
            error_message=None,
            attempts=attempts,
            metrics=m,
            line_no=rec.line_no,
            text_file=text_file,
        )
        self._finish(outcome)

    async def _pace(self, est_in: int, est_out: int) -> None:
        """Wait for the probe and the rate governor (queue time, never TTFT)."""
        if not self._probe_done.is_set():
            if self._probe_sent:
                await self._probe_done.wait()
            else:
                self._probe_sent = True
        gov = self.governor
        wait_s = gov.reserve(est_in, est_out)
        while wait_s > 0:
            await asyncio.sleep(wait_s)
            wait_s = gov.paused_for_s()  # a 429 may have come in meanwhile

    def _on_attempt_error(self, exc: RequestError) -> None:
        if isinstance(exc, HTTPStatusError) and exc.headers:
            self.governor.observe_headers(exc.headers)
        if isinstance(exc, RateLimited):
            # A huge Retry-After must not freeze every worker: cap the shared pause.
            pause_s = exc.retry_after_s
            if pause_s is not None:
                pause_s = min(pause_s, self.cfg.retry.backoff_max_s)
            self.governor.on_rate_limited(pause_s)
            if self.aimd is not None:
                self.aimd.on_rate_limited()
        elif self.aimd is not None and classify(exc) is Verdict.RETRY:
            self.aimd.on_error()

    async def _attempt(
        self, rec: PromptRecord, request: Any, sink: TextSink, m: RequestMetrics
    ) -> tuple[StreamAssembler, str | None]:
        rundir = self.rundir
        asm = self.provider.new_assembler(rec)
        decoder = SSEDecoder()
        perf = time.perf_counter
        total_s = self.cfg.timeouts.total_s
        sent = perf()
        first = last = 0.0
        itl = m.itl_s
        try:
            async with asyncio.timeout(total_s), self.client.stream(request) as resp:
                rid = resp.request_id
                self.governor.observe_headers(resp.headers)
                self._probe_done.set()  # the fast path: as soon as headers are in
                chunks = resp.chunks
                async for chunk in chunks:
                    for event in decoder.feed(chunk):
                        text = asm.on_event(event)
                        if text:
                            now = perf()
                            if m.chunks:
                                itl.append(now - last)
                            else:
                                first = now
                                self._content_seen = True
                            last = now
                            m.chunks += 1
                            self.live_output_tokens += 1
                            rundir.append_text(sink, text)
                    if asm.finished:
                        break
                if asm.finished:
                    # The answer is complete: whatever happens to the connection now
                    # (a drop, a stall) must not cost it. Drain briefly so it is reused.
                    await _drain(chunks, DRAIN_AFTER_END_S)
        except TimeoutError:
            raise DeadlineExceeded(f"request took longer than {total_s:g}s") from None
        if not asm.finished:
            raise TruncatedStream("stream ended without its end marker ([DONE])")
        if m.chunks:
            m.ttft_s = first - sent
            m.e2el_s = last - sent
        return asm, rid

    # -- records -----------------------------------------------------------------------
    def _finish(self, outcome: Outcome) -> None:
        if self._holding and not outcome.ok:
            # Until something succeeds, hold failures back: if the first few all fail the
            # same way (unknown model, unreachable URL), the job itself is wrong, and the
            # run stops with no records written, so fixing the cause and re-running resumes.
            self._held_failures.append(outcome)
            if len(self._held_failures) < SYSTEMATIC_FAILURE_THRESHOLD:
                return
            codes = {(o.error_code, o.status_code) for o in self._held_failures}
            # Content streaming elsewhere means some requests work: not systematic.
            if len(codes) == 1 and not self._content_seen:
                self.stop(
                    StopReason.ABORTED,
                    message=f"every request fails the same way: {outcome.error_message}",
                )
                return
            self._release_held()
            return
        self._commit(outcome)
        if outcome.ok and self._holding:
            self._release_held()

    def _release_held(self) -> None:
        if self._stop_reason == StopReason.ABORTED:
            return  # an aborted run writes none of them: they run again on resume
        self._holding = False
        held, self._held_failures = self._held_failures, []
        for o in held:
            self._commit(o)

    def _commit(self, outcome: Outcome) -> None:
        # No index.add: the reader already refuses an id twice within the file.
        self.rundir.add_result(_result_line(outcome))
        self.metrics.add(outcome)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def _record_input_error(self, err: InputError) -> None:
        rid = error_record_id(err.line_no or 0)
        if rid in self.index:
            self.metrics.skipped += 1
            return
        self._commit(
            Outcome(
                record_id=rid,
                status_code=None,
                request_id=None,
                body=None,
                error_code=INPUT_ERROR,
                error_message=str(err),
                attempts=[],
                metrics=RequestMetrics(),
                line_no=err.line_no,
            )
        )


async def _drain(chunks: AsyncIterator[bytes], limit_s: float) -> None:
    """Read what is left of a finished response, at most ``limit_s``; errors do not matter."""
    with contextlib.suppress(TimeoutError, RequestError):
        async with asyncio.timeout(limit_s):
            async for _ in chunks:
                pass


def _estimate_tokens(rec: PromptRecord) -> tuple[int, int]:
    """(input, output) token estimates for the governor; corrected later from usage."""
    body = rec.body
    chars = 0
    messages = body.get("messages")
    n_messages = 1
    if isinstance(messages, list):
        n_messages = len(messages)
        for msg in messages:
            content = msg.get("content") if isinstance(msg, dict) else None
            chars += len(content) if isinstance(content, str) else len(str(content))
    elif isinstance(body.get("prompt"), str):
        chars = len(body["prompt"])
    cap = body.get("max_tokens") or body.get("max_completion_tokens")
    est_out = cap if isinstance(cap, int) and cap > 0 else DEFAULT_OUTPUT_ESTIMATE
    return estimate_input_tokens(chars, n_messages), est_out


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret (API key) replaced, for messages that get written."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    return text


def _http_facts(exc: RequestError) -> tuple[int | None, str | None]:
    """(status, provider request id) of an HTTP error; (None, None) otherwise."""
    if isinstance(exc, HTTPStatusError):
        return exc.status, exc.request_id
    return None, None


def _attempt_record(n: int, exc: RequestError, secrets: tuple[str, ...]) -> Attempt:
    status, rid = _http_facts(exc)
    return Attempt(n, status, exc.code, redact(str(exc)[:500], secrets), rid, 0.0)


def _failure(
    rec: PromptRecord,
    exc: RequestError,
    attempts: list[Attempt],
    m: RequestMetrics,
    text_file: str | None,
    secrets: tuple[str, ...],
) -> Outcome:
    status, rid = _http_facts(exc)
    return Outcome(
        record_id=rec.id,
        status_code=status,
        request_id=rid,
        body=None,
        error_code=exc.code,
        error_message=redact(str(exc)[:1000], secrets),
        attempts=attempts,
        metrics=m,
        partial_kept=text_file is not None,
        line_no=rec.line_no,
        text_file=text_file,
    )


def _result_line(o: Outcome) -> dict[str, Any]:
    """One results.jsonl line: OpenAI Batch output shape plus an "llmbatch" object."""
    response: dict[str, Any] | None = None
    if o.status_code is not None:
        response = {"status_code": o.status_code, "request_id": o.request_id, "body": o.body}
    return {
        "id": "req_" + hashlib.blake2b(o.record_id.encode(), digest_size=8).hexdigest(),
        "custom_id": o.record_id,
        "response": response,
        "error": None if o.ok else {"code": o.error_code, "message": o.error_message},
        "llmbatch": {
            "line": o.line_no,
            "text_file": o.text_file,
            "partial_text_kept": o.partial_kept,
            "metrics": request_metrics_dict(o.metrics),
            "attempts": [a.as_dict() for a in o.attempts],
            "finished_at": round(time.time(), 3),
        },
    }
