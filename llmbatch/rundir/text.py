"""Answer text as it streams: one file per request (text/<id>.partial, then .txt) or the
log layout's text.log (textlog.py); the reasoning beside it, the same way.

Text that arrives per token is buffered per request and queued as file operations, run in
order by the run directory once per tick (writer.py). An answer that completes within one
tick is written straight to its .txt; a longer one streams into .partial and is renamed.
A retry starts the text over; a failed request's partial text is kept in text/failed/
only with --keep-partial.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from llmbatch.rundir.layout import (
    FAILED_DIR,
    REASONING_SUFFIX,
    TEXT_DIR,
    LockedDir,
    safe_name,
    unlink_in,
)
from llmbatch.rundir.nofollow import check_not_link, create_new, write_all, write_new
from llmbatch.rundir.textlog import REASONING_LOG, REASONING_PARTIAL_LOG, TextLog

__all__ = ["Op", "TextSink", "TextWriter"]

Op = Callable[[], None]


class TextSink:
    """The growing text (answer or reasoning) of one request's current attempt."""

    __slots__ = ("name", "log", "fd", "opened", "buf", "dirty", "chars", "kept", "span")

    def __init__(self, name: str, log: TextLog | None = None) -> None:
        self.name = name  # the file name (files layout) or the record id (log layout)
        self.log = log  # log layout: the log it goes to (answers or reasoning)
        self.fd = -1
        self.opened = False  # visible while streaming: .partial opened / live frames sent
        self.buf: list[str] = []
        self.dirty = False
        self.chars = 0
        self.kept: list[bytes] = []  # log layout: the attempt's text written so far
        # log layout: (offset, length) of the answer in text.log once finished and kept.
        self.span: tuple[int, int] | None = None


