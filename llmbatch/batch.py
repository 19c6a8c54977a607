"""``Batch``: many prompts through one Client, as an async iterator of Results.

A batch feeds the Client's engine from a prompts file or iterable, writes the run
directory (when given one) exactly as the CLI does, and resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from llmbatch.clock import now
from llmbatch.config.model import RunConfig
from llmbatch.engine import BatchEnd, BatchRun, StopReason
from llmbatch.engine.arrivals import ArrivalPacer, ArrivalProfile, arrival_offsets
from llmbatch.errors import ConfigError, InputError
from llmbatch.metrics import SLO, RunMetrics
from llmbatch.notices import warn
from llmbatch.records import Outcome, PromptRecord
from llmbatch.result import Result
from llmbatch.rundir.identity import run_identity
from llmbatch.rundir.layout import RESULTS
from llmbatch.rundir.reader import aiter_items, iter_items, iter_records, open_records
from llmbatch.rundir.results import ResumeIndex, iter_result_lines
from llmbatch.rundir.writer import RunDir, forget_unsaved

if TYPE_CHECKING:
    from llmbatch.client import Client, Prompts

__all__ = ["Batch", "BatchProgress", "ClosesOnExit"]


class ClosesOnExit(ABC):
    """``async with`` for a resource with ``aclose()``: the block's end closes it, however
    it ends (Batch, AnswerStream and Client share this)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the resource (idempotent)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@dataclass(frozen=True, slots=True)
class _BatchOptions:
    """How one batch runs (``Client.batch``'s keyword options)."""

    text_files: bool
    text_layout: str
    keep_partial: bool
    retry_failed: bool
    include_done: bool
    max_runtime_s: float | None
    slo: SLO
    progress: bool | Callable[[BatchProgress], None]
    meta: dict[str, Any] | None
    force_resume: bool
    arrivals: ArrivalProfile | None = None
    on_outcome: Callable[[Outcome], None] | None = None
    rerun_changed: bool | Callable[[], Iterable[Any]] = False


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """A snapshot handed to a ``progress`` callback after each record."""

    done: int
    succeeded: int
    failed: int
    skipped: int
    in_flight: int
    retrying: int
    output_tokens: int
    elapsed_s: float


