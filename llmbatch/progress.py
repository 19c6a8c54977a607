"""What a person (or cron mail) sees during a run: a bar on a terminal, log lines otherwise."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.text import Text

    from llmbatch.metrics import RunMetrics

__all__ = ["LineState", "ProgressView", "cost_text", "fit_line", "make_progress"]


class _Source(Protocol):
    tokens: int
    in_flight: int
    # A request's record (and the ``errors`` count) comes only after its last attempt,
    # minutes away at worst: these show that attempts are failing meanwhile.
    failed_attempts: int
    retrying: int
    last_error: str | None


class ProgressView:
    """Periodically renders counts from an engine's live counters and a batch's metrics.

    On a terminal: one line fitted to its width, the most important figures first
    (``fit_line``). Otherwise: a log line every ``every_s`` on stderr.
    """

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
        self._live: Any = None
        self._t0 = time.monotonic()
        self._last_tokens = 0
        self._last_t = self._t0
        self.state = LineState()

    def start(self) -> None:
        """Begin rendering (inside the running loop)."""
        if self.interactive:
            from rich.live import Live

            self._live = Live(_FittedLine(self), auto_refresh=False, transient=False)
            self._live.start()
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
        src = self.source
        st = self.state
        st.done, st.skipped, st.failed, st.total = done, skipped, failed, self.total
        st.tokens_per_s, st.in_flight = self._rate(), src.in_flight
        st.failed_attempts, st.retrying, st.last_error = (
            src.failed_attempts,
            src.retrying,
            src.last_error,
        )
        st.extra = self.extra() if self.extra is not None else ""
        st.elapsed_s = time.monotonic() - self._t0
        if self._live is not None:
            self._live.refresh()
            return
        info = f"{st.tokens_per_s:,.0f} tok/s  in flight {st.in_flight}  errors {failed}" + (
            f"  skipped {skipped}" if skipped else ""
        )
        if src.failed_attempts:
            info += (
                f"  failed attempts {src.failed_attempts} (last {src.last_error}), "
                f"retrying {src.retrying}"
            )
        if st.extra:
            info += "  " + st.extra
        total = f"/{self.total}" if self.total else ""
        # Wall-clock time too: cron logs are read later, next to other programs' lines.
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        print(
            f"[llmbatch] {now} {st.elapsed_s:7.1f}s done {done + skipped}{total}  {info}",
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
        if self._live is not None:
            self.render()
            self._live.stop()
            if not self._live.console.is_terminal:  # rich ends the line on terminals only
                self._live.console.line()


@dataclass(slots=True)
class LineState:
    """The figures of one progress line."""

    done: int = 0  # finished in this invocation
    skipped: int = 0  # already done by an earlier run of the same directory
    failed: int = 0
    total: int | None = None
    tokens_per_s: float = 0.0
    in_flight: int = 0
    failed_attempts: int = 0
    retrying: int = 0
    last_error: str | None = None
    extra: str = ""
    elapsed_s: float = 0.0


_BAR_MIN, _BAR_MAX = 10, 40
_GAP = "  "


def fit_line(st: LineState, width: int) -> Text:
    """The progress line for a terminal ``width`` columns wide.

    Parts are taken in order of importance while they fit: the count (done/total,
    always), errors, the two times (labelled), tokens/s and retries, requests in flight,
    the bar; a part that does not fit is left out whole, never shown cut in half.
    """
    from rich.text import Text

    finished = st.done + st.skipped
    count = f"{finished:,}/{st.total:,}" if st.total else f"{finished:,} done"
    left = "left -"
    if st.total and st.done and st.elapsed_s > 0:
        left = "left " + _clock(max(st.total - finished, 0) * st.elapsed_s / st.done)
    retry = ""
    if st.failed_attempts:
        retry = (
            f"retrying {st.retrying} ({st.failed_attempts} failed attempts, last {st.last_error})"
        )
    # (importance: lower is kept first, text) in display order; "" parts are left out.
    parts = [
        (6, "llmbatch"),
        (5, "BAR"),
        (0, count),
        (3, f"{st.tokens_per_s:,.0f} tok/s"),
        (4, f"in flight {st.in_flight}"),
        (1, f"errors {st.failed}"),
        (4, f"skipped {st.skipped:,}" if st.skipped else ""),
        (3, retry),
        (5, st.extra),
        (2, f"elapsed {_clock(st.elapsed_s)}"),
        (2, left if st.total else ""),
    ]
    keep: set[int] = set()
    used = -len(_GAP)
    for i in sorted((i for i, (_, t) in enumerate(parts) if t), key=lambda i: parts[i][0]):
        text = parts[i][1]
        cost = len(_GAP) + (_BAR_MIN if text == "BAR" else len(text))
        if used + cost <= width or not keep:  # the count always shows
            keep.add(i)
            used += cost
    shown = [parts[i] for i in sorted(keep)]
    bar_w = min(_BAR_MAX, _BAR_MIN + width - used)
    line = Text(no_wrap=True, overflow="crop")
    for i, (_, text) in enumerate(shown):
        if i:
            line.append(_GAP)
        if text == "BAR":
            filled = round(bar_w * finished / st.total) if st.total else 0
            line.append("━" * filled, style="green")
            line.append("━" * (bar_w - filled), style="grey23")
        elif text == "llmbatch":
            line.append(text, style="bold")
        elif text.startswith("errors") and st.failed:
            line.append(text, style="red")
        else:
            line.append(text)
    return line


def _clock(seconds: float) -> str:
    """0:07, 12:34, 1:02:03."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class _FittedLine:
    """A rich renderable: the view's line, fitted to the console's width at each refresh."""

    def __init__(self, view: ProgressView) -> None:
        self.view = view

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield fit_line(self.view.state, options.max_width)


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
