"""Part directories: one per worker and session, folded into the run directory by the
driver as their records are committed (Consolidator)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from llmbatch.config.model import RunConfig
from llmbatch.errors import RunDirError
from llmbatch.rundir.layout import (
    META,
    PART_TEXT_LINK,
    RESULTS,
    TEXT_DIR,
    is_own_text_path,
    link_or_copy,
)
from llmbatch.rundir.nofollow import PlantedLink
from llmbatch.rundir.results import ResumeIndex
from llmbatch.rundir.summary import SummaryBuilder
from llmbatch.rundir.textlog import REASONING_LOG, TEXT_LOG, TextLog
from llmbatch.rundir.writer import RunDir

__all__ = [
    "Consolidator",
    "LOCK_WAIT_S",
    "PARTS_DIR",
    "Part",
    "driver_text_layout",
    "make_part",
    "make_parts_dir",
    "wait_for_lock",
]


PARTS_DIR = "parts"
LOCK_WAIT_S = 60.0  # how long a re-run waits for a dead run's workers to let go


# -- folding the workers' records into the run directory ---------------------------------------
@dataclass
class Part:
    path: Path
    worker: str
    offset: int = 0
    records: int = 0
    # Its text/ is the run's own text/ (a symlink): the text is in place already. Parts
    # left by older llmbatch versions have their own text/, linked over when folded.
    # (With --text-layout log a part has its own text.log: answers are copied over.)
    shared_text: bool = True
    # Its text.log (and reasoning.log), opened for the first answer copied from it.
    _log_fds: dict[str, int] = field(default_factory=dict)

    def read_logged(self, offset: int, length: int, name: str = TEXT_LOG) -> bytes:
        """``length`` bytes of this part's text.log (or ``name``) from ``offset``."""
        fd = self._log_fds.get(name)
        if fd is None:
            fd = self._log_fds[name] = os.open(self.path / name, os.O_RDONLY)
        return os.pread(fd, length, offset)

    def close(self) -> None:
        """Close its logs (before the part is removed)."""
        for fd in self._log_fds.values():
            os.close(fd)
        self._log_fds.clear()


def make_part(path: Path, meta: dict[str, Any], *, text_layout: str = "files") -> None:
    """A part directory whose ``text/`` is the run directory's ``text/``.

    The worker's batch writes its text straight into the run's text/ (through the
    link), so folding a record costs no file operation per text file; its run.json is
    written here so the batch adopts the directory (it refuses unknown ones). With the
    log layout the part keeps its own text.log (one writer per file), and the driver
    copies each answer into the run's text.log as it folds the record.
    """
    path.mkdir(parents=True)
    if text_layout == "files":
        (path.parent.parent / TEXT_DIR).mkdir(exist_ok=True)
        (path / TEXT_DIR).symlink_to(PART_TEXT_LINK, target_is_directory=True)
    (path / META).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))


def driver_text_layout(cfg: RunConfig, run_dir: Path) -> str:
    """The run directory's text layout for the driver: the configured one, or ``log``
    when a part left behind by an earlier run has a text.log whose answers need one."""
    if cfg.text_layout == "log" or not cfg.text_files:
        return cfg.text_layout
    parts = run_dir / PARTS_DIR
    if parts.is_dir() and any((p / TEXT_LOG).is_file() for p in parts.iterdir()):
        return "log"
    return cfg.text_layout


