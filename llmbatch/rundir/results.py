"""results.jsonl: its lines read back, the resume index made from them, and appending.

A result line is what marks a request done (resultline.py holds its schema). Lines are
appended whole, after the text they point at; a crash can leave a last line without its
newline, cut off when the directory is opened again. A line that cannot be decoded is
skipped and named (its request runs again).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from llmbatch.errors import InputError, RunDirError
from llmbatch.records import PromptRecord
from llmbatch.rundir.identity import request_hash
from llmbatch.rundir.idset import IdMap
from llmbatch.rundir.layout import RESULTS, LockedDir
from llmbatch.rundir.nofollow import open_kept, replace_in, write_all
from llmbatch.rundir.resultline import record_cost_usd
from llmbatch.rundir.textlog import REASONING_LOG, TEXT_LOG

__all__ = [
    "ResultsFile",
    "ResumeIndex",
    "changed_notice",
    "damaged_lines_notice",
    "drop_records",
    "holds_records",
    "iter_result_lines",
    "load_index",
    "parse_result_line",
]


def parse_result_line(raw: bytes) -> dict[str, Any] | None:
    """One results.jsonl line as a dict; None for a damaged line (its request runs again)."""
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


def iter_result_lines(
    path: Path, *, damaged: list[int] | None = None
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(raw line, record) for every complete, decodable line of a results file.

    A last line without its newline (a run still writing, or a crash) is left out;
    the line number of any other line that cannot be decoded goes to ``damaged``.
    Raises RunDirError when the file cannot be read.
    """
    try:
        with open(path, "rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                if not raw.endswith(b"\n"):
                    return
                rec = parse_result_line(raw)
                if rec is not None:
                    yield raw, rec
                elif damaged is not None and raw.strip():
                    damaged.append(line_no)
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read: {exc.strerror}") from None


class ResumeIndex:
    """Which ids already have a record, and the request each answered (its request_hash,
    kept as a 64-bit hash); built from results.jsonl at start."""

    def __init__(self) -> None:
        self._done = IdMap()
        self.succeeded = 0
        self.failed = 0
        # results.jsonl lines that could not be read (their requests run again).
        self.damaged_lines: list[int] = []
        # Where the last answer that a record points to ends in text.log (log layout),
        # and the last reasoning in reasoning.log.
        self.text_log_end = 0
        self.reasoning_log_end = 0
        self.cost_usd = 0.0  # what the records cost, where priced (max_cost counts it)

    def add(self, record_id: str, request_hash: str | None = None) -> None:
        """Mark ``record_id`` as done (answering the request of ``request_hash``)."""
        self._done.put(record_id, _hash_value(request_hash) if request_hash else 0)

    def changed(self, rec: PromptRecord) -> bool:
        """True when ``rec``'s id has a record that answered another request (False when
        it has none, or its record has no hash: made by an older llmbatch)."""
        old = self._done.get(rec.id)
        return old != 0 and old != _hash_value(request_hash(rec))

    def changed_among(self, items: Iterable[PromptRecord | InputError]) -> set[str]:
        """The ids of ``items`` whose records answered another request."""
        return {r.id for r in items if isinstance(r, PromptRecord) and self.changed(r)}

    def __contains__(self, record_id: str) -> bool:
        return record_id in self._done

    def __len__(self) -> int:
        return len(self._done)


def _hash_value(request_hash: str) -> int:
    """A request hash as the 64-bit value the index keeps (never 0: 0 means none)."""
    return hash(request_hash) or 1


def load_index(dirs: LockedDir, *, retry_failed: bool) -> ResumeIndex:
    """The resume index of the run directory ``dirs`` (its torn last line cut first);
    with ``retry_failed`` the failed records are dropped first, so they run again."""
    index = ResumeIndex()
    rpath = dirs.path / RESULTS
    if not rpath.exists():
        return index
    _repair_torn_tail(dirs.dir_fd, dirs.path)
    if retry_failed:
        drop_records(dirs, lambda rec: rec.get("error") is not None)
    for _, rec in iter_result_lines(rpath, damaged=index.damaged_lines):
        cid = rec.get("custom_id")
        if isinstance(cid, str):
            _note_text_log_end(index, rec)
            lb = rec.get("llmbatch")
            rhash = lb.get("request_hash") if isinstance(lb, dict) else None
            index.add(cid, rhash if isinstance(rhash, str) else None)
            index.cost_usd += record_cost_usd(rec)
            if rec.get("error") is None:
                index.succeeded += 1
            else:
                index.failed += 1
    return index


def _note_text_log_end(index: ResumeIndex, rec: dict[str, Any]) -> None:
    """Track the end of the last text.log answer (and reasoning.log span) a record
    points to (for the cut-back)."""
    lb = rec.get("llmbatch")
    if not isinstance(lb, dict):
        return
    if lb.get("text_file") == TEXT_LOG:
        offset, length = lb.get("text_offset"), lb.get("text_bytes")
        if isinstance(offset, int) and isinstance(length, int):
            index.text_log_end = max(index.text_log_end, offset + length + 1)
    if lb.get("reasoning_file") == REASONING_LOG:
        offset, length = lb.get("reasoning_offset"), lb.get("reasoning_bytes")
        if isinstance(offset, int) and isinstance(length, int):
            index.reasoning_log_end = max(index.reasoning_log_end, offset + length + 1)


def holds_records(dirs: LockedDir) -> bool:
    """True when results.jsonl has at least one whole record."""
    rpath = dirs.path / RESULTS
    return dirs.exists(RESULTS) and next(iter_result_lines(rpath), None) is not None


def drop_records(dirs: LockedDir, drop: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite results.jsonl without the records ``drop`` picks (atomically), so their
    requests run again (failed ones with --retry-failed, changed ones with
    --rerun-changed)."""
    kept = (raw for raw, rec in iter_result_lines(dirs.path / RESULTS) if not drop(rec))
    replace_in(dirs.dir_fd, RESULTS, kept, dirs.path)


def _repair_torn_tail(dir_fd: int, where: Path) -> None:
    """Cut a last line of results.jsonl that a crash left without its newline."""
    fd = open_kept(dir_fd, RESULTS, os.O_RDWR, where)
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        # Walk back to the previous newline; records are small, read in blocks.
        pos = size
        block = 64 * 1024
        while pos > 0:
            start = max(0, pos - block)
            nl = os.pread(fd, pos - start, start).rfind(b"\n")
            if nl >= 0:
                os.ftruncate(fd, start + nl + 1)
                return
            pos = start
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


class ResultsFile:
    """results.jsonl open for appending, the lines queued for it, and the finished
    requests whose line could not be written (the disk filled up): they are not in the
    file, so they run again on resume and must not be counted as done."""

    def __init__(self) -> None:
        self.fd = -1
        self._buf: list[bytes] = []
        self._oks: list[bool] = []  # per queued line: the request succeeded
        self.unsaved_succeeded = 0
        self.unsaved_failed = 0

    def open(self, dirs: LockedDir) -> None:
        """Open results.jsonl of ``dirs`` for appending (made if missing; never a link)."""
        self.fd = open_kept(dirs.dir_fd, RESULTS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, dirs.path)

    def add(self, line: dict[str, Any]) -> None:
        """Queue one line."""
        self._buf.append(orjson.dumps(line) + b"\n")
        self._oks.append(line.get("error") is None)

    def add_raw(self, raw: bytes, *, ok: bool) -> None:
        """Queue one line already encoded (ending in a newline), as is."""
        self._buf.append(raw)
        self._oks.append(ok)

    def take(self) -> tuple[bytes, list[bool]]:
        """The queued lines as one write, and per line whether its request succeeded."""
        data, oks = b"".join(self._buf), self._oks
        self._buf = []
        self._oks = []
        return data, oks

    def count_unsaved(self, oks: list[bool]) -> None:
        """Count the requests of lines that were taken but never written."""
        n_ok = sum(oks)
        self.unsaved_succeeded += n_ok
        self.unsaved_failed += len(oks) - n_ok

    def append(self, data: bytes) -> None:
        """Write ``data`` (whole lines) at the end; on failure, cut back to the last whole
        line written before."""
        before = os.fstat(self.fd).st_size
        try:
            write_all(self.fd, data)
        except OSError:
            # A partial write would leave a torn line that a later write could glue onto.
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, before)
            raise

    def detach(self) -> int:
        """Hand the descriptor over for closing (-1 when not open)."""
        fd, self.fd = self.fd, -1
        return fd


def changed_notice(count: int, ids: Iterable[str]) -> str | None:
    """One line on the done prompts whose request changed (their answers kept), or None."""
    if not count:
        return None
    shown = list(ids)
    listed = ", ".join(shown) + (", ..." if count > len(shown) else "")
    noun, its = ("prompt", "its") if count == 1 else ("prompts", "their")
    return (
        f"{count} done {noun} changed since {its} answer was recorded (same id, another "
        f"request: {listed}); the old answers are kept: --rerun-changed runs them again"
    )


def damaged_lines_notice(path: Path, lines: list[int] | None) -> str | None:
    """One warning line naming the damaged lines of a results file, or None."""
    if not lines:
        return None
    shown = ", ".join(str(n) for n in lines[:5]) + (", ..." if len(lines) > 5 else "")
    noun = "line" if len(lines) == 1 else f"{len(lines)} lines"
    return f"{path}: damaged {noun} skipped (not a JSON record): line {shown}"
