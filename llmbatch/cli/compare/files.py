"""The compare directory and the prompts a compare sends."""

from __future__ import annotations

import time
from pathlib import Path

from llmbatch.errors import InputError, RunDirError

__all__ = ["PROMPTS_FILE", "limit_prompts", "make_compare_dir"]

PROMPTS_FILE = "prompts.jsonl"


def make_compare_dir(out_dir: Path, prompts: Path, out: Path | None) -> Path:
    """Create the compare directory: ``out``, or ``<out_dir>/compare-<stem>-<timestamp>``.

    A non-empty directory is refused: its runs would resume instead of being measured.
    """
    target = out or out_dir / f"compare-{prompts.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        if target.exists() and any(target.iterdir()):
            raise RunDirError(f"{target}: compare directory exists and is not empty")
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"{target}: cannot create: {exc.strerror}") from None
    return target


def limit_prompts(prompts: Path, limit: int, dest: Path) -> Path:
    """Copy the first ``limit`` non-blank lines of ``prompts`` to ``dest``."""
    n = 0
    try:
        with open(prompts, "rb") as src, open(dest, "wb") as dst:
            for raw in src:
                if n >= limit:
                    break
                if raw.strip():
                    dst.write(raw if raw.endswith(b"\n") else raw + b"\n")
                    n += 1
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=str(prompts)) from None
    return dest
