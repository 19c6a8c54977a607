"""The run directory: incremental answer text, results.jsonl, summary.json, a lock.

Layout of ``outputs/<run>/``::

    run.json          what job this directory belongs to (prompts file, provider, model)
    results.jsonl     one line per finished request (OpenAI Batch output shape + "llmbatch")
    text/<id>.partial the answer while it streams (reset when a retry starts over)
    text/<id>.txt     the answer once complete
    text/failed/<id>.partial  the partial answer of a failed request (--keep-partial only)
    text/<id>.reasoning.partial, .reasoning.txt, failed/<id>.reasoning.partial
                      the model's reasoning (thinking blocks, reasoning_content, ...), the
                      same way; only for answers that reasoned aloud
    text.log, text.partial.log  instead of text/, with --text-layout log (textlog.py);
    reasoning.log, reasoning.partial.log  the reasoning, in the same shape
    summary.json      run metrics, rewritten periodically and at the end
    .lock             held (flock) while a run writes here

File operations are queued in order and run once per tick (0.1 s), so text that
arrives per token is written per request and per tick. They run on the event loop
itself: each is one short syscall on the page cache, and a writer thread was measured
to starve for the GIL under load (nothing reached disk until the run ended; see
bench/RESULTS.md). Only summary.json, which is fsynced, is written by a thread.
An answer that completes within one tick is written straight to its .txt; a longer
one streams into .partial and is renamed. Order is the commit protocol: the .txt
exists before the result line is appended, and the result line is what marks a
request done. A crash loses at most one tick of records; those requests run again.

Nothing inside the directory is written through a link (nofollow.py): every file is
opened relative to the directory's descriptor with O_NOFOLLOW, and a link where one of its
files belongs is an error naming it (the run stops; nothing was truncated).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import orjson

from llmbatch.config.load import TEXT_LAYOUTS
from llmbatch.errors import InputError, OutputError, RunDirError
from llmbatch.records import PromptRecord
from llmbatch.rundir.identity import describe_changes, merge_identity, request_hash
from llmbatch.rundir.idset import IdMap
from llmbatch.rundir.nofollow import (
    PlantedLink,
    check_not_link,
    create_new,
    open_dir,
    open_kept,
    open_subdir,
    replace_in,
    write_new,
)
from llmbatch.rundir.resultline import record_cost_usd
from llmbatch.rundir.textlog import (
    PARTIAL_LOG,
    REASONING_LOG,
    REASONING_PARTIAL_LOG,
    TEXT_LOG,
    TextLog,
)

if TYPE_CHECKING:
    from llmbatch.metrics import RunMetrics

__all__ = [
    "link_or_copy",
    "ResumeIndex",
    "RunDir",
    "TextSink",
    "changed_notice",
    "damaged_lines_notice",
    "forget_unsaved",
    "is_own_text_path",
    "iter_result_lines",
    "unsaved_notice",
    "parse_result_line",
    "safe_name",
]

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
META = "run.json"
LOCK = ".lock"
TEXT_DIR = "text"
FAILED_DIR = "failed"
REASONING_SUFFIX = ".reasoning"  # text/<id>.reasoning.txt beside text/<id>.txt
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 80
# What a record's text_file may name (read by export, merge and Ray): a file of the run
# directory's own text layout, never a path that leaves it.
_OWN_TEXT = re.compile(
    r"text/(failed/)?[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,119}\.(txt|partial)|(text|reasoning)\.log"
)
# The names inside a run directory that llmbatch writes: none may be a link it did not make.
_OWN_NAMES = (
    LOCK,
    META,
    RESULTS,
    SUMMARY,
    TEXT_DIR,
    TEXT_LOG,
    PARTIAL_LOG,
    REASONING_LOG,
    REASONING_PARTIAL_LOG,
)
# A Ray part's text/ is a link llmbatch made to the run's own text/ (ray/engine.py).
PART_TEXT_LINK = "../../text"


def safe_name(record_id: str) -> str:
    """A file name for ``record_id``: no separators or traversal, bounded length.

    Ids that had to be changed get a short hash suffix so two ids never collide.
    """
    name = _SAFE.sub("_", record_id).lstrip(".")[:_MAX_NAME]
    if name != record_id or not name:
        digest = hashlib.blake2b(record_id.encode("utf-8", "surrogatepass"), digest_size=5)
        name = f"{name}~{digest.hexdigest()}"
    return name


def is_own_text_path(rel: object) -> TypeGuard[str]:
    """True when ``rel`` (a record's ``text_file``) names a text file of the run directory
    itself; a record from elsewhere must not make a reader or a copy leave it."""
    return isinstance(rel, str) and _OWN_TEXT.fullmatch(rel) is not None


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


Op = Callable[[], None]


class RunDir:
    """An opened, locked run directory. Create with ``RunDir.open``; close with ``aclose``."""

    def __init__(
        self,
        path: Path,
        tick_s: float = 0.1,
        *,
        text_files: bool = True,
        text_layout: str = "files",
    ) -> None:
        self.path = path
        self.text_files = text_files
        self.text_layout = text_layout
        logged = text_files and text_layout == "log"
        self.text_log = TextLog(path) if logged else None
        self.reasoning_log = TextLog(path, REASONING_LOG, REASONING_PARTIAL_LOG) if logged else None
        self.text_dir = path / TEXT_DIR
        self.tick_s = tick_s
        self._dir_fd = -1  # the run directory; every file inside is opened relative to it
        self._text_fd = -1  # text/
        self._failed_fd = -1  # text/failed/
        self._failed_dir_queued = False
        self._lock_fd = -1
        self._results_fd = -1
        self._ops: list[Op] = []
        self._dirty: list[TextSink] = []
        self._results_buf: list[bytes] = []
        self._results_ok: list[bool] = []  # per queued line: the request succeeded
        # Finished requests whose line could not be written (the disk filled up): they are
        # not in results.jsonl, so they run again on resume and must not be counted as done.
        self.unsaved_succeeded = 0
        self.unsaved_failed = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmbatch-summary")
        self._flusher: asyncio.Task[None] | None = None
        self.error: OutputError | None = None
        # Called once when a periodic flush fails (the dispatcher stops the run).
        self.on_error: Callable[[OutputError], None] | None = None

    # -- opening -------------------------------------------------------------------
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
        rd = cls(path, text_files=text_files, text_layout=text_layout)
        _check_adoptable(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            rd._dir_fd = open_dir(path)
            rd._take_lock()
        except OSError as exc:
            rd._close_fds()
            raise RunDirError(f"cannot use run directory {path}: {_why(exc)}") from None
        try:
            rd._refuse_links(part=bool(meta.get("part_of")))
            if rd.text_log is None:
                rd._open_text_dirs(part=bool(meta.get("part_of")))
            rd._check_meta(meta, force_resume)
            resuming = _exists(rd._dir_fd, RESULTS)
            index = rd._load_index(retry_failed)
            if rerun is not None and (again := rerun(index)):
                _drop_records(rd._dir_fd, path, lambda rec: rec.get("custom_id") in again)
                index = rd._load_index(False)
            if resuming and rd._text_fd >= 0:
                rd._remove_stale_partials(rd._text_fd)
            if retry_failed and rd._failed_fd >= 0:  # they run again: their old partials go
                rd._remove_stale_partials(rd._failed_fd)
            if rd.text_log is not None and rd.reasoning_log is not None:
                rd.text_log.open(index.text_log_end, rd._dir_fd)
                rd.reasoning_log.open(index.reasoning_log_end, rd._dir_fd)
            rd._results_fd = open_kept(
                rd._dir_fd, RESULTS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, path
            )
        except OSError as exc:
            rd._release_lock()
            raise RunDirError(f"cannot use run directory {path}: {_why(exc)}") from None
        except BaseException:
            rd._release_lock()
            raise
        return rd, index

    def _refuse_links(self, *, part: bool) -> None:
        """No name llmbatch writes may be a link it did not make (checked before any of
        them is read or written; the opens below refuse links too, race-free)."""
        for name in _OWN_NAMES:
            try:
                st = os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(st.st_mode):
                continue
            if name == TEXT_DIR and part and _is_part_link(self._dir_fd):
                continue
            raise PlantedLink(self.path / name)

    def _open_text_dirs(self, *, part: bool) -> None:
        """Open text/ (made when missing) and text/failed/ if there is one (it is made with
        the first kept partial text: no empty folder per run); a Ray part's text/ is the
        run's own, through the one link llmbatch made for it."""
        if part and _is_part_link(self._dir_fd):
            self._text_fd = open_subdir(self._dir_fd, PART_TEXT_LINK, self.path, create=False)
        else:
            self._text_fd = open_subdir(self._dir_fd, TEXT_DIR, self.path)
        with contextlib.suppress(FileNotFoundError):
            os.stat(FAILED_DIR, dir_fd=self._text_fd, follow_symlinks=False)
            self._failed_fd = open_subdir(self._text_fd, FAILED_DIR, self.text_dir, create=False)

    def _need_failed_dir(self) -> None:
        """Queue the making of text/failed/ (once) before the first op that writes there."""
        if self._failed_fd < 0 and not self._failed_dir_queued:
            self._failed_dir_queued = True
            self._ops.append(self._open_failed_dir)

    def _open_failed_dir(self) -> None:
        if self._failed_fd < 0:
            self._failed_fd = open_subdir(self._text_fd, FAILED_DIR, self.text_dir)

    def _take_lock(self) -> None:
        # Never truncated or written before it is known to be our own file, and held.
        fd = open_kept(self._dir_fd, LOCK, os.O_RDWR | os.O_CREAT, self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunDirError(
                f"{self.path} is in use by another llmbatch run (pid {other}); "
                "wait for it to finish or choose another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the fd drops the flock
            self._lock_fd = -1
        self._close_fds()

    def _close_fds(self) -> None:
        for name in ("_failed_fd", "_text_fd", "_dir_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def _check_meta(self, meta: dict[str, Any], force_resume: bool) -> None:
        mpath = self.path / META
        if not mpath.exists():
            replace_in(
                self._dir_fd, META, orjson.dumps(meta, option=orjson.OPT_INDENT_2), self.path
            )
            return
        try:
            old = orjson.loads(mpath.read_bytes())
        except orjson.JSONDecodeError:
            old = None
        other = not isinstance(old, dict) or old.get("shard") != meta.get("shard")
        if (other or describe_changes(old, meta)) and not self._holds_records():
            # No record yet (say, a run that aborted on a wrong base URL): no answers to
            # mix, so the directory belongs to this run now.
            data = orjson.dumps(meta, option=orjson.OPT_INDENT_2)
            replace_in(self._dir_fd, META, data, self.path)
            return
        if not isinstance(old, dict):
            if not force_resume:
                raise RunDirError(
                    f"{mpath} is damaged (not a JSON object), so this directory's run cannot "
                    "be checked; use another --out, or --force-resume to adopt it"
                )
            old = {}
        if old and old.get("shard") != meta.get("shard"):  # another job: never forced
            raise RunDirError(
                f"{self.path} holds a run of shard {old.get('shard')!r}, not "
                f"{meta.get('shard')!r}; use another --run-dir to start a new run"
            )
        changes = describe_changes(old, meta)
        if changes and not force_resume:
            raise RunDirError(
                f"{self.path} holds a run for another target: {'; '.join(changes)}. "
                "Its answers would be mixed with this run's: use another --run-dir for a new "
                "run, or --force-resume to continue this one anyway"
            )
        merged = merge_identity(old, meta, forced=force_resume)
        if merged is not None:
            data = orjson.dumps(merged, option=orjson.OPT_INDENT_2)
            replace_in(self._dir_fd, META, data, self.path)

    def _holds_records(self) -> bool:
        """True when results.jsonl has at least one whole record."""
        rpath = self.path / RESULTS
        return _exists(self._dir_fd, RESULTS) and next(iter_result_lines(rpath), None) is not None

    def _remove_stale_partials(self, folder_fd: int) -> None:
        """A .partial left by a run that died belongs to no request now (we hold the lock)."""
        with os.scandir(folder_fd) as entries:
            for entry in entries:
                if entry.name.endswith(".partial"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=folder_fd)

    def _load_index(self, retry_failed: bool) -> ResumeIndex:
        index = ResumeIndex()
        rpath = self.path / RESULTS
        if not rpath.exists():
            return index
        _repair_torn_tail(self._dir_fd, self.path)
        if retry_failed:
            _drop_records(self._dir_fd, self.path, lambda rec: rec.get("error") is not None)
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

    # -- text ------------------------------------------------------------------------
    def begin_text(self, record_id: str, *, reasoning: bool = False) -> TextSink:
        """Start the text of ``record_id`` (its reasoning with ``reasoning``); no file
        exists until text arrives."""
        if self.text_log is not None:
            return TextSink(record_id, self.reasoning_log if reasoning else self.text_log)
        return TextSink(safe_name(record_id) + (REASONING_SUFFIX if reasoning else ""))

    def restart_text(self, sink: TextSink) -> None:
        """Drop what an attempt wrote so a retry starts the text over."""
        sink.buf.clear()
        sink.chars = 0
        if sink.log is not None:
            sink.kept.clear()
            if sink.opened:
                sink.log.mark(sink.name, "restart")
        elif sink.opened:
            self._ops.append(lambda: self._op_truncate(sink))

    def append_text(self, sink: TextSink, text: str) -> None:
        """Add streamed text; it reaches the file within one tick."""
        if not self.text_files:
            return
        sink.buf.append(text)
        sink.chars += len(text)
        if not sink.dirty:
            sink.dirty = True
            self._dirty.append(sink)

    def finish_text(self, sink: TextSink, *, complete: bool, keep_partial: bool) -> str | None:
        """Close the text: .txt when complete; failed/<id>.partial or nothing otherwise.

        Returns the path (relative to the run dir) of the text kept, if any.
        """
        if not self.text_files:
            return None
        if sink.log is not None:
            return self._finish_logged(sink, complete=complete, keep_partial=keep_partial)
        txt = f"{sink.name}.txt"
        partial = f"{sink.name}.partial"
        if not sink.opened:
            # Began and ended within one tick: one write, no .partial, no rename.
            data = self._take(sink)
            if complete:
                self._ops.append(lambda: _write_file(self._text_fd, txt, data, self.text_dir))
                return f"{TEXT_DIR}/{txt}"
            self._ops.append(lambda: _unlink_in(self._text_fd, txt))  # a stale answer, if any
            if keep_partial and data:  # a request that never streamed leaves no file
                self._need_failed_dir()
                failed_dir = self.text_dir / FAILED_DIR
                self._ops.append(lambda: _write_file(self._failed_fd, partial, data, failed_dir))
                return f"{TEXT_DIR}/{FAILED_DIR}/{partial}"
            return None
        self._collect(sink)
        if complete:
            self._ops.append(lambda: self._op_close(sink, self._text_fd, txt))
            return f"{TEXT_DIR}/{txt}"
        if keep_partial and sink.chars:  # a retry that streamed nothing leaves no file
            self._need_failed_dir()
            self._ops.append(lambda: self._op_close(sink, self._failed_fd, partial))
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

    def add_result(self, line: dict[str, Any]) -> None:
        """Queue one results.jsonl line; written after any text op queued before it."""
        self._results_buf.append(orjson.dumps(line) + b"\n")
        self._results_ok.append(line.get("error") is None)

    def add_result_line(self, raw: bytes, *, ok: bool) -> None:
        """Queue one results.jsonl line already encoded (ending in a newline), as is."""
        self._results_buf.append(raw)
        self._results_ok.append(ok)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Rewrite summary.json atomically, in the background (it is fsynced)."""
        data = orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        self._pool.submit(replace_in, self._dir_fd, SUMMARY, data, self.path)

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
        for sink in self._dirty:
            self._collect(sink)
        self._dirty = []
        oks, self._results_ok = self._results_ok, []
        data = b"".join(self._results_buf)
        self._results_buf = []
        ops, self._ops = self._ops, []
        if self.error is not None:
            self._count_unsaved(oks)
            return
        for log in (self.text_log, self.reasoning_log):
            if log is not None:
                # Answers before the result lines that point at them.
                log_data, partial_data = log.take()
                if log_data:
                    ops.append(functools.partial(_write_all, log.log_fd, log_data))
                if partial_data:
                    ops.append(functools.partial(_write_all, log.partial_fd, partial_data))
        if data:
            ops.append(lambda: self._append_results(data))
        try:
            for op in ops:
                op()
        except OSError as exc:
            self._count_unsaved(oks)  # the results write is the last op: none of them is in
            self.error = OutputError(f"writing to {self.path} failed: {_why(exc)}")
            raise self.error from None

    def _count_unsaved(self, oks: list[bool]) -> None:
        n_ok = sum(oks)
        self.unsaved_succeeded += n_ok
        self.unsaved_failed += len(oks) - n_ok

    def _append_results(self, data: bytes) -> None:
        before = os.fstat(self._results_fd).st_size
        try:
            _write_all(self._results_fd, data)
        except OSError:
            # A partial write would leave a torn line that a later write could glue onto:
            # cut back to the last whole line written before.
            with contextlib.suppress(OSError):
                os.ftruncate(self._results_fd, before)
            raise

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
            self._ops.append(lambda: _write_all(sink.fd, data))
        sink.dirty = False

    async def aclose(self) -> None:
        """Flush everything, fsync results, stop the thread and release the lock."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        try:
            await self.flush()
            for log in (self.text_log, self.reasoning_log):
                if log is None:
                    continue
                log_fd, partial_fd = log.detach()
                if partial_fd >= 0:
                    os.close(partial_fd)
                if log_fd >= 0:  # before results.jsonl: its records point in here
                    await asyncio.get_running_loop().run_in_executor(
                        self._pool, _fsync_close, log_fd
                    )
            if self._results_fd >= 0:
                fd = self._results_fd
                self._results_fd = -1
                await asyncio.get_running_loop().run_in_executor(self._pool, _fsync_close, fd)
        finally:
            self._pool.shutdown(wait=True)
            self._release_lock()

    # -- ops (run in order at each flush) ----------------------------------------------
    def _op_open(self, sink: TextSink) -> None:
        sink.fd = create_new(self._text_fd, f"{sink.name}.partial", self.text_dir)

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
        text_fd = self._text_fd
        partial = f"{sink.name}.partial"
        if dest is None or not dest.endswith(".txt"):
            _unlink_in(text_fd, f"{sink.name}.txt")  # a stale answer from a crashed run, if any
        if dest is None:
            _unlink_in(text_fd, partial)
            return
        where = self.text_dir if dest_fd == text_fd else self.text_dir / FAILED_DIR
        check_not_link(dest_fd, dest, where)  # replacing a link would hide the tampering
        os.replace(partial, dest, src_dir_fd=text_fd, dst_dir_fd=dest_fd)


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


def _write_file(dir_fd: int, name: str, data: bytes, where: Path) -> None:
    """One answer file written whole (created afresh: never through a link)."""
    write_new(dir_fd, name, data, where)


def _unlink_in(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _is_part_link(dir_fd: int) -> bool:
    """True when text/ is the link to the run's text/ that llmbatch made for a Ray part."""
    try:
        return os.readlink(TEXT_DIR, dir_fd=dir_fd) == PART_TEXT_LINK
    except OSError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _why(exc: OSError) -> str:
    """An OSError as words (``Permission denied: 'x'``), not ``[Errno 13] ...``."""
    if isinstance(exc, PlantedLink) or exc.strerror is None:
        return str(exc)
    return f"{exc.strerror}: {exc.filename!r}" if exc.filename else exc.strerror


# What a run directory holds before its run.json is written (a run that died at once).
_BEFORE_META = {LOCK, TEXT_DIR}


def _check_adoptable(path: Path) -> None:
    """Refuse a path that is a file, or a directory with files but no run.json."""
    if path.exists() and not path.is_dir():
        raise RunDirError(
            f"cannot use run directory {path}: it is a file, not a directory "
            "(--run-dir names the run's directory)"
        )
    if not path.is_dir() or (path / META).exists():
        return
    try:
        names = {e.name for e in os.scandir(path)}
        foreign = sorted(names - _BEFORE_META)
        if TEXT_DIR in names and not foreign:
            foreign = [
                str(f.relative_to(path)) for f in (path / TEXT_DIR).rglob("*") if not f.is_dir()
            ][:3]
    except OSError as exc:
        raise RunDirError(f"cannot use run directory {path}: {_why(exc)}") from None
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise RunDirError(
            f"{path} is not an llmbatch run directory (no {META}, but it holds {shown}); "
            "llmbatch never adopts or cleans such a directory: choose another --run-dir"
        )


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


def _drop_records(dir_fd: int, where: Path, drop: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite results.jsonl without the records ``drop`` picks (atomically), so their
    requests run again (failed ones with --retry-failed, changed ones with
    --rerun-changed)."""
    kept = (raw for raw, rec in iter_result_lines(where / RESULTS) if not drop(rec))
    replace_in(dir_fd, RESULTS, kept, where)


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (instant, no extra space), else a copy."""
    try:
        os.link(src, dst)
    except FileExistsError:
        os.unlink(dst)
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
