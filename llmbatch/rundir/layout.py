"""The run directory's names, and opening one: refusing what is not ours, the lock, run.json.

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

Nothing inside the directory is written through a link (nofollow.py): every file is
opened relative to the directory's descriptor with O_NOFOLLOW, and a link where one of its
files belongs is an error naming it (the run stops; nothing was truncated).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

import orjson

from llmbatch.errors import RunDirError
from llmbatch.rundir.identity import describe_changes, merge_identity
from llmbatch.rundir.nofollow import PlantedLink, open_dir, open_kept, open_subdir, replace_in
from llmbatch.rundir.textlog import PARTIAL_LOG, REASONING_LOG, REASONING_PARTIAL_LOG, TEXT_LOG

__all__ = [
    "FAILED_DIR",
    "LOCK",
    "META",
    "PART_TEXT_LINK",
    "REASONING_SUFFIX",
    "RESULTS",
    "SUMMARY",
    "TEXT_DIR",
    "LockedDir",
    "is_own_text_path",
    "link_or_copy",
    "safe_name",
    "unlink_in",
    "why",
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
# What a run directory holds before its run.json is written (a run that died at once).
_BEFORE_META = {LOCK, TEXT_DIR}


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


class LockedDir:
    """The descriptors of an opened, locked run directory: the directory, text/ and
    text/failed/ (files layout), the lock. Every file inside is opened relative to them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text_dir = path / TEXT_DIR
        self.dir_fd = -1  # the run directory
        self.text_fd = -1  # text/
        self.failed_fd = -1  # text/failed/
        self._lock_fd = -1

    @classmethod
    def lock(cls, path: Path) -> LockedDir:
        """Make ``path`` if missing, open it and take its lock (RunDirError when it is not
        a run directory or another run holds it)."""
        _check_adoptable(path)
        d = cls(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            d.dir_fd = open_dir(path)
            d._take_lock()
        except OSError as exc:
            d._close_fds()
            raise RunDirError(f"cannot use run directory {path}: {why(exc)}") from None
        except BaseException:  # another run holds the lock
            d._close_fds()
            raise
        return d

    def _take_lock(self) -> None:
        # Never truncated or written before it is known to be our own file, and held.
        fd = open_kept(self.dir_fd, LOCK, os.O_RDWR | os.O_CREAT, self.path)
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

    def release(self) -> None:
        """Drop the lock and close every descriptor."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the fd drops the flock
            self._lock_fd = -1
        self._close_fds()

    def _close_fds(self) -> None:
        for name in ("failed_fd", "text_fd", "dir_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def exists(self, name: str) -> bool:
        """True when ``name`` is in the run directory (a link counts: it is not followed)."""
        try:
            os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def refuse_links(self, *, part: bool) -> None:
        """No name llmbatch writes may be a link it did not make (checked before any of
        them is read or written; the opens refuse links too, race-free)."""
        for name in _OWN_NAMES:
            try:
                st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(st.st_mode):
                continue
            if name == TEXT_DIR and part and self._is_part_link():
                continue
            raise PlantedLink(self.path / name)

    def open_text_dirs(self, *, part: bool) -> None:
        """Open text/ (made when missing) and text/failed/ if there is one (it is made with
        the first kept partial text: no empty folder per run); a Ray part's text/ is the
        run's own, through the one link llmbatch made for it."""
        if part and self._is_part_link():
            self.text_fd = open_subdir(self.dir_fd, PART_TEXT_LINK, self.path, create=False)
        else:
            self.text_fd = open_subdir(self.dir_fd, TEXT_DIR, self.path)
        with contextlib.suppress(FileNotFoundError):
            os.stat(FAILED_DIR, dir_fd=self.text_fd, follow_symlinks=False)
            self.failed_fd = open_subdir(self.text_fd, FAILED_DIR, self.text_dir, create=False)

    def open_failed_dir(self) -> None:
        """Open text/failed/, made if missing."""
        if self.failed_fd < 0:
            self.failed_fd = open_subdir(self.text_fd, FAILED_DIR, self.text_dir)

    def _is_part_link(self) -> bool:
        """True when text/ is the link to the run's text/ that llmbatch made for a Ray part."""
        try:
            return os.readlink(TEXT_DIR, dir_fd=self.dir_fd) == PART_TEXT_LINK
        except OSError:
            return False

    def check_identity(
        self, meta: dict[str, Any], *, force_resume: bool, holds_records: Callable[[], bool]
    ) -> None:
        """Write run.json, or check the one there belongs to ``meta``'s job (identity.py).

        A directory whose run left no record (``holds_records()`` is False) belongs to
        this run; another target's is refused unless ``force_resume``, another shard's
        always.
        """
        mpath = self.path / META
        if not mpath.exists():
            self._write_meta(meta)
            return
        try:
            old = orjson.loads(mpath.read_bytes())
        except orjson.JSONDecodeError:
            old = None
        other = not isinstance(old, dict) or old.get("shard") != meta.get("shard")
        if (other or describe_changes(old, meta)) and not holds_records():
            # No record yet (say, a run that aborted on a wrong base URL): no answers to
            # mix, so the directory belongs to this run now.
            self._write_meta(meta)
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
            self._write_meta(merged)

    def _write_meta(self, meta: dict[str, Any]) -> None:
        replace_in(self.dir_fd, META, orjson.dumps(meta, option=orjson.OPT_INDENT_2), self.path)


def remove_stale_partials(folder_fd: int) -> None:
    """A .partial left by a run that died belongs to no request now (we hold the lock)."""
    with os.scandir(folder_fd) as entries:
        for entry in entries:
            if entry.name.endswith(".partial"):
                unlink_in(folder_fd, entry.name)


def unlink_in(dir_fd: int, name: str) -> None:
    """Remove ``name`` from the folder ``dir_fd``; a missing one is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def why(exc: OSError) -> str:
    """An OSError as words (``Permission denied: 'x'``), not ``[Errno 13] ...``."""
    if isinstance(exc, PlantedLink) or exc.strerror is None:
        return str(exc)
    return f"{exc.strerror}: {exc.filename!r}" if exc.filename else exc.strerror


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
        raise RunDirError(f"cannot use run directory {path}: {why(exc)}") from None
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise RunDirError(
            f"{path} is not an llmbatch run directory (no {META}, but it holds {shown}); "
            "llmbatch never adopts or cleans such a directory: choose another --run-dir"
        )


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (instant, no extra space), else a copy."""
    try:
        os.link(src, dst)
    except FileExistsError:
        os.unlink(dst)
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
