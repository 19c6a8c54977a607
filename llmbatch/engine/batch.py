"""Scheduling one batch on an engine: admission, records, stop and grace.

Prompts are taken one at a time, and only once the engine has a free slot: each runs
as its own task holding that slot, so at most ``concurrency`` (+1 being read) prompts
are in memory whatever the input size, and the engine's limiter alone bounds the
requests in flight (with ``--concurrency auto`` its limit grows and shrinks).

Stopping (a signal, --max-runtime-s, an error fatal for the run, the caller cancelling)
stops taking new prompts; requests in flight get a grace period, then are cancelled. A
request that did not finish gets no record, so the next run of the same batch does it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from llmbatch.clock import now
from llmbatch.engine.core import NULL_TEXT, Engine, TextTarget
from llmbatch.engine.gate import EarlyFailureCheck, FailureGate
from llmbatch.errors import BudgetExceeded, InputError, RequestError, UnfinishedLine
from llmbatch.metrics import INPUT_ERROR, RunMetrics
from llmbatch.pacing.governor import stated_rates
from llmbatch.records import Outcome, PromptRecord, RequestMetrics
from llmbatch.rundir.identity import request_hash
from llmbatch.rundir.reader import error_record_id
from llmbatch.rundir.resultline import result_line
from llmbatch.rundir.results import ResumeIndex
from llmbatch.rundir.text import TextSink, TextWriter
from llmbatch.rundir.writer import RunDir

__all__ = ["BatchEnd", "BatchRun", "StopReason"]

SUMMARY_EVERY_S = 2.0
CHANGED_SHOWN = 5  # changed ids named in the notice

Item = PromptRecord | InputError
OnRecord = Callable[[Outcome, dict[str, Any]], None]


class StopReason:
    """Why dispatching stopped early (values are shown to the user)."""

    INTERRUPTED = "interrupted"
    MAX_RUNTIME = "max_runtime"
    ABORTED = "aborted"
    CANCELLED = "cancelled"
    BUDGET = "max_cost"  # the next request could pass max_cost: in-flight ones finish


@dataclass
class BatchEnd:
    """How a batch ended."""

    metrics: RunMetrics
    stop_reason: str | None
    abort_message: str | None
    pending_left: bool
    # Done ids whose prompt changed since their record (skipped, old answer kept).
    changed: int = 0
    changed_ids: tuple[str, ...] = ()  # the first few
    # The input's last line, still being written: no record, the next run reads it.
    unfinished: UnfinishedLine | None = None


class _FileText:
    """A TextTarget writing into the run directory: the answer to text/<id>, the
    reasoning (begun at its first delta) to text/<id>.reasoning (or the log layout's
    logs)."""

    __slots__ = ("extend", "_text", "_record_id", "sink", "reasoning")

    def __init__(self, text: TextWriter, record_id: str) -> None:
        self._text = text
        self._record_id = record_id
        self.sink = sink = text.begin(record_id)
        self.reasoning: TextSink | None = None
        append_text = text.append

        def extend(texts: list[str]) -> None:
            append_text(sink, texts[0] if len(texts) == 1 else "".join(texts))

        self.extend = extend

    def extend_reasoning(self, texts: list[str]) -> None:
        if self.reasoning is None:
            self.reasoning = self._text.begin(self._record_id, reasoning=True)
        self._text.append(self.reasoning, "".join(texts))

    def restart(self) -> None:
        self._text.restart(self.sink)
        if self.reasoning is not None:
            self._text.restart(self.reasoning)


class BatchRun:
    """Runs ``items`` on ``engine``; every finished request goes to ``on_record``.

    With a ``rundir`` each record is also appended to results.jsonl (after its text),
    text streams to text/<id>, and summary.json is rewritten every 2 s. ``index`` holds
    ids already done (skipped). Create, then ``await run()``; ``stop()`` may be called
    at any time from the same loop.
    """

    def __init__(
        self,
        engine: Engine,
        items: AsyncIterator[Item],
        metrics: RunMetrics,
        *,
        rundir: RunDir | None = None,
        index: ResumeIndex | None = None,
        keep_partial: bool = False,
        grace_s: float = 30.0,
        on_record: OnRecord | None = None,
    ) -> None:
        self.engine = engine
        self.items = items
        self.metrics = metrics
        self.rundir = rundir
        self.index = index if index is not None else ResumeIndex()
        self.keep_partial = keep_partial
        self.grace_s = grace_s
        self.on_record = on_record
        self.gate = FailureGate(target=engine.cfg.provider)
        self.early_check = EarlyFailureCheck(lambda: engine.content_seen)
        self.stop_reason: str | None = None
        self.abort_message: str | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._admission: asyncio.Task[None] | None = None
        self._cancel_timer: asyncio.TimerHandle | None = None
        self._input_exhausted = False
        self._cancelled = 0  # requests cut off by a stop: work left for the next run
        self._changed = 0  # done ids whose request changed (kept: --rerun-changed redoes)
        self._changed_ids: list[str] = []
        self._unfinished: UnfinishedLine | None = None  # the input's last line, cut short

    # -- control ---------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping

    def stop(
        self, reason: str, *, message: str | None = None, grace_s: float | None = None
    ) -> None:
        """Stop taking new prompts; cancel requests still running after ``grace_s``
        (``math.inf``: let them finish)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.abort_message = message
        self._stopping = True
        if self._admission is not None:
            self._admission.cancel()
        grace = self.grace_s if grace_s is None else grace_s
        if grace <= 0:
            self._cancel_requests()
        elif self._cancel_timer is None and grace != math.inf:
            self._cancel_timer = asyncio.get_running_loop().call_later(grace, self._cancel_requests)

    def _on_attempt_error(self, exc: RequestError) -> None:
        if (why := self.early_check.on_failed_attempt(exc)) is not None:
            self.stop(StopReason.ABORTED, message=self.engine.redactor.text(why), grace_s=0)

    def _cancel_requests(self) -> None:
        for t in self._tasks:
            t.cancel()

    # -- run -------------------------------------------------------------------------
    async def run(self) -> BatchEnd:
        """Dispatch every item; return when all are done or the batch was stopped.

        Cancelling the task that awaits this stops the batch at once: requests in
        flight are cancelled (no records for them), records already made are kept.
        """
        rundir = self.rundir
        ticker: asyncio.Task[None] | None = None
        self._note_limit()
        if rundir is not None:
            rundir.on_error = lambda exc: self.stop(StopReason.ABORTED, message=str(exc), grace_s=0)
            rundir.start()
            ticker = asyncio.create_task(self._summary_ticker())
        self._admission = asyncio.create_task(self._admit_all())
        self.engine.attempt_listeners.append(self._on_attempt_error)
        try:
            # wait() (unlike await) does not raise when stop() cancels the admission.
            await asyncio.wait({self._admission})
            if not self._admission.cancelled():
                self._admission.result()  # an unexpected error while reading prompts
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        except asyncio.CancelledError:
            self.stop(StopReason.CANCELLED, grace_s=0)
            await self._settle()
            raise
        finally:
            self.engine.attempt_listeners.remove(self._on_attempt_error)
            if self._cancel_timer is not None:
                self._cancel_timer.cancel()
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
        if self.stop_reason != StopReason.ABORTED:
            for o in self.gate.release():
                self._commit(o)
        self.metrics.ended_at = now()
        self._note_limit()
        if rundir is not None:
            rundir.write_summary(self.metrics.summary())
        return BatchEnd(
            metrics=self.metrics,
            stop_reason=self.stop_reason,
            abort_message=self.abort_message,
            pending_left=self.stop_reason is not None
            and (not self._input_exhausted or self._cancelled > 0),
            changed=self._changed,
            changed_ids=tuple(self._changed_ids),
            unfinished=self._unfinished,
        )

    async def _settle(self) -> None:
        """Wait for cancelled requests to unwind (they write nothing more)."""
        admission = self._admission
        if admission is not None and not admission.done():
            admission.cancel()
        pending = [t for t in (admission, *self._tasks) if t is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _note_limit(self) -> None:
        engine, metrics = self.engine, self.metrics
        if engine.aimd is not None:
            metrics.concurrency_limit = engine.aimd.limit
        metrics.cost.unpriced_models = list(engine.prices.unpriced)
        if engine.budget is not None:
            metrics.cost.max_usd = engine.budget.max_usd
        rates = stated_rates(engine.governor.snapshot())
        if rates:  # a limit learned once stays in the summary after it expires
            metrics.rate_limits.update(rates)

    async def _summary_ticker(self) -> None:
        assert self.rundir is not None
        while True:
            await asyncio.sleep(SUMMARY_EVERY_S)
            self._note_limit()
            self.rundir.write_summary(self.metrics.summary())

    async def _admit_all(self) -> None:
        engine = self.engine
        async for item in self.items:
            if self._stopping:
                return
            if isinstance(item, UnfinishedLine):  # still being written: the next run has it
                self._unfinished = item
                continue
            if isinstance(item, InputError):
                self._record_input_error(item)
                continue
            if item.id in self.index:
                self.metrics.skipped += 1
                if self.index.changed(item):
                    self._changed += 1
                    if len(self._changed_ids) < CHANGED_SHOWN:
                        self._changed_ids.append(item.id)
                continue
            taken_at = now()
            await engine.acquire_slot()
            if self._stopping:
                engine.release_slot()
                return
            try:
                reserved = await engine.reserve_cost(item)
            except BudgetExceeded as exc:
                engine.release_slot()
                # Requests in flight finish (they are paid for); the rest is resumable.
                self.stop(StopReason.BUDGET, message=str(exc), grace_s=math.inf)
                return
            task = asyncio.create_task(self._one(item, taken_at, reserved))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._input_exhausted = True

    # -- one request ------------------------------------------------------------------
    async def _one(self, rec: PromptRecord, taken_at: float, reserved: float | None) -> None:
        engine, rundir = self.engine, self.rundir
        files: _FileText | None = None
        target: TextTarget = NULL_TEXT
        if rundir is not None and rundir.text.text_files:
            target = files = _FileText(rundir.text, rec.id)
        try:
            outcome = await engine.execute(rec, target, taken_at=taken_at, reserved_usd=reserved)
        except asyncio.CancelledError:
            # Interrupted: no record, so the next run does this request again.
            self._cancelled += 1
            self._finish_text(files, complete=False, keep=False)
            raise
        except RequestError as exc:  # fatal for the run (bad key, no quota)
            self._finish_text(files, complete=False, keep=False)
            msg = f"{type(exc).__name__}: {exc}"  # scrubbed by the engine
            self.stop(StopReason.ABORTED, message=msg)
            return
        finally:
            engine.release_slot()
        if files is not None:
            keep = not outcome.ok and self.keep_partial
            # The reasoning first: in the log layout its span is written before the answer's.
            outcome.reasoning_file = self._finish_sink(files.reasoning, outcome.ok, keep)
            if files.reasoning is not None:
                outcome.reasoning_span = files.reasoning.span
            outcome.text_file = self._finish_sink(files.sink, outcome.ok, keep)
            outcome.text_span = files.sink.span
            outcome.partial_kept = outcome.text_file is not None and not outcome.ok
        outcome.request_hash = request_hash(rec)
        self._finish(outcome)

    def _finish_text(self, files: _FileText | None, *, complete: bool, keep: bool) -> None:
        if files is not None:
            self._finish_sink(files.reasoning, complete, keep)
            self._finish_sink(files.sink, complete, keep)

    def _finish_sink(self, sink: TextSink | None, complete: bool, keep: bool) -> str | None:
        if sink is None or self.rundir is None:
            return None
        return self.rundir.text.finish(sink, complete=complete, keep_partial=keep)

    # -- records -----------------------------------------------------------------------
    def _finish(self, outcome: Outcome) -> None:
        commit, abort = self.gate.admit(outcome, content_seen=self.engine.content_seen)
        if abort is not None:
            self.stop(StopReason.ABORTED, message=abort)
            return
        for o in commit:
            self._commit(o)

    def _commit(self, outcome: Outcome) -> None:
        # No index.add: the reader already refuses an id twice within the input.
        line = result_line(outcome)
        if self.rundir is not None:
            self.rundir.add_result(line)
        self.metrics.add(outcome)
        if self.on_record is not None:
            self.on_record(outcome, line)

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
