"""Local hot-path experiments: patch llmbatch in memory, measure against the bare loop.

    python -m bench.experiments --shape fast --concurrency 300 --patches none first-attempt ...

Each patch is a candidate change to a file this bench does not own; it is applied in
the child process only (through ``BENCH_PATCHES``, read by bench.llmbatch_child) so the
owner can see the measured effect before applying the real change. Some patches only
*remove* work (``no-text``, ``no-itl``) to price it; they are not proposals as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from .harness import (
    Measure,
    markdown_table,
    median_measure,
    mock_server,
    ratio,
    run_bare,
    run_llmbatch,
    work_tmpdir,
    write_prompts,
)

T = TypeVar("T")
SHAPES = {
    "fast": {"tokens": 64, "ttft_ms": 0.0, "itl_ms": 0.0},
    "realistic": {"tokens": 64, "ttft_ms": 0.0, "itl_ms": 20.0},
}


def _first_attempt() -> None:
    """retry.run_with_retries: run attempt 1 directly; build tenacity only after a failure."""
    from llmbatch.engine import core as dispatcher
    from llmbatch.engine import retry
    from llmbatch.errors import RequestError

    original = retry.run_with_retries

    async def run_with_retries(attempt: Callable[[int], Awaitable[T]], policy: Any, **kw: Any) -> T:
        try:
            return await attempt(1)
        except RequestError as exc:
            if policy.max_attempts <= 1 or retry.classify(exc) is not retry.Verdict.RETRY:
                raise
            first = exc
        on_retry = kw.get("on_retry")
        if on_retry is not None:
            on_retry(first, 0.0)
        rest = dataclasses.replace(policy, max_attempts=policy.max_attempts - 1)
        return await original(lambda n: attempt(n + 1), rest, **kw)

    dispatcher.run_with_retries = run_with_retries  # type: ignore[assignment]


def _no_text() -> None:
    """Price the per-request text files: no .partial/.txt file operations at all."""
    from llmbatch.rundir import text

    text.TextWriter._op_open = lambda self, sink: None  # type: ignore[method-assign]
    text.TextWriter._op_close = lambda self, sink, dest_fd, dest: None  # type: ignore[method-assign]
    text.TextWriter._collect = lambda self, sink: None  # type: ignore[method-assign]


def _no_stale_unlink() -> None:
    """text.TextWriter._op_open without the unlink of a stale .txt (fresh run dir)."""
    import os

    from llmbatch.rundir import text

    def op_open(self: Any, sink: Any) -> None:
        base = self.dirs.text_dir / sink.name
        sink.fd = os.open(f"{base}.partial", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    text.TextWriter._op_open = op_open  # type: ignore[method-assign]


def _no_itl() -> None:
    """Price the ITL bookkeeping: no per-request ITL histogram fold or summary sort."""
    from llmbatch import metrics
    from llmbatch.rundir import resultline as dispatcher

    metrics.Histogram.add_many = lambda self, values: None  # type: ignore[method-assign]
    original = metrics.request_metrics_dict

    def rmd(m: Any) -> dict[str, Any]:
        itl, m.itl_s = m.itl_s, []
        try:
            return original(m)
        finally:
            m.itl_s = itl

    dispatcher.request_metrics_dict = rmd  # type: ignore[assignment]


def _tick_500ms() -> None:
    """writer.RunDir tick 0.5 s instead of 0.1 s (fewer text writes per stream)."""
    from llmbatch.rundir import writer

    original = writer.RunDir.__init__

    def init(self: Any, dirs: Any, tick_s: float = 0.5, **kw: Any) -> None:
        original(self, dirs, tick_s, **kw)

    writer.RunDir.__init__ = init  # type: ignore[method-assign]


def _sse_fast() -> None:
    """sse.SSEDecoder.feed: fast path for the common case (LF-only lines, no pending)."""
    from llmbatch.providers import sse

    original = sse.SSEDecoder.feed
    event_cls = sse.Event

    def feed(self: Any, chunk: bytes) -> list[Any]:
        # Fast path: started, nothing pending, no CR, no data/event carried over,
        # and the chunk is whole "data: ...\n\n" events only.
        if (
            self._started
            and not self._pending
            and not self._skip_lf
            and not self._data
            and not self._event
            and chunk.endswith(b"\n\n")
            and b"\r" not in chunk
        ):
            events: list[Any] = []
            for block in chunk[:-2].split(b"\n\n"):
                if block.startswith(b"data: ") and b"\n" not in block:
                    events.append(event_cls(block[6:], "message", self._last_id, self._retry))
                else:
                    events.extend(original(self, block + b"\n\n"))
            return events
        return original(self, chunk)

    sse.SSEDecoder.feed = feed  # type: ignore[method-assign]


def _inline_writes() -> None:
    """writer.RunDir.flush: run the text and results ops on the loop thread, each tick.

    The writer thread needs the GIL back after every os.* call; while the event loop
    thread is busy it gets it only every switch interval (5 ms), so it falls behind
    and the queue grows without bound. Summaries (with their fsync) stay on the thread.
    """
    import orjson

    from llmbatch.rundir import writer

    async def flush(self: Any) -> None:
        for sink in self._dirty:
            self._collect(sink)
        self._dirty = []
        if self._results_buf:
            data = b"".join(self._results_buf)
            self._results_buf = []
            fd = self._results_fd
            self._ops.append(lambda: writer._write_all(fd, data))
        if not self._ops:
            return
        ops, self._ops = self._ops, []
        try:
            writer._run_ops(ops)
        except OSError as exc:
            self.error = exc
            raise writer.RunDirError(f"writing to {self.path} failed: {exc}") from None

    def write_summary(self: Any, summary: dict[str, Any]) -> None:
        data = orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        self._pool.submit(writer._atomic_write, self.path / writer.SUMMARY, data)

    writer.RunDir.flush = flush  # type: ignore[method-assign]
    writer.RunDir.write_summary = write_summary  # type: ignore[method-assign]


def _switch_500us() -> None:
    """sys.setswitchinterval(0.0005): the writer thread gets the GIL back 10x sooner."""
    sys.setswitchinterval(0.0005)


def _gc_freeze() -> None:
    """Start-up objects frozen out of the cyclic GC, gen-0 threshold 700 -> 20,000."""
    import gc

    import llmbatch.cli.app  # noqa: F401 - what start-up imports, before freezing

    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def _gc_freeze_only() -> None:
    """Start-up objects frozen out of the cyclic GC (thresholds unchanged)."""
    import gc

    import llmbatch.cli.app  # noqa: F401

    gc.freeze()


PATCHES: dict[str, Callable[[], None]] = {
    "gc": _gc_freeze,
    "gc-freeze": _gc_freeze_only,
    "inline-writes": _inline_writes,
    "switch-500us": _switch_500us,
    "first-attempt": _first_attempt,
    "no-text": _no_text,
    "no-stale-unlink": _no_stale_unlink,
    "no-itl": _no_itl,
    "tick-500ms": _tick_500ms,
    "sse-fast": _sse_fast,
}


def install(spec: str) -> None:
    """Apply the comma-separated patches of ``spec`` (called in the child)."""
    for name in filter(None, spec.split(",")):
        if name != "none":
            PATCHES[name]()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", choices=tuple(SHAPES), default="fast")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[300])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--patches", nargs="+", default=["none", *PATCHES], help="a,b = both")
    args = ap.parse_args(argv)
    rows: list[list[str]] = []
    with work_tmpdir() as tmp:
        prompts = write_prompts(Path(tmp) / "prompts.jsonl", args.requests)
        with mock_server(**SHAPES[args.shape]) as server:
            for c in args.concurrency:
                runs: dict[str, list[Measure]] = {}
                for _ in range(args.repeat):
                    runs.setdefault("bare", []).append(run_bare(server, c, args.requests))
                    for p in args.patches:
                        m = run_llmbatch(
                            server,
                            c,
                            prompts,
                            args.requests,
                            client="aiohttp",
                            label=p,
                            extra_env={"BENCH_PATCHES": p},
                        )
                        runs.setdefault(p, []).append(m)
                        print(
                            f"[C={c}] {p}: {m.work_us_per_token:.1f} µs/token, "
                            f"wall {m.wall_s:.2f}s, errors {m.errors} {m.note}",
                            file=sys.stderr,
                            flush=True,
                        )
                meds = {k: median_measure(v) for k, v in runs.items()}
                base = meds["bare"]
                ref = meds.get("none", base)
                for k, m in meds.items():
                    rows.append(
                        [
                            str(c),
                            "bare aiohttp loop" if k == "bare" else f"llmbatch aiohttp + {k}",
                            str(m.errors),
                            f"{m.wall_s:.2f}",
                            ratio(m.wall_s, base.wall_s),
                            f"{m.work_us_per_token:.1f}",
                            ratio(m.work_us_per_token, base.work_us_per_token),
                            ratio(m.work_us_per_token, ref.work_us_per_token),
                            f"{m.us_per_token:.1f}",
                            ratio(m.us_per_token, base.us_per_token),
                            ratio(m.us_per_token, ref.us_per_token),
                            f"{m.maxrss_mb:.0f}",
                        ]
                    )
    print(f"shape {args.shape}, requests {args.requests}, repeat {args.repeat} (median)\n")
    headers = ["C", "variant", "errors", "wall s", "wall vs bare", "CPU µs/token (work)"]
    headers += ["vs bare", "vs unpatched", "CPU µs/token (process)", "vs bare", "vs unpatched"]
    headers += ["peak RSS MB"]
    print(markdown_table(headers, rows), flush=True)


if __name__ == "__main__":
    main()