@dataclass
class Consolidator:
    """Appends each part's committed records to the top-level results.jsonl, once per id."""

    run_dir: Path
    rundir: RunDir
    index: ResumeIndex
    skip_failed: bool = False
    summary: SummaryBuilder = field(default_factory=SummaryBuilder)
    parts: list[Part] = field(default_factory=list)
    added: int = 0
    added_failed: int = 0
    per_worker: dict[str, int] = field(default_factory=dict)
    placement: dict[str, str] = field(default_factory=dict)  # worker -> Ray node id
    # Told of every id a live part recorded (the driver's Feed forgets it then).
    recorded: Callable[[str, str], None] | None = None
    lost_workers: dict[str, str] = field(default_factory=dict)  # worker -> why

    def absorb(self, part: Part, *, leftover: bool = False) -> int:
        """Fold the complete lines ``part`` gained since the last call; returns how many.

        A failed record of a part left by an earlier run is dropped under
        ``skip_failed`` (--retry-failed: its prompt runs again)."""
        try:
            fh = open(part.path / RESULTS, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return 0
        with fh:
            fh.seek(part.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        if end == 0:
            return 0
        part.offset += end
        n = 0
        pos = 0
        while pos < end:
            nl = data.index(b"\n", pos) + 1
            raw = data[pos:nl]
            pos = nl
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # damaged: its request has no record and runs again
            rid = rec.get("custom_id") if isinstance(rec, dict) else None
            if not isinstance(rid, str):
                continue
            if self.recorded is not None and not leftover:
                self.recorded(part.worker, rid)
            if rid in self.index:
                continue
            failed = rec.get("error") is not None
            if failed and self.skip_failed and leftover:
                continue
            lb = rec.get("llmbatch")
            lb = lb if isinstance(lb, dict) else {}
            if lb.get("text_file") == TEXT_LOG or lb.get("reasoning_file") == REASONING_LOG:
                raw = self._move_logged(part, rid, rec, lb, raw, complete=not failed)
            elif not part.shared_text:
                for key in ("reasoning_file", "text_file"):
                    rel = lb.get(key)
                    if is_own_text_path(rel) and (part.path / rel).is_file():
                        link_or_copy(part.path / rel, self.run_dir / rel)  # text before its line
            # The worker wrote the line in the final schema: it goes in as it is.
            self.rundir.add_result_line(raw, ok=not failed)
            self.summary.add(rec)
            self.index.add(rid)
            self.added += 1
            self.added_failed += failed
            part.records += 1
            self.per_worker[part.worker] = self.per_worker.get(part.worker, 0) + 1
            n += 1
        return n

    def _move_logged(
        self,
        part: Part,
        rid: str,
        rec: dict[str, Any],
        lb: dict[str, Any],
        raw: bytes,
        *,
        complete: bool,
    ) -> bytes:
        """The line of a record whose answer is in ``part``'s text.log, that answer queued
        for the run's text.log (written before the line, as in one process), its offset
        pointing there; its reasoning likewise from reasoning.log."""
        moved = dict(lb)
        logs: tuple[tuple[str, TextLog | None], ...] = (
            ("reasoning", self.rundir.text.reasoning_log),
            ("text", self.rundir.text.text_log),
        )
        for prefix, log in logs:
            offset, length = lb.get(f"{prefix}_offset"), lb.get(f"{prefix}_bytes")
            if log is None or not isinstance(offset, int) or not isinstance(length, int):
                continue
            data = part.read_logged(offset, length, log.name)
            moved[f"{prefix}_offset"], moved[f"{prefix}_bytes"] = log.answer(
                rid, data, complete=complete
            )
        if moved == lb:
            return raw
        return orjson.dumps({**rec, "llmbatch": moved}) + b"\n"

    async def absorb_all(self) -> int:
        """Fold every part's new lines and write them out."""
        n = sum(self.absorb(p) for p in self.parts)
        if n:
            await self.rundir.flush()
        return n

    async def absorb_leftovers(self) -> int:
        """Fold and remove the parts a killed run left (waiting for their locks)."""
        root = self.run_dir / PARTS_DIR
        if not root.is_dir():
            return 0
        n = 0
        for token in root.glob("*.token"):
            token.unlink(missing_ok=True)
        for path in sorted(p for p in root.iterdir() if p.is_dir()):
            fd = await wait_for_lock(path)
            try:
                shared = (path / TEXT_DIR).is_symlink()
                part = Part(path, worker=f"earlier:{path.name}", shared_text=shared)
                n += self.absorb(part, leftover=True)
                await self.rundir.flush()
                part.close()
            finally:
                if fd >= 0:
                    os.close(fd)
            shutil.rmtree(path, ignore_errors=True)
        return n

    async def finish(self) -> None:
        """Fold what is left, then remove the parts (every record is in the top level)."""
        await self.absorb_all()
        for p in self.parts:
            p.close()
            shutil.rmtree(p.path, ignore_errors=True)
            p.path.with_name(p.path.name + ".token").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (self.run_dir / PARTS_DIR).rmdir()


def make_parts_dir(run_dir: Path) -> None:
    """The run's parts/ folder; a link planted there is refused (never followed)."""
    parts = run_dir / PARTS_DIR
    if parts.is_symlink():
        raise RunDirError(str(PlantedLink(parts)))
    parts.mkdir(exist_ok=True)


async def wait_for_lock(path: Path) -> int:
    """The part's lock, once no process holds it (-1 when it has no lock file)."""
    try:
        fd = os.open(path / ".lock", os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return -1
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise RunDirError(
                    f"{path}: a worker of an earlier run still writes it; wait, then run again"
                ) from None
            await asyncio.sleep(0.2)  # a killed driver's actors are being torn down
