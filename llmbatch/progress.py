"""What a person (or cron mail) sees during a run: a bar on a terminal, log lines otherwise."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from llmbatch.metrics import RunMetrics

__all__ = ["ProgressView", "cost_text", "make_progress"]


class _Source(Protocol):
    tokens: int
    in_flight: int
    # A request's record (and the ``errors`` count) comes only after its last attempt,
    # minutes away at worst: these show that attempts are failing meanwhile.
    failed_attempts: int
    retrying: int
    last_error: str | None


class ProgressView:
    """Periodically renders counts from an engine's live counters and a batch's metrics."""

    def __init__(
        self,
        total: int | None,
        counts: Callable[[], tuple[int, int, int]],
        source: _Source,
        *,
        interactive: bool,
        every_s: float,
        extra: Callable[[], str] | None = None,
    ) -> None:
        self.total = total
        self.counts = counts  # (done, failed, skipped)
        self.source = source
        self.interactive = interactive
        self.every_s = every_s
        self.extra = extra
        self._task: asyncio.Task[None] | None = None
        self._progress: Any = None
        self._bar: Any = None
        self._t0 = time.monotonic()
        self._last_tokens = 0
        self._last_t = self._t0

    def start(self) -> None:
        """Begin rendering (inside the running loop)."""
        if self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]llmbatch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._progress.start()
            self._bar = self._progress.add_task("run", total=self.total, info="")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            self.render()

    def _rate(self) -> float:
        now = time.monotonic()
        tokens = self.source.tokens
        rate = (tokens - self._last_tokens) / max(now - self._last_t, 1e-9)
        self._last_tokens, self._last_t = tokens, now
        return rate

    def render(self) -> None:
        """Draw the current state once."""
        done, failed, skipped = self.counts()
        info = f"{self._rate():,.0f} tok/s  in flight {self.source.in_flight}  errors {failed}" + (
            f"  skipped {skipped}" if skipped else ""
        )
        src = self.source
        if src.failed_attempts:
            info += (
                f"  failed attempts {src.failed_attempts} (last {src.last_error}), "
                f"retrying {src.retrying}"
            )
        if self.extra is not None:
            extra = self.extra()
            if extra:
                info += "  " + extra
        if self._progress is not None:
            self._progress.update(self._bar, completed=done + skipped, info=info)
        else:
            total = f"/{self.total}" if self.total else ""
            elapsed = time.monotonic() - self._t0
            # Wall-clock time too: cron logs are read later, next to other programs' lines.
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            print(
                f"[llmbatch] {now} {elapsed:7.1f}s done {done + skipped}{total}  {info}",
                file=sys.stderr,
                flush=True,
            )

    async def stop(self) -> None:
        """Render a last time and stop."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._progress is not None:
            self.render()
            self._progress.stop()


def cost_text(metrics: RunMetrics, total: int | None) -> str:
    """``cost $0.42 (projected $3.10)``: spent by the whole run so far, and the projection
    from what finished requests cost on average times the requests left ("" unpriced)."""
    from llmbatch.metrics import format_usd

    cost = metrics.cost
    per = cost.per_request_usd()
    if per is None:
        return ""
    spent = metrics.done_before_cost_usd + cost.usd
    text = f"cost {format_usd(spent)}"
    if total:
        seen = metrics.succeeded + metrics.failed + metrics.skipped
        text += f" (projected {format_usd(spent + per * max(0, total - seen))})"
    return text


def make_progress(
    total: int | None,
    counts: Callable[[], tuple[int, int, int]],
    source: _Source,
    *,
    interactive: bool | None = None,
    extra: Callable[[], str] | None = None,
) -> ProgressView:
    """A bar when stdout is a terminal, a log line every 10 s otherwise (cron)."""
    tty = sys.stdout.isatty() if interactive is None else interactive
    return ProgressView(
        total, counts, source, interactive=tty, every_s=0.25 if tty else 10.0, extra=extra
    )