class TextWriter:
    """The text of a run directory: sinks per request, and the file operations queued for
    them (``take_ops``, once per tick)."""

    def __init__(self, dirs: LockedDir, *, text_files: bool, text_layout: str) -> None:
        self.dirs = dirs
        self.text_files = text_files
        logged = text_files and text_layout == "log"
        self.text_log = TextLog(dirs.path) if logged else None
        self.reasoning_log = (
            TextLog(dirs.path, REASONING_LOG, REASONING_PARTIAL_LOG) if logged else None
        )
        self._ops: list[Op] = []
        self._dirty: list[TextSink] = []
        self._failed_dir_queued = False

    def logs(self) -> list[TextLog]:
        """The log layout's logs (answers, reasoning); none in the files layout."""
        return [log for log in (self.text_log, self.reasoning_log) if log is not None]

    def open_logs(self, text_end: int, reasoning_end: int) -> None:
        """Open the logs (log layout), each cut back to where its last record's text ends."""
        if self.text_log is not None and self.reasoning_log is not None:
            self.text_log.open(text_end, self.dirs.dir_fd)
            self.reasoning_log.open(reasoning_end, self.dirs.dir_fd)

    def begin(self, record_id: str, *, reasoning: bool = False) -> TextSink:
        """Start the text of ``record_id`` (its reasoning with ``reasoning``); no file
        exists until text arrives."""
        if self.text_log is not None:
            return TextSink(record_id, self.reasoning_log if reasoning else self.text_log)
        return TextSink(safe_name(record_id) + (REASONING_SUFFIX if reasoning else ""))

    def restart(self, sink: TextSink) -> None:
        """Drop what an attempt wrote so a retry starts the text over."""
        sink.buf.clear()
        sink.chars = 0
        if sink.log is not None:
            sink.kept.clear()
            if sink.opened:
                sink.log.mark(sink.name, "restart")
        elif sink.opened:
            self._ops.append(lambda: self._op_truncate(sink))

    def append(self, sink: TextSink, text: str) -> None:
        """Add streamed text; it reaches the file within one tick."""
        if not self.text_files:
            return
        sink.buf.append(text)
        sink.chars += len(text)
        if not sink.dirty:
            sink.dirty = True
            self._dirty.append(sink)

    def finish(self, sink: TextSink, *, complete: bool, keep_partial: bool) -> str | None:
        """Close the text: .txt when complete; failed/<id>.partial or nothing otherwise.

        Returns the path (relative to the run dir) of the text kept, if any.
        """
        if not self.text_files:
            return None
        if sink.log is not None:
            return self._finish_logged(sink, complete=complete, keep_partial=keep_partial)
        dirs = self.dirs
        txt = f"{sink.name}.txt"
        partial = f"{sink.name}.partial"
        if not sink.opened:
            # Began and ended within one tick: one write, no .partial, no rename.
            data = self._take(sink)
            if complete:
                self._ops.append(lambda: _write_file(dirs.text_fd, txt, data, dirs.text_dir))
                return f"{TEXT_DIR}/{txt}"
            self._ops.append(lambda: unlink_in(dirs.text_fd, txt))  # a stale answer, if any
            if keep_partial and data:  # a request that never streamed leaves no file
                self._need_failed_dir()
                failed_dir = dirs.text_dir / FAILED_DIR
                self._ops.append(lambda: _write_file(dirs.failed_fd, partial, data, failed_dir))
                return f"{TEXT_DIR}/{FAILED_DIR}/{partial}"
            return None
        self._collect(sink)
        if complete:
            self._ops.append(lambda: self._op_close(sink, dirs.text_fd, txt))
            return f"{TEXT_DIR}/{txt}"
        if keep_partial and sink.chars:  # a retry that streamed nothing leaves no file
            self._need_failed_dir()
            self._ops.append(lambda: self._op_close(sink, dirs.failed_fd, partial))
            return f"{TEXT_DIR}/{FAILED_DIR}/{partial}"
        self._ops.append(lambda: self._op_close(sink, -1, None))
        return None

    def _finish_logged(self, sink: TextSink, *, complete: bool, keep_partial: bool) -> str | None:
        log = sink.log
        assert log is not None
        kept = sink.kept
        if sink.buf:
            kept.append(self._take(sink))
            if sink.opened:  # the live view ends with the whole answer too
                log.grew(sink.name, kept[-1])
        if sink.opened:
            log.mark(sink.name, "done")
        data = kept[0] if len(kept) == 1 else b"".join(kept)
        sink.kept = []
        if not complete and not (keep_partial and data):
            return None
        sink.span = log.answer(sink.name, data, complete=complete)
        return log.name

    def take_ops(self) -> list[Op]:
        """Everything queued so far, in order, to run now: the text that grew since the
        last tick, then the logs' bytes (answers before the result lines that point at
        them)."""
        for sink in self._dirty:
            self._collect(sink)
        self._dirty = []
        ops, self._ops = self._ops, []
        for log in self.logs():
            log_data, partial_data = log.take()
            if log_data:
                ops.append(functools.partial(write_all, log.log_fd, log_data))
            if partial_data:
                ops.append(functools.partial(write_all, log.partial_fd, partial_data))
        return ops

    def _take(self, sink: TextSink) -> bytes:
        data = "".join(sink.buf).encode("utf-8", "surrogatepass")
        sink.buf.clear()
        sink.dirty = False
        return data

    def _collect(self, sink: TextSink) -> None:
        if sink.buf and sink.log is not None:
            if sink.dirty:  # still streaming after a tick: show it in the live view
                data = self._take(sink)
                sink.kept.append(data)
                sink.opened = True
                sink.log.grew(sink.name, data)
            sink.dirty = False
            return
        if sink.buf:
            data = self._take(sink)
            if not sink.opened:
                sink.opened = True
                self._ops.append(lambda: self._op_open(sink))
            self._ops.append(lambda: write_all(sink.fd, data))
        sink.dirty = False

    def _need_failed_dir(self) -> None:
        """Queue the making of text/failed/ (once) before the first op that writes there."""
        if self.dirs.failed_fd < 0 and not self._failed_dir_queued:
            self._failed_dir_queued = True
            self._ops.append(self.dirs.open_failed_dir)

    # -- ops (run in order at each tick) -------------------------------------------------
    def _op_open(self, sink: TextSink) -> None:
        sink.fd = create_new(self.dirs.text_fd, f"{sink.name}.partial", self.dirs.text_dir)

    def _op_truncate(self, sink: TextSink) -> None:
        if sink.fd >= 0:
            os.ftruncate(sink.fd, 0)
            os.lseek(sink.fd, 0, os.SEEK_SET)

    def _op_close(self, sink: TextSink, dest_fd: int, dest: str | None) -> None:
        """Close the .partial; rename it to ``dest`` in the folder ``dest_fd``, or drop it."""
        if sink.fd < 0:
            return
        os.close(sink.fd)
        sink.fd = -1
        text_fd = self.dirs.text_fd
        partial = f"{sink.name}.partial"
        if dest is None or not dest.endswith(".txt"):
            unlink_in(text_fd, f"{sink.name}.txt")  # a stale answer from a crashed run, if any
        if dest is None:
            unlink_in(text_fd, partial)
            return
        text_dir = self.dirs.text_dir
        where = text_dir if dest_fd == text_fd else text_dir / FAILED_DIR
        check_not_link(dest_fd, dest, where)  # replacing a link would hide the tampering
        os.replace(partial, dest, src_dir_fd=text_fd, dst_dir_fd=dest_fd)


def _write_file(dir_fd: int, name: str, data: bytes, where: Path) -> None:
    """One answer file written whole (created afresh: never through a link)."""
    write_new(dir_fd, name, data, where)
