"""Files inside a run directory, opened without ever following a link.

A run directory is written by llmbatch alone. A symbolic link planted where one of its
files belongs (``ln -s ~/.bashrc OUT/text/q1.txt``, ``ln -s /some/file OUT/.lock``) must
never redirect a write: every file and folder inside the directory is opened relative to
the directory's descriptor with ``O_NOFOLLOW``, and a link found there raises PlantedLink,
which names the path. Nothing is truncated or written before that check.

Files that are replaced (answers, run.json, summary.json) are created anew with
``O_EXCL`` and renamed into place, never truncated in place, so a hard link to some other
file is not written through either; the files kept open for appending (results.jsonl,
text.log, the lock) must be regular files with one link. The run directory itself may be
a link: the user named it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "PlantedLink",
    "check_not_link",
    "create_file",
    "create_new",
    "open_dir",
    "open_kept",
    "open_subdir",
    "replace_file",
    "replace_in",
    "write_all",
    "write_new",
]

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class PlantedLink(OSError):
    """A link (or another file type) where a run directory holds a file of its own."""

    def __init__(self, path: Path | str, what: str = "a symbolic link") -> None:
        super().__init__(errno.ELOOP, what, str(path))
        self.what = what

    def __str__(self) -> str:
        return (
            f"{self.filename} is {self.what}, not a file llmbatch made: llmbatch never writes "
            "through a link it did not make; remove it and run again"
        )


def open_dir(path: Path) -> int:
    """A descriptor of the directory ``path`` (followed if a link: the user named it)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_subdir(dir_fd: int, name: str, where: Path, *, create: bool = True) -> int:
    """A descriptor of the folder ``name`` inside ``dir_fd`` (made if missing); never a link."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=dir_fd)
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        raise _planted_or(exc, dir_fd, name, where) from None


def open_kept(dir_fd: int, name: str, flags: int, where: Path) -> int:
    """Open ``name`` to keep appending to it (never truncated here): a regular file with
    one link, created if ``flags`` has O_CREAT."""
    try:
        fd = os.open(name, flags | _NOFOLLOW, 0o644, dir_fd=dir_fd)
    except OSError as exc:
        raise _planted_or(exc, dir_fd, name, where) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "a hard link to another file" if stat.S_ISREG(st.st_mode) else "not a file"
        raise PlantedLink(where / name, what)
    return fd


def create_new(dir_fd: int, name: str, where: Path, flags: int = 0) -> int:
    """Create ``name`` afresh for writing. A file already there (a stale answer, a hard
    link) is unlinked first, never written through; a symbolic link is an error."""
    mode = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | flags
    try:
        return os.open(name, mode, 0o644, dir_fd=dir_fd)
    except FileExistsError:
        check_not_link(dir_fd, name, where)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        try:
            return os.open(name, mode, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            raise _planted_or(exc, dir_fd, name, where) from None


def write_new(dir_fd: int, name: str, data: bytes, where: Path) -> None:
    """``name`` created afresh (create_new) holding ``data``."""
    fd = create_new(dir_fd, name, where)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def check_not_link(dir_fd: int, name: str, where: Path) -> None:
    """Raise PlantedLink when ``name`` is a symbolic link (a missing name is fine)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise PlantedLink(where / name)


def replace_in(
    dir_fd: int, name: str, data: bytes | Iterable[bytes], where: Path, *, sync: bool = True
) -> None:
    """Replace ``name`` with ``data`` (bytes, or pieces written as they come) atomically:
    a temporary file created afresh, fsynced (unless not ``sync``), then renamed over it;
    nothing is ever written through a link."""
    check_not_link(dir_fd, name, where)
    tmp = f".{name}.{os.getpid()}.tmp"
    fd = create_new(dir_fd, tmp, where)
    try:
        try:
            for piece in (data,) if isinstance(data, bytes) else data:
                write_all(fd, piece)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk must not leave a temp file behind
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def create_file(path: Path) -> int:
    """``create_new`` for the file ``path`` (its folder opened for the call)."""
    dir_fd = open_dir(path.parent)
    try:
        return create_new(dir_fd, path.name, path.parent)
    finally:
        os.close(dir_fd)


def replace_file(path: Path, data: bytes, *, sync: bool = True) -> None:
    """``replace_in`` for the file ``path`` (its folder opened for the call)."""
    dir_fd = open_dir(path.parent)
    try:
        replace_in(dir_fd, path.name, data, path.parent, sync=sync)
    finally:
        os.close(dir_fd)


def _planted_or(exc: OSError, dir_fd: int, name: str, where: Path) -> OSError:
    """PlantedLink when ``exc`` came from a link (or a non-folder) at ``name``; else ``exc``
    with the whole path as its file name."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            return PlantedLink(where / name)
        if st is not None and exc.errno == errno.ENOTDIR:
            return PlantedLink(where / name, "not a folder")
    return OSError(exc.errno, exc.strerror, str(where / name))


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
