"""``llmbatch merge DIR...``: join the finished run directories of ``--shard I/N`` runs.

The result is one ordinary run directory, as if the job had run unsharded: every id
once in results.jsonl, its text file under text/, a summary.json recomputed from the
records, and a run.json of the unsharded job (so ``llmbatch run`` on it resumes with
nothing left to do, and ``report`` and ``export`` work on it).

Before anything is written, the shards are checked: each is a shard run directory no
run holds (its lock is free), all belong to the same job (prompts file, provider,
model, N), every shard 0..N-1 is there exactly once, no record sits in a shard its id
does not hash into, no id has two records, and every prompt of the file has a record
(a shard that stopped early is not finished). The merge is built in a hidden sibling
directory and renamed into place, so an interrupted merge leaves nothing half-made.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llmbatch.errors import InputError, RunDirError
from llmbatch.rundir.identity import IDENTITY_KEYS
from llmbatch.rundir.idset import IdSet
from llmbatch.rundir.layout import (
    FAILED_DIR,
    LOCK,
    META,
    RESULTS,
    SUMMARY,
    TEXT_DIR,
    is_own_text_path,
    link_or_copy,
)
from llmbatch.rundir.reader import iter_records
from llmbatch.rundir.results import iter_result_lines
from llmbatch.rundir.shard import Shard, item_id, parse_shard, shard_of
from llmbatch.rundir.summary import summary_from_results
from llmbatch.rundir.textlog import REASONING_LOG, TEXT_LOG, copy_logged_answer

__all__ = ["MergeResult", "default_merge_dir", "merge_shards"]

# What makes shards one job: the whole run identity (target, model, params...) but the shard.
JOB_KEYS = tuple(key for key in IDENTITY_KEYS if key != "shard")


@dataclass(frozen=True)
class MergeResult:
    """What a merge produced: where, from which shards, how many records."""

    out_dir: Path
    shards: tuple[Path, ...]
    records: int
    succeeded: int
    failed: int


@dataclass
class _ShardDir:
    path: Path
    meta: dict[str, Any]
    shard: Shard


def default_merge_dir(dirs: Sequence[Path]) -> Path:
    """The unsharded run's directory: the first shard's name without ``-shardIofN``."""
    first = dirs[0]
    meta = _read_meta(first)
    shard = _meta_shard(first, meta)
    suffix = f"-{shard.suffix}"
    if not first.name.endswith(suffix) or first.name == suffix:
        raise RunDirError(f"{first}: name does not end in {suffix}; give the merged run's --out")
    return first.with_name(first.name[: -len(suffix)])


def merge_shards(
    dirs: Sequence[Path], out_dir: Path, *, prompts: Path | None = None
) -> MergeResult:
    """Check that ``dirs`` are the complete, finished shards of one job; merge them.

    ``prompts`` overrides the prompts file named in run.json (e.g. another mount point).
    Raises RunDirError naming the directory at fault; nothing is written then.
    """
    if not dirs:
        raise RunDirError("merge: give the shard run directories")
    shards = [_open_shard(d) for d in dirs]
    _check_same_job(shards)
    locks: list[int] = []
    try:
        for s in shards:
            locks.append(_hold_lock(s.path))
        seen = IdSet()
        for s in shards:
            _check_records(s, seen)
        prompts_path = prompts if prompts is not None else Path(str(shards[0].meta["prompts"]))
        _check_finished(shards, prompts_path, seen)
        return _write_merge(shards, out_dir)
    finally:
        for fd in locks:
            os.close(fd)


# -- checks -------------------------------------------------------------------------------
def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory")
    try:
        meta = orjson.loads((path / META).read_bytes())
    except FileNotFoundError:
        raise RunDirError(f"{path}: not a run directory (no {META})") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise RunDirError(f"{path}/{META}: cannot read: {exc}") from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{path}/{META}: not an llmbatch run description")
    return meta


def _meta_shard(path: Path, meta: dict[str, Any]) -> Shard:
    spec = meta.get("shard")
    if not isinstance(spec, str):
        raise RunDirError(f"{path}: not a shard run (run.json has no shard; run with --shard I/N)")
    try:
        return parse_shard(spec)
    except Exception:
        raise RunDirError(f"{path}/{META}: bad shard {spec!r}") from None


def _open_shard(path: Path) -> _ShardDir:
    meta = _read_meta(path)
    shard = _meta_shard(path, meta)
    if not (path / RESULTS).is_file():
        raise RunDirError(f"{path}: shard {shard.spec} has no {RESULTS} (it never ran)")
    return _ShardDir(path=path, meta=meta, shard=shard)


def _check_same_job(shards: list[_ShardDir]) -> None:
    first = shards[0]
    for s in shards[1:]:
        for key in JOB_KEYS:
            if s.meta.get(key) != first.meta.get(key):
                raise RunDirError(
                    f"{s.path}: belongs to another job ({key} {s.meta.get(key)!r}, "
                    f"but {first.path} has {first.meta.get(key)!r})"
                )
        if s.shard.count != first.shard.count:
            raise RunDirError(
                f"{s.path}: is shard {s.shard.spec}, but {first.path} is shard "
                f"{first.shard.spec}: the shards of one job share N"
            )
    by_index: dict[int, Path] = {}
    for s in shards:
        other = by_index.get(s.shard.index)
        if other is not None:
            raise RunDirError(f"{s.path}: {other} is shard {s.shard.spec} too (overlap)")
        by_index[s.shard.index] = s.path
    count = first.shard.count
    missing = [f"{i}/{count}" for i in range(count) if i not in by_index]
    if missing:
        raise RunDirError(f"merge: shard {', '.join(missing)} missing (given: {len(shards)})")


def _hold_lock(path: Path) -> int:
    """Take the shard's lock so that no run writes it while it is merged."""
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise RunDirError(f"{path}: cannot open its lock: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunDirError(f"{path}: a run is still writing it (pid {other}); wait for it") from None
    return fd


def _check_records(s: _ShardDir, seen: IdSet) -> None:
    for _, rec in iter_result_lines(s.path / RESULTS):
        rid = rec.get("custom_id")
        if not isinstance(rid, str):
            raise RunDirError(f"{s.path}/{RESULTS}: a record without custom_id")
        if shard_of(rid, s.shard.count) != s.shard.index:
            raise RunDirError(
                f"{s.path}: record {rid!r} belongs to shard "
                f"{shard_of(rid, s.shard.count)}/{s.shard.count}, not {s.shard.spec} (overlap)"
            )
        if not seen.add(rid):
            raise RunDirError(f"{s.path}: record {rid!r} appears twice (overlap)")


def _check_finished(shards: list[_ShardDir], prompts: Path, done: IdSet) -> None:
    count = shards[0].shard.count
    paths = {s.shard.index: s.path for s in shards}
    missing = [0] * count
    example: list[str | None] = [None] * count
    try:
        for item in iter_records(prompts):
            rid = item_id(item)
            if rid not in done:
                i = shard_of(rid, count)
                missing[i] += 1
                example[i] = example[i] or rid
    except InputError as exc:
        raise RunDirError(
            f"merge: cannot read the prompts file to check the shards are finished ({exc}); "
            "pass --prompts PATH"
        ) from None
    for i, n in enumerate(missing):
        if n:
            raise RunDirError(
                f"{paths[i]}: shard {i}/{count} is not finished: {n} prompts have no record "
                f"(e.g. {example[i]!r}); run that shard again, then merge"
            )


# -- writing ------------------------------------------------------------------------------
KEPT_PARTIALS = f"{TEXT_DIR}/{FAILED_DIR}/"


def _write_merge(shards: list[_ShardDir], out_dir: Path) -> MergeResult:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RunDirError(f"{out_dir}: exists and is not empty; give another --run-dir")
    tmp = out_dir.with_name(f".{out_dir.name}.merging-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if tmp.is_symlink():
            tmp.unlink()  # planted there (rmtree leaves links alone): never followed
        tmp.mkdir()
        (tmp / TEXT_DIR).mkdir()
        records = succeeded = 0
        with (
            open(tmp / RESULTS, "wb") as out,
            open(tmp / TEXT_LOG, "wb") as text_log,
            open(tmp / REASONING_LOG, "wb") as reasoning_log,
        ):
            for s in sorted(shards, key=lambda x: x.shard.index):
                for raw, rec in iter_result_lines(s.path / RESULTS):
                    lb = rec.get("llmbatch") or {}
                    rel, thought = lb.get("text_file"), lb.get("reasoning_file")
                    if rel == TEXT_LOG or thought == REASONING_LOG:
                        # --text-layout log: the answer (and reasoning) move into ours
                        rec = copy_logged_answer(rec, s.path, reasoning_log, part="reasoning")
                        rec = copy_logged_answer(rec, s.path, text_log)
                        raw = orjson.dumps(rec) + b"\n"
                    else:
                        for linked in (thought, rel):
                            if is_own_text_path(linked) and (s.path / linked).is_file():
                                if linked.startswith(KEPT_PARTIALS):  # text/failed/ when needed
                                    (tmp / linked).parent.mkdir(exist_ok=True)
                                link_or_copy(s.path / linked, tmp / linked)
                    out.write(raw)
                    records += 1
                    succeeded += rec.get("error") is None
            for fh in (text_log, reasoning_log, out):
                fh.flush()
                os.fsync(fh.fileno())
        for name in (TEXT_LOG, REASONING_LOG):
            if not (tmp / name).stat().st_size:
                (tmp / name).unlink()
        first = shards[0].meta
        meta = {key: first.get(key) for key in JOB_KEYS}
        meta["merged_from"] = [str(s.path) for s in shards]
        (tmp / META).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        summary = summary_from_results(tmp / RESULTS)
        summary["merged_from"] = meta["merged_from"]
        (tmp / SUMMARY).write_bytes(
            orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    except OSError as exc:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise RunDirError(f"{out_dir}: cannot write the merge: {exc}") from None
    return MergeResult(
        out_dir=out_dir,
        shards=tuple(s.path for s in shards),
        records=records,
        succeeded=succeeded,
        failed=records - succeeded,
    )
