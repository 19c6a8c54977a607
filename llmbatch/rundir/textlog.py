"""The ``log`` text layout: every answer in one append-only file, no file per request.

Creating a file costs 20 µs on a quiet ext4 and up to ~900 µs after mass deletions
(bench/RESULTS.md); with one file per request that cost was the largest part of a run.
This layout writes no file per request::

    text.log          complete answers (and kept partial ones), each after a header line:
                      {"custom_id":"q1","bytes":11,"complete":true}\\n<11 bytes>\\n
                      The result record's llmbatch.text_offset / text_bytes point at the
                      text itself, so ``text.log[offset:offset + bytes]`` is the answer.
    text.partial.log  the live view of answers still streaming: each tick, a frame
                      {"custom_id":"q1","bytes":n}\\n<n bytes>\\n per answer that grew;
                      {"custom_id":"q1","restart":true} when a retry starts it over and
                      {"custom_id":"q1","done":true} when it ended. Emptied when a run
                      starts: it shows that run's requests only.

Answers that begin and end within one tick never reach text.partial.log. Writes are
queued and made once per tick by the run directory, text.log before results.jsonl, so
every record points at bytes already written; a crash loses at most one tick, and the
next run cuts text.log back to the end of the last answer a record points to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from llmbatch.rundir.nofollow import create_new, open_kept

__all__ = [
    "PARTIAL_LOG",
    "REASONING_LOG",
    "REASONING_PARTIAL_LOG",
    "TEXT_LOG",
    "TextLog",
    "copy_logged_answer",
    "read_span",
]

TEXT_LOG = "text.log"
PARTIAL_LOG = "text.partial.log"
# Reasoning (thinking blocks, reasoning_content, ...) in the same two-file shape, apart
# from the answers: records point at it with reasoning_offset / reasoning_bytes.
REASONING_LOG = "reasoning.log"
REASONING_PARTIAL_LOG = "reasoning.partial.log"


class TextLog:
    """The two files of the log layout and the bytes queued for them (``name`` and
    ``partial_name``: text.log and text.partial.log, or the reasoning pair)."""

    def __init__(self, path: Path, name: str = TEXT_LOG, partial_name: str = PARTIAL_LOG) -> None:
        self.path = path
        self.name = name
        self.partial_name = partial_name
        self._log_fd = -1
        self._partial_fd = -1
        self._log_end = 0  # size of text.log once everything queued is written
        self._log_buf: list[bytes] = []
        self._partial_buf: list[bytes] = []

    def open(self, committed_end: int, dir_fd: int) -> None:
        """Open both files in the run directory ``dir_fd`` (never through a link: see
        nofollow.py); cut the log back to ``committed_end`` (what records use)."""
        fd = open_kept(dir_fd, self.name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, self.path)
        try:
            if os.fstat(fd).st_size > committed_end:
                os.ftruncate(fd, committed_end)  # answers of requests that have no record
            self._log_end = os.fstat(fd).st_size
            # Emptied at each start: made afresh, so nothing else is ever truncated.
            self._partial_fd = create_new(dir_fd, self.partial_name, self.path, os.O_APPEND)
        except OSError:
            os.close(fd)
            raise
        self._log_fd = fd

    def grew(self, record_id: str, data: bytes) -> None:
        """Queue a live frame: ``data`` was added to ``record_id``'s answer."""
        head = orjson.dumps({"custom_id": record_id, "bytes": len(data)})
        self._partial_buf += (head, b"\n", data, b"\n")

    def mark(self, record_id: str, what: str) -> None:
        """Queue a live marker frame: ``restart`` or ``done``."""
        self._partial_buf += (orjson.dumps({"custom_id": record_id, what: True}), b"\n")

    def answer(self, record_id: str, data: bytes, *, complete: bool) -> tuple[int, int]:
        """Queue one answer for text.log; (offset, length) of its text in the file."""
        head = orjson.dumps({"custom_id": record_id, "bytes": len(data), "complete": complete})
        offset = self._log_end + len(head) + 1
        self._log_buf += (head, b"\n", data, b"\n")
        self._log_end = offset + len(data) + 1
        return offset, len(data)

    def take(self) -> tuple[bytes, bytes]:
        """What to write now: (for text.log, for text.partial.log)."""
        log, partial = b"".join(self._log_buf), b"".join(self._partial_buf)
        self._log_buf = []
        self._partial_buf = []
        return log, partial

    @property
    def log_fd(self) -> int:
        """The descriptor of text.log (-1 once closed)."""
        return self._log_fd

    @property
    def partial_fd(self) -> int:
        """The descriptor of text.partial.log (-1 once closed)."""
        return self._partial_fd

    def detach(self) -> tuple[int, int]:
        """Hand both descriptors over for closing; (text.log, text.partial.log)."""
        fds = (self._log_fd, self._partial_fd)
        self._log_fd = self._partial_fd = -1
        return fds


def read_span(path: Path, offset: int, length: int) -> bytes:
    """``length`` bytes of the file at ``path`` from ``offset`` (one answer of a text log)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def copy_logged_answer(
    rec: dict[str, Any], src_dir: Path, dst: BinaryIO, *, part: str = "text"
) -> dict[str, Any]:
    """``rec`` with its text.log answer copied from ``src_dir`` to the end of ``dst``
    (an open text.log), offsets updated; any other record as it is (``llmbatch merge``).
    ``part="reasoning"``: its reasoning.log span instead, into an open reasoning.log."""
    log_name = TEXT_LOG if part == "text" else REASONING_LOG
    lb = rec.get("llmbatch")
    if not isinstance(lb, dict) or lb.get(f"{part}_file") != log_name:
        return rec
    offset, length = lb.get(f"{part}_offset"), lb.get(f"{part}_bytes")
    if not isinstance(offset, int) or not isinstance(length, int):
        return rec
    data = read_span(src_dir / log_name, offset, length)
    head = orjson.dumps(
        {
            "custom_id": rec.get("custom_id"),
            "bytes": len(data),
            "complete": rec.get("error") is None,
        }
    )
    dst.write(head + b"\n")
    new_offset = dst.tell()
    dst.write(data + b"\n")
    return {**rec, "llmbatch": {**lb, f"{part}_offset": new_offset, f"{part}_bytes": len(data)}}
