"""The run directory while a run writes it: text, results.jsonl and summary.json, in order.

The directory's layout and opening are in layout.py, the text in text.py, results.jsonl
and the resume index in results.py; ``RunDir`` opens them together and runs their writes.

File operations are queued in order and run once per tick (0.1 s), so text that
arrives per token is written per request and per tick. They run on the event loop
itself: each is one short syscall on the page cache, and a writer thread was measured
to starve for the GIL under load (nothing reached disk until the run ended; see
bench/RESULTS.md). Only summary.json, which is fsynced, is written by a thread.
Order is the commit protocol: the text exists before the result line is appended, and
the result line is what marks a request done. A crash loses at most one tick of records;
those requests run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch.config.model import TEXT_LAYOUTS
from llmbatch.errors import OutputError, RunDirError
from llmbatch.rundir.layout import RESULTS, SUMMARY, LockedDir, remove_stale_partials, why
from llmbatch.rundir.nofollow import replace_in
from llmbatch.rundir.results import (
    ResultsFile,
    ResumeIndex,
    drop_records,
    holds_records,
    load_index,
)
from llmbatch.rundir.text import TextWriter

if TYPE_CHECKING:
    from llmbatch.metrics import RunMetrics

__all__ = [
    "RunDir",
    "forget_unsaved",
    "unsaved_notice",
]


class RunDir:
    """An opened, locked run directory. Create with ``RunDir.open``; close with ``aclose``.

    ``text`` takes the streamed text (text.py); ``add_result`` queues a results.jsonl
    line, written after the text queued before it.
    """

    def __init__(
        self,
        dirs: LockedDir,
        tick_s: float = 0.1,
        *,
        text_files: bool = True,
        text_layout: str = "files",
    ) -> None:
        self.path = dirs.path
        self.dirs = dirs
        self.text = TextWriter(dirs, text_files=text_files, text_layout=text_layout)
        self.results = ResultsFile()
        self.tick_s = tick_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmbatch-summary")
        self._flusher: asyncio.Task[None] | None = None
        self.error: OutputError | None = None
        # Called once when a periodic flush fails (the dispatcher stops the run).
        self.on_error: Callable[[OutputError], None] | None = None

    @classmethod
    def open(
        cls,
        path: Path,
        meta: dict[str, Any],
        *,
        retry_failed: bool = False,
        text_files: bool = True,
        text_layout: str = "files",
        force_resume: bool = False,
        rerun: Callable[[ResumeIndex], set[str]] | None = None,
    ) -> tuple[RunDir, ResumeIndex]:
        """Create or reopen ``path``: take the lock, check it belongs to this job,
        repair a torn last line, and index the ids already done.

        A directory that holds files but no run.json is not a run directory: it is
        refused, never adopted or cleaned. ``meta`` is the run's identity (identity.py);
        another run's directory is refused unless ``force_resume``. ``rerun(index)``
        names ids whose records are dropped, so they run again (prompts that changed).
        """
        if text_layout not in TEXT_LAYOUTS:
            raise RunDirError(f"unknown text layout {text_layout!r} (files or log)")
        dirs = LockedDir.lock(path)
        rd = cls(dirs, text_files=text_files, text_layout=text_layout)
        part = bool(meta.get("part_of"))
        try:
            dirs.refuse_links(part=part)
            if rd.text.text_log is None:
                dirs.open_text_dirs(part=part)
            dirs.check_identity(
                meta, force_resume=force_resume, holds_records=lambda: holds_records(dirs)
            )
            resuming = dirs.exists(RESULTS)
            index = load_index(dirs, retry_failed=retry_failed)
            if rerun is not None and (again := rerun(index)):
                drop_records(dirs, lambda rec: rec.get("custom_id") in again)
                index = load_index(dirs, retry_failed=False)
            if resuming and dirs.text_fd >= 0:
                remove_stale_partials(dirs.text_fd)
            if retry_failed and dirs.failed_fd >= 0:  # they run again: their old partials go
                remove_stale_partials(dirs.failed_fd)
            rd.text.open_logs(index.text_log_end, index.reasoning_log_end)
            rd.results.open(dirs)
        except OSError as exc:
            dirs.release()
            raise RunDirError(f"cannot use run directory {path}: {why(exc)}") from None
        except BaseException:
            dirs.release()
            raise
        return rd, index

    @property
    def unsaved_succeeded(self) -> int:
        """Succeeded requests whose line could not be written (not in results.jsonl)."""
        return self.results.unsaved_succeeded

    @property
    def unsaved_failed(self) -> int:
        """Failed requests whose line could not be written (not in results.jsonl)."""
        return self.results.unsaved_failed

    def add_result(self, line: dict[str, Any]) -> None:
        """Queue one results.jsonl line; written after any text op queued before it."""
        self.results.add(line)

    def add_result_line(self, raw: bytes, *, ok: bool) -> None:
        """Queue one results.jsonl line already encoded (ending in a newline), as is."""
        self.results.add_raw(raw, ok=ok)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Rewrite summary.json atomically, in the background (it is fsynced)."""
        data = orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        self._pool.submit(replace_in, self.dirs.dir_fd, SUMMARY, data, self.path)

    # -- flushing --------------------------------------------------------------------
    def start(self) -> None:
        """Start the periodic flusher (call inside the running loop)."""
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.flush()
            except OutputError as exc:
                if self.on_error is not None:
                    self.on_error(exc)
                return

    async def flush(self) -> None:
        """Write everything queued so far, in order.

        After a write failed (OutputError) nothing more is written: what is queued is
        dropped and counted in ``unsaved_*``, and results.jsonl ends at its last whole line.
        """
        ops = self.text.take_ops()
        data, oks = self.results.take()
        if self.error is not None:
            self.results.count_unsaved(oks)
            return
        if data:
            ops.append(lambda: self.results.append(data))
        try:
            for op in ops:
                op()
        except OSError as exc:
            self.results.count_unsaved(oks)  # the results write is the last op: none is in
            self.error = OutputError(f"writing to {self.path} failed: {why(exc)}")
            raise self.error from None

    async def aclose(self) -> None:
        """Flush everything, fsync results, stop the thread and release the lock."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        loop = asyncio.get_running_loop()
        try:
            await self.flush()
            for log in self.text.logs():
                log_fd, partial_fd = log.detach()
                if partial_fd >= 0:
                    os.close(partial_fd)
                if log_fd >= 0:  # before results.jsonl: its records point in here
                    await loop.run_in_executor(self._pool, _fsync_close, log_fd)
            if (fd := self.results.detach()) >= 0:
                await loop.run_in_executor(self._pool, _fsync_close, fd)
        finally:
            self._pool.shutdown(wait=True)
            self.dirs.release()


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def forget_unsaved(rundir: RunDir, metrics: RunMetrics | None) -> str | None:
    """Uncount from ``metrics`` the requests whose records could not be saved; the notice."""
    if metrics is not None:
        metrics.forget(rundir.unsaved_succeeded, rundir.unsaved_failed)
    return unsaved_notice(rundir)


def unsaved_notice(rundir: RunDir) -> str | None:
    """One line saying how many finished requests could not be saved, or None."""
    n = rundir.unsaved_succeeded + rundir.unsaved_failed
    if not n:
        return None
    return (
        f"{n} finished request{'s' if n > 1 else ''} could not be saved to "
        f"{rundir.path / RESULTS} (not counted above); the same command runs them again"
    )