class Batch(ClosesOnExit):
    """A running batch: an async iterator of Results in completion order.

    Also an async context manager: leaving the block (or ``aclose()``, or cancelling
    the task that iterates) stops the batch at once; records already made are kept,
    requests cut off get none (a later run with the same ``run_dir`` redoes them).
    ``stop()`` stops taking prompts and lets requests in flight finish within the
    grace period. ``await batch.wait()`` runs it to the end without collecting Results.
    """

    def __init__(
        self, client: Client, prompts: Prompts, run_dir: Path | None, opts: _BatchOptions
    ) -> None:
        self._client = client
        self._prompts = prompts
        self.run_dir = run_dir
        self._opts = opts
        self._progress = opts.progress
        self.damaged_lines: list[int] = []
        """Line numbers of results.jsonl lines that could not be read (their requests rerun)."""
        self._queue: asyncio.Queue[Result | None] = asyncio.Queue()
        self._collect = True
        self._drained = asyncio.Event()
        self._run: BatchRun | None = None
        self._task: asyncio.Task[BatchEnd] | None = None
        self._rundir: RunDir | None = None
        self._view: Any = None
        self._deadline: asyncio.TimerHandle | None = None
        self._closed = False
        self._consumer: asyncio.Task[Any] | None = None
        self._orphan_close: asyncio.Future[None] | None = None
        self.end: BatchEnd | None = None
        """How the batch ended (set once it has)."""
        self.pacer: ArrivalPacer | None = (
            ArrivalPacer(arrival_offsets(opts.arrivals)) if opts.arrivals is not None else None
        )
        """The open-loop pacer (with ``arrivals``): when each prompt was due, how late."""

    # -- state -------------------------------------------------------------------------
    @property
    def metrics(self) -> RunMetrics | None:
        """Live aggregates (None before the batch started)."""
        return self._run.metrics if self._run is not None else None

    def summary(self) -> dict[str, Any]:
        """The run summary (the summary.json shape), so far or final."""
        if self._run is None:
            raise RuntimeError("the batch has not started")
        return self._run.metrics.summary()

    def stop(self, *, grace_s: float | None = None, reason: str = StopReason.INTERRUPTED) -> None:
        """Take no more prompts; cancel requests still running after ``grace_s``."""
        if self._run is not None:
            self._run.stop(reason, grace_s=grace_s)

    # -- running -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the run directory and start dispatching (iterating or ``wait()`` do it)."""
        if self._task is not None:
            return
        client = self._client
        eng = client.engine
        eng.check_loop()  # before the run directory is touched: nothing recorded
        cfg = client.config
        index = ResumeIndex()
        # A prompts file that cannot be opened fails here, before the run directory is
        # created and pinned to it.
        records = _records(self._prompts)
        if self.run_dir is not None:
            opts = self._opts
            self._rundir, index = RunDir.open(
                self.run_dir,
                opts.meta or _default_meta(cfg, self._prompts),
                retry_failed=opts.retry_failed,
                text_files=opts.text_files,
                text_layout=opts.text_layout,
                force_resume=opts.force_resume,
                rerun=_rerun_changed(self._prompts, opts.rerun_changed),
            )
            self.damaged_lines = index.damaged_lines
            client._count_spent(self.run_dir, index.cost_usd)
            if opts.include_done and (self.run_dir / RESULTS).exists():
                for _, line in iter_result_lines(self.run_dir / RESULTS):
                    with contextlib.suppress(ValueError):
                        self._queue.put_nowait(Result.from_line(line))
        metrics = RunMetrics(
            slo=self._opts.slo,
            done_before_succeeded=index.succeeded,
            done_before_failed=index.failed,
            done_before_cost_usd=index.cost_usd,
        )
        items = _admission_paced(records, self._has_room)
        if self.pacer is not None:
            items = self.pacer.pace(items)
        self._run = BatchRun(
            eng,
            items,
            metrics,
            rundir=self._rundir,
            index=index,
            keep_partial=self._opts.keep_partial,
            grace_s=cfg.grace_s,
            on_record=self._on_record,
        )
        loop = asyncio.get_running_loop()
        if self._opts.max_runtime_s is not None:
            self._deadline = loop.call_later(
                self._opts.max_runtime_s, self._run.stop, StopReason.MAX_RUNTIME
            )
        if self._progress is True:
            from llmbatch.progress import cost_text, make_progress

            self._view = make_progress(
                None,
                lambda: (metrics.succeeded + metrics.failed, metrics.failed, metrics.skipped),
                eng.live,
                interactive=sys.stderr.isatty(),
                extra=lambda: cost_text(metrics, None),
            )
            self._view.start()
        self._task = asyncio.create_task(self._run.run())
        self._task.add_done_callback(lambda _: self._queue.put_nowait(None))
        client._batches.add(self)
        # Cancelling the task that iterates stops the batch, even when the cancellation
        # lands in the caller's own code between two results.
        self._consumer = asyncio.current_task()
        if self._consumer is not None:
            self._consumer.add_done_callback(self._consumer_gone)

    def _consumer_gone(self, _task: object) -> None:
        if self._closed:
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._orphan_close = asyncio.ensure_future(self._cleanup())

    async def _has_room(self) -> None:
        # Backpressure: a consumer that reads slowly holds up admission, not memory.
        limit = 2 * self._client.engine.max_in_flight + 16
        while self._collect and self._queue.qsize() >= limit:
            self._drained.clear()
            await self._drained.wait()

    def _on_record(self, outcome: Outcome, line: dict[str, Any]) -> None:
        if self._opts.on_outcome is not None:
            self._opts.on_outcome(outcome)
        if self._collect:
            self._queue.put_nowait(Result.from_line(line))
        cb = self._progress
        if callable(cb) and self._run is not None:
            m = self._run.metrics
            live = self._client.engine.live
            cb(
                BatchProgress(
                    done=m.succeeded + m.failed,
                    succeeded=m.succeeded,
                    failed=m.failed,
                    skipped=m.skipped,
                    in_flight=live.in_flight,
                    retrying=live.retrying,
                    output_tokens=m.output_tokens,
                    elapsed_s=now() - m.started_at,
                )
            )

    def __aiter__(self) -> Batch:
        return self

    async def __anext__(self) -> Result:
        if self._task is None:
            await self.start()
        elif self._closed and self._queue.empty():
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        self._drained.set()
        if item is None:
            await self._finish()
            raise StopAsyncIteration
        return item

    async def wait(self) -> BatchEnd:
        """Run to the end without collecting Results; return how it ended."""
        self._collect = False
        self._drained.set()
        if self._task is None:
            await self.start()
        assert self._task is not None
        try:
            await asyncio.wait({self._task})
        except asyncio.CancelledError:
            await self.aclose()
            raise
        return await self._finish()

    async def _finish(self) -> BatchEnd:
        try:
            assert self._task is not None
            self.end = await self._task
            return self.end
        finally:
            await self._cleanup()

    async def _cleanup(self) -> None:
        if self._closed:
            if self._orphan_close is not None and self._orphan_close is not asyncio.current_task():
                await asyncio.shield(self._orphan_close)
            return
        self._closed = True
        self._client._batches.discard(self)
        if self._consumer is not None:
            self._consumer.remove_done_callback(self._consumer_gone)
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        if self._deadline is not None:
            self._deadline.cancel()
        if self._view is not None:
            await self._view.stop()
        if self._rundir is not None:
            await self._rundir.aclose()
            warn(forget_unsaved(self._rundir, self.metrics))  # counts = what was saved

    async def aclose(self) -> None:
        """Stop now (requests in flight are cancelled, get no record) and close files."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        if task is not None and task.done() and not task.cancelled() and self.end is None:
            with contextlib.suppress(Exception):
                self.end = task.result()
        await self._cleanup()


def _rerun_changed(
    prompts: Prompts, rerun: bool | Callable[[], Iterable[Any]]
) -> Callable[[ResumeIndex], set[str]] | None:
    """What drops the records of prompts that changed (None unless asked): they are read
    once more before the run, so they must come from a file, a sequence, or ``rerun``."""
    if rerun is False:
        return None
    again: Callable[[], Iterable[Any]]
    if callable(rerun):
        again = rerun
    elif _is_path(prompts):
        path = Path(os.fspath(prompts))  # type: ignore[arg-type]
        again = lambda: iter_records(path)  # noqa: E731
    elif isinstance(prompts, Sequence) and not isinstance(prompts, str):
        again = lambda: prompts  # noqa: E731
    else:
        raise ConfigError(
            "rerun_changed reads the prompts twice: give a file, a list, or "
            "rerun_changed=<a function that returns the prompts again>"
        )
    return lambda index: index.changed_among(iter_items(again()))


def _is_path(prompts: Any) -> bool:
    return isinstance(prompts, str | os.PathLike)


def _records(prompts: Prompts) -> AsyncIterator[PromptRecord | InputError]:
    """Any accepted prompt source as one async iterator of records / input errors."""
    if _is_path(prompts):
        return _from_sync(open_records(Path(os.fspath(prompts))))  # type: ignore[arg-type]
    if isinstance(prompts, AsyncIterable):
        return aiter_items(prompts)
    assert not isinstance(prompts, os.PathLike)
    return _from_sync(iter_items(prompts))


async def _from_sync(
    items: Iterable[PromptRecord | InputError],
) -> AsyncIterator[PromptRecord | InputError]:
    for item in items:
        yield item


async def _admission_paced(
    items: AsyncIterator[PromptRecord | InputError], has_room: Callable[[], Awaitable[None]]
) -> AsyncIterator[PromptRecord | InputError]:
    async for item in items:
        await has_room()
        yield item


def _default_meta(cfg: RunConfig, prompts: Prompts) -> dict[str, Any]:
    """What a run directory belongs to (checked on resume): run.json's identity."""
    if _is_path(prompts):
        return run_identity(cfg, Path(os.fspath(prompts)))  # type: ignore[arg-type]
    # Prompts from code have no file: the directory belongs to the target alone.
    return {**run_identity(cfg, Path()), "prompts": "<iterable>"}
