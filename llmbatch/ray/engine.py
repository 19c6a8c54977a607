"""``--engine ray``: one batch over a Ray cluster, with the results of one process.

Layout of a run directory written by this engine (the driver's view)::

    run.json, .lock, results.jsonl, text/, summary.json   as for one process
    parts/<session>-w<k>/   one run directory per worker actor and session, whose
                            text/ is a link to the run's text/

The pieces:

- **Driver** (the ``llmbatch run`` process): holds the run directory's lock, reads the
  prompts file once and in order (so ids, automatic ids and bad lines are exactly a
  single-process run's), skips ids already done, and pushes the rest in small chunks to
  the workers (``ray_feed.Feed``, which remembers what each worker holds, so a dead
  worker's prompts go to the others); a worker's bounded queue pushes back, so no
  process holds more than O(concurrency) prompts. It folds the workers' records into the
  run directory as they are committed (``_Consolidator``: each line appended as the
  worker wrote it) and writes summary.json with cluster-wide figures and per-worker
  counts.
- **Workers** (``WorkerActor``, one per node by default, spread): each runs one
  ``llmbatch.Client`` with its share of ``--concurrency`` and one ``Client.batch`` into
  its own part directory, so text streams into the run's ``text/<id>.partial`` (through
  the part's link) and every record is committed by the library's own protocol (text
  renamed to ``.txt``, then the line in the part's results.jsonl).
- **Rate budget** (``GovernorActor``): one :class:`~llmbatch.ray.lease.LeaseGovernor` for the
  cluster; every worker's client paces through a :class:`~llmbatch.ray.lease.LeasedPacer`,
  and with ``--concurrency auto`` takes its share of the cluster's one AIMD limit.

Crash safety follows from the commit protocol: a record exists once its line is in a
part's results.jsonl, and its text is complete in ``text/`` before that; the driver
appends the line to the top-level results.jsonl, and a part directory is removed only
when all its records are in the top level. A re-run after the driver was killed first
folds every part left behind (each id once), then sends what has no record.

Ray is imported only here, and only when this engine runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from llmbatch.config.load import RunConfig, resolve_api_key
from llmbatch.engine import StopReason
from llmbatch.errors import ConfigError, InputError, RunDirError
from llmbatch.metrics import SLO
from llmbatch.pacing import governor_for
from llmbatch.ray.feed import Feed
from llmbatch.ray.lease import (
    ClusterConcurrency,
    LeasedConcurrency,
    LeasedPacer,
    LeaseGovernor,
    SyncReply,
    SyncRequest,
)
from llmbatch.records import PromptRecord
from llmbatch.rundir.identity import run_identity
from llmbatch.rundir.reader import open_prompts
from llmbatch.rundir.summary import SummaryBuilder
from llmbatch.rundir.textlog import TEXT_LOG
from llmbatch.rundir.writer import (
    META,
    RESULTS,
    SUMMARY,
    TEXT_DIR,
    ResumeIndex,
    RunDir,
    iter_result_lines,
    link_or_copy,
)

__all__ = ["GovernorActor", "RayRunOutput", "WorkerActor", "execute_ray_run"]

PARTS_DIR = "parts"
CHUNK_MAX = 64
_LOCK_WAIT_S = 60.0  # how long a re-run waits for a dead run's workers to let go


@dataclass
class RayRunOutput:
    """What the CLI needs after a Ray run (the summary is cluster-wide)."""

    summary: dict[str, Any]
    run_dir: Path
    stop_reason: str | None
    abort_message: str | None
    pending_left: bool
    failed: int
    signal_received: int | None = None


# -- the rate budget actor --------------------------------------------------------------
def has_limits(cfg: RunConfig) -> bool:
    """True when any rate limit is configured (then every request waits for a grant)."""
    lim = cfg.provider.limits
    return any(v is not None for v in (lim.rpm, lim.input_tpm, lim.output_tpm, lim.tpm))


class GovernorActor:
    """The Ray actor holding the cluster's LeaseGovernor (its calls run one at a time)."""

    def __init__(self, cfg: RunConfig, workers: list[str] | None = None) -> None:
        concurrency = None
        if cfg.adaptive:  # --concurrency auto: one controller for the cluster
            concurrency = ClusterConcurrency(
                workers or [],
                initial=min(cfg.concurrency, cfg.max_concurrency),
                cap=cfg.max_concurrency,
            )
        self._lease = LeaseGovernor(governor_for(cfg), concurrency=concurrency)
        self._cpu0_s = time.process_time()

    def forget(self, worker: str) -> None:
        """``worker`` is gone: the others share the cluster's concurrency."""
        self._lease.forget(worker)

    def sync(self, req: SyncRequest) -> SyncReply:
        """One worker's batch of tickets and news (see lease.py)."""
        return self._lease.sync(req)

    def snapshot(self) -> dict[str, Any]:
        """Limits, balances and grants, and this actor's CPU time, for summary.json."""
        return {**self._lease.snapshot(), "cpu_s": round(time.process_time() - self._cpu0_s, 4)}


# -- the worker actor -----------------------------------------------------------------------
# Items travel as PromptRecords; a bad line as this tuple (exceptions with keyword-only
# arguments do not pickle), turned back into the InputError the batch records.
_BadLine = tuple[str, str, str, int | None]


def _encode(item: PromptRecord | InputError) -> PromptRecord | _BadLine:
    if isinstance(item, InputError):
        return ("input_error", item.reason, item.path, item.line_no)
    return item


def _decode(item: PromptRecord | _BadLine) -> PromptRecord | InputError:
    if isinstance(item, PromptRecord):
        return item
    _, reason, path, line_no = item
    return InputError(reason, path=path, line_no=line_no)


# A chunk travels as one JSON blob: Ray then pickles one bytes object instead of each
# record (cloudpickle's per-object work was most of the driver's cost of sending).
# What JSON cannot hold (it came from a JSON line, so hardly anything) goes pickled.
Packed = bytes | list[PromptRecord | _BadLine]


def _pack(items: list[PromptRecord | InputError]) -> Packed:
    rows: list[list[Any]] = []
    for item in items:
        if isinstance(item, InputError):
            rows.append([1, item.reason, item.path, item.line_no])
        else:
            rows.append([0, item.id, item.line_no, item.shape, item.body, item.endpoint])
    try:
        return orjson.dumps(rows)
    except (TypeError, orjson.JSONEncodeError):
        return [_encode(item) for item in items]


def _unpack(packed: Packed) -> list[PromptRecord | _BadLine]:
    if not isinstance(packed, bytes):
        return packed
    out: list[PromptRecord | _BadLine] = []
    for row in orjson.loads(packed):
        if row[0] == 1:
            out.append(("input_error", row[1], row[2], row[3]))
        else:
            out.append(PromptRecord(row[1], row[2], row[3], row[4], row[5]))
    return out


class _WorkerBatch:
    """A worker's batch and its feed; everything here runs on the worker's own loop."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        api_key: str | None,
        name: str,
        part_dir: Path,
        meta: dict[str, Any],
        governor: Any,
    ) -> None:
        self.cfg = cfg
        self.api_key = api_key
        self.name = name
        self.part_dir = part_dir
        self.meta = meta
        self.governor = governor
        self.queue: asyncio.Queue[PromptRecord | _BadLine | None] = asyncio.Queue(
            maxsize=max(2, cfg.max_concurrency if cfg.adaptive else cfg.concurrency)
        )
        self.received = 0
        self.batch: Any = None
        self.live: Any = None  # the engine's live counts, once the batch runs
        # A stop that came before the batch had started: applied once it has.
        self.stop_requested: tuple[float | None] | None = None
        self.batch_cpu_s = 0.0  # this process's CPU while the batch ran (client started)
        self.batch_threads_cpu_s: dict[str, float] = {}  # the same by thread

    async def put(self, items: list[PromptRecord | _BadLine | None]) -> None:
        """Queue ``items`` (None closes the feed), waiting for room."""
        for item in items:
            await self.queue.put(item)
            self.received += item is not None

    def stop(self, grace_s: float | None) -> None:
        """Take no more prompts; let requests in flight finish within ``grace_s``."""
        self.stop_requested = (grace_s,)
        if self.batch is not None:
            self.batch.stop(grace_s=grace_s)

    async def _feed(self) -> Any:
        while (item := await self.queue.get()) is not None:
            yield _decode(item)

    async def run(self) -> tuple[str | None, str | None]:
        """Run the batch to its end; (stop reason, abort message)."""
        from llmbatch.client import Client

        token = self.part_dir.with_name(self.part_dir.name + ".token")
        try:
            seen = token.read_text()
        except OSError:
            seen = None
        if seen != self.name:
            raise RunDirError(
                f"{self.part_dir.parent.parent}: not visible from worker {self.name} "
                f"(pid {os.getpid()}); the run directory must be on a file system every "
                "worker node shares, at the same path"
            )
        cfg = self.cfg
        governor = self.governor
        if self.stop_requested is not None:
            return None, None  # stopped before it began: its prompts have no record

        async def transport(req: SyncRequest) -> SyncReply:
            reply: SyncReply = await governor.sync.remote(req)
            return reply

        # The Client's pacer seam: this client paces by the cluster's one budget, and
        # with --concurrency auto takes its share of the cluster's one limit.
        conc = LeasedConcurrency(cfg.concurrency) if cfg.adaptive else None
        pacer = LeasedPacer(transport, worker=self.name, limited=has_limits(cfg), concurrency=conc)
        client = Client.from_run_config(cfg, api_key=self.api_key, pacer=pacer, concurrency=conc)
        async with client:
            self.live = client.engine.live
            batch = client.batch(
                self._feed(),
                self.part_dir,
                text_files=cfg.text_files,
                text_layout=cfg.text_layout,
                keep_partial=cfg.keep_partial,
                meta=self.meta,
            )
            self.batch = batch
            try:
                async with batch:
                    await batch.start()
                    cpu0_s = time.process_time()
                    threads0 = _threads_cpu_s()
                    if self.stop_requested is not None:  # while the client was starting
                        batch.stop(grace_s=self.stop_requested[0])
                    # wait(), not iterating: the counts come from the batch's live metrics,
                    # so no Result is built per record (as the CLI's one-process run).
                    await batch.wait()
                self.batch_cpu_s = time.process_time() - cpu0_s
                threads1 = _threads_cpu_s()
                self.batch_threads_cpu_s = {
                    k: round(v - threads0.get(k, 0.0), 3) for k, v in threads1.items()
                }
            finally:
                await pacer.aclose()
            end = batch.end
        if end is None:
            return None, None
        return end.stop_reason, end.abort_message


class WorkerActor:
    """One Ray worker: an llmbatch Client with its share of the concurrency, one batch
    into its own part directory, fed by the driver through ``push``.

    The batch runs on an event loop of this actor's own, in a thread of its own: uvloop
    when the driver runs on it (``loop="uvloop"``, as ``llmbatch run`` picks it), asyncio's
    with ``LLMBATCH_LOOP=asyncio`` (Ray's loop for async actors follows its own
    ``RAY_USE_UVLOOP`` instead). So this class has no ``async`` method (Ray would make it
    an async actor): each Ray call runs in a thread of Ray's and hands its work to that
    loop. An async actor's calls cross threads the same way (Ray receives them on a
    thread of its own); measured, Ray's threads take ~1% of a worker's CPU during its
    batch (``batch_threads_cpu_s``), so the thread costs nothing worth removing.
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        api_key: str | None,
        name: str,
        part_dir: str,
        meta: dict[str, Any],
        governor: Any,
        loop: str = "asyncio",
    ) -> None:
        self._node = _node_id()
        self._work = _WorkerBatch(
            cfg,
            api_key=api_key,
            name=name,
            part_dir=Path(part_dir),
            meta=meta,
            governor=governor,
        )
        self._loop = _new_loop(loop)
        threading.Thread(
            target=self._loop.run_forever, name=f"llmbatch-{name}", daemon=True
        ).start()

    def _call(self, coro: Any) -> Any:
        """Run ``coro`` on the batch's loop; its result (this Ray thread waits)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def push(self, packed: Packed) -> int:
        """Queue a packed chunk; returns once all are queued (the driver's back-pressure)."""
        items: list[PromptRecord | _BadLine | None] = list(_unpack(packed))
        self._call(self._work.put(items))
        return len(items)

    def close_feed(self) -> None:
        """No more prompts: the batch ends once the queued ones are done."""
        self._call(self._work.put([None]))

    def stop(self, grace_s: float | None = None) -> None:
        """Take no more prompts; let requests in flight finish within ``grace_s``."""
        self._loop.call_soon_threadsafe(self._work.stop, grace_s)

    def stats(self) -> dict[str, Any]:
        """Counts so far, for the driver's progress line (and its end-of-feed check)."""
        w = self._work
        m = w.batch.metrics if w.batch is not None else None
        ok, failed = (m.succeeded, m.failed) if m is not None else (0, 0)
        return {
            "worker": w.name,
            "pid": os.getpid(),
            "node": self._node,
            "done": ok + failed,
            "succeeded": ok,
            "failed": failed,
            "output_tokens": m.output_tokens if m is not None else 0,
            "in_flight": w.live.in_flight if w.live is not None else 0,
            "queued": w.queue.qsize(),
            "received": w.received,
        }

    def run(self) -> dict[str, Any]:
        """Run the batch until the feed closes or ``stop``; how it ended, and the counts."""
        from llmbatch.engine.gctune import batch_gc

        cpu0_s = time.process_time()
        # This process is the worker's: the GC settings of the CLI's batch run (gctune).
        with batch_gc():
            stop_reason, abort_message = self._call(self._work.run())
        return {
            **self.stats(),
            "stop_reason": stop_reason,
            "abort_message": abort_message,
            "cpu_s": round(time.process_time() - cpu0_s, 4),  # this actor's process
            # From its batch's start to its end: what one process's work phase counts.
            "batch_cpu_s": round(self._work.batch_cpu_s, 4),
            "batch_threads_cpu_s": self._work.batch_threads_cpu_s,
        }


def _threads_cpu_s() -> dict[str, float]:
    """CPU seconds so far of this process's threads, by thread name (Linux; else {}):
    where a worker's CPU goes besides its batch's loop (Ray's own threads)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    python_names = {t.native_id: t.name for t in threading.enumerate()}
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as fh:
                name = python_names.get(int(tid)) or fh.read().strip()
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        out[name] = round(out.get(name, 0.0) + cpu, 3)
    return out


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop of ``kind`` (uvloop when asked and installed, else asyncio's)."""
    if kind == "uvloop":
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
        except ImportError:
            pass
    return asyncio.new_event_loop()


def loop_kind() -> str:
    """The loop this process runs on (``uvloop`` or ``asyncio``): workers use the same."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return "asyncio"
    return "uvloop" if type(running).__module__.startswith("uvloop") else "asyncio"


# -- folding the workers' records into the run directory ---------------------------------------
@dataclass
class _Part:
    path: Path
    worker: str
    offset: int = 0
    records: int = 0
    # Its text/ is the run's own text/ (a symlink): the text is in place already. Parts
    # left by older llmbatch versions have their own text/, linked over when folded.
    # (With --text-layout log a part has its own text.log: answers are copied over.)
    shared_text: bool = True
    _log_fd: int = -1  # its text.log, opened for the first answer copied from it

    def read_logged(self, offset: int, length: int) -> bytes:
        """``length`` bytes of this part's text.log from ``offset`` (one answer)."""
        if self._log_fd < 0:
            self._log_fd = os.open(self.path / TEXT_LOG, os.O_RDONLY)
        return os.pread(self._log_fd, length, offset)

    def close(self) -> None:
        """Close its text.log (before the part is removed)."""
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1


def _make_part(path: Path, meta: dict[str, Any], *, text_layout: str = "files") -> None:
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
        (path / TEXT_DIR).symlink_to(Path("..") / ".." / TEXT_DIR, target_is_directory=True)
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
class _Consolidator:
    """Appends each part's committed records to the top-level results.jsonl, once per id."""

    run_dir: Path
    rundir: RunDir
    index: ResumeIndex
    skip_failed: bool = False
    summary: SummaryBuilder = field(default_factory=SummaryBuilder)
    parts: list[_Part] = field(default_factory=list)
    added: int = 0
    added_failed: int = 0
    per_worker: dict[str, int] = field(default_factory=dict)
    placement: dict[str, str] = field(default_factory=dict)  # worker -> Ray node id
    # Told of every id a live part recorded (the driver's Feed forgets it then).
    recorded: Callable[[str, str], None] | None = None
    lost_workers: dict[str, str] = field(default_factory=dict)  # worker -> why

    def absorb(self, part: _Part, *, leftover: bool = False) -> int:
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
            rel = lb.get("text_file") if isinstance(lb, dict) else None
            if rel == TEXT_LOG:
                assert isinstance(lb, dict)
                raw = self._move_logged(part, rid, rec, lb, raw, complete=not failed)
            elif not part.shared_text:
                if isinstance(rel, str) and (part.path / rel).is_file():
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
        part: _Part,
        rid: str,
        rec: dict[str, Any],
        lb: dict[str, Any],
        raw: bytes,
        *,
        complete: bool,
    ) -> bytes:
        """The line of a record whose answer is in ``part``'s text.log, that answer queued
        for the run's text.log (written before the line, as in one process), its offset
        pointing there."""
        log = self.rundir.text_log
        offset, length = lb.get("text_offset"), lb.get("text_bytes")
        if log is None or not isinstance(offset, int) or not isinstance(length, int):
            return raw
        data = part.read_logged(offset, length)
        new_offset, n = log.answer(rid, data, complete=complete)
        return (
            orjson.dumps({**rec, "llmbatch": {**lb, "text_offset": new_offset, "text_bytes": n}})
            + b"\n"
        )

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
            fd = await _wait_for_lock(path)
            try:
                shared = (path / TEXT_DIR).is_symlink()
                part = _Part(path, worker=f"earlier:{path.name}", shared_text=shared)
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


async def _wait_for_lock(path: Path) -> int:
    """The part's lock, once no process holds it (-1 when it has no lock file)."""
    try:
        fd = os.open(path / ".lock", os.O_RDWR)
    except FileNotFoundError:
        return -1
    deadline = time.monotonic() + _LOCK_WAIT_S
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


# -- the driver -------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
        import ray.util.scheduling_strategies
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'llmbatch[ray]'") from None
    return ray


def _shares(total: int, n: int) -> list[int]:
    """``total`` concurrency split over ``n`` workers (the first get the remainder)."""
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


async def execute_ray_run(
    cfg: RunConfig,
    prompts: Path,
    run_dir: Path,
    *,
    address: str | None = None,
    workers: int | None = None,
    slo: SLO | None = None,
    install_signal_handlers: bool = True,
    progress_every_s: float = 10.0,
) -> RayRunOutput:
    """Run every prompt of ``prompts`` on a Ray cluster into ``run_dir``; resumable.

    ``address`` is the cluster (default ``RAY_ADDRESS``, else a local Ray started for
    the run); ``workers`` the number of worker actors (default: one per alive node),
    which share ``cfg.concurrency``. The run directory must be visible at the same path
    on every node that runs a worker (the driver's disk for one machine, else a shared
    file system).
    """
    ray = _import_ray()
    api_key = resolve_api_key(cfg.provider)
    items = open_prompts(prompts)
    meta = run_identity(cfg, prompts)
    meta["engine"] = "ray"
    rundir, index = RunDir.open(
        run_dir,
        meta,
        retry_failed=cfg.retry_failed,
        text_files=cfg.text_files,
        text_layout=driver_text_layout(cfg, run_dir),
        force_resume=cfg.force_resume,
    )
    cons = _Consolidator(
        run_dir, rundir, index, skip_failed=cfg.retry_failed, summary=SummaryBuilder(slo=slo)
    )
    for _, rec in iter_result_lines(run_dir / RESULTS):  # the whole run's figures
        cons.summary.add(rec)
    signal_received: int | None = None
    stop_reason: str | None = None
    abort_message: str | None = None
    pending_left = False
    lost_workers: dict[str, str] = {}  # worker -> why, for workers whose prompts went on
    actors: list[Any] = []
    ends: list[Any] = []
    gov_snapshot: Any = None
    driver_cpu_s = driver_setup_cpu_s = 0.0
    driver_threads: dict[str, float] = {}
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        await cons.absorb_leftovers()
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        driver_cpu0_s = time.process_time()  # the driver's own work, after connecting
        driver_threads0 = _threads_cpu_s()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        node_ids = [str(n["NodeID"]) for n in nodes] or [ray.get_runtime_context().get_node_id()]
        n_workers = workers or max(1, len(nodes))
        names = [f"w{k}" for k in range(n_workers)]
        if cfg.adaptive:
            # --concurrency auto: the governor's one controller decides for the cluster;
            # a worker starts at its share and may take up to the whole cap (the pool).
            start = min(cfg.concurrency, cfg.max_concurrency)
            shares = _shares(max(start, n_workers), n_workers)
            caps = [max(cfg.max_concurrency, n_workers)] * n_workers
        else:
            shares = _shares(max(cfg.concurrency, n_workers), n_workers)
            caps = shares
        # The budget lives on the driver's node: it must outlive any worker node.
        here = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=True
        )
        governor = (
            ray.remote(GovernorActor)
            .options(num_cpus=0, scheduling_strategy=here)
            .remote(cfg, names)
        )
        worker_cls = ray.remote(WorkerActor)
        session = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        (run_dir / PARTS_DIR).mkdir(exist_ok=True)
        for k, share in enumerate(shares):
            name = f"w{k}"
            part = run_dir / PARTS_DIR / f"{session}-{name}"
            part_meta = {**meta, "part_of": str(run_dir.resolve()), "worker": name}
            _make_part(part, part_meta, text_layout=cfg.text_layout)
            cons.parts.append(_Part(part, worker=name))
            cons.placement[name] = node_ids[k % len(node_ids)]
            part.with_name(part.name + ".token").write_text(name)  # the worker checks it
            actors.append(
                worker_cls.options(
                    num_cpus=0,
                    # Round-robin over the nodes, strictly (a busy node must not push its
                    # worker onto another: the share of each node is the point). A node
                    # gone meanwhile fails its worker: the run stops, resumable.
                    scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                        node_id=node_ids[k % len(node_ids)], soft=False
                    ),
                    # run, push, close_feed, stop, stats: each waits in a thread of its own.
                    max_concurrency=8,
                ).remote(
                    dataclasses.replace(
                        cfg, concurrency=min(share, caps[k]), max_concurrency=caps[k]
                    ),
                    api_key=api_key,
                    name=name,
                    part_dir=str(part.resolve()),
                    meta=part_meta,
                    governor=governor,
                    loop=loop_kind(),
                )
            )
        runs = [a.run.remote() for a in actors]
        # Placing the workers (Ray's first calls, the actors' creation): a fixed cost.
        driver_setup_cpu_s = time.process_time() - driver_cpu0_s
        todo = (item for item in items if _item_id(item) not in index)
        feed = Feed(todo, chunk_size=max(1, min(CHUNK_MAX, min(shares) // 2 or 1)), workers=names)
        cons.recorded = feed.recorded
        cons.lost_workers = lost_workers
        fatal: list[str] = []  # why the run stopped for a worker (none survived, ...)
        own_errors: list[str] = []  # of those, workers that failed with an error of theirs
        stopping = asyncio.Event()

        def stop_all(grace_s: float | None = None) -> None:
            stopping.set()
            feed.wake()
            for k in feed_alive():
                actors[k].stop.remote(grace_s)

        def feed_alive() -> list[int]:
            return [names.index(w) for w in feed.alive]

        def on_signal(signum: int) -> None:
            nonlocal signal_received, stop_reason
            if signal_received is None:
                signal_received = signum
                stop_reason = StopReason.INTERRUPTED
                print(
                    f"llmbatch: {signal.Signals(signum).name}: stopping the workers "
                    f"(up to {cfg.grace_s:g}s); signal again to stop now",
                    file=sys.stderr,
                    flush=True,
                )
                stop_all()
            else:
                stop_all(0.0)

        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, sig)

        async def on_lost(k: int, exc: BaseException) -> None:
            """Worker k failed: re-send what it held to the others, or stop the run."""
            name = names[k]
            if name not in feed.held:
                return
            cause = f"{name}: {_cause(exc)}"
            # It writes nothing more: fold every whole line it wrote before it went.
            cons.absorb(cons.parts[k])
            await rundir.flush()
            held = feed.lost(name)
            governor.forget.remote(name)
            died = isinstance(exc, ray.exceptions.ActorDiedError)
            if isinstance(exc, ray.exceptions.ActorUnavailableError):
                # Unreachable (its node is going, or the network): make it dead for sure
                # before its prompts go to another worker.
                with contextlib.suppress(Exception):
                    ray.kill(actors[k], no_restart=True)
                died = True
            # The last worker gone with prompts not yet sent: nobody can finish the job.
            none_left = not feed.alive and not feed.drained and not stopping.is_set()
            if held == 0 and died and not none_left:
                lost_workers[name] = _cause(exc)
                return
            if died and feed.alive and not feed.closed and not stopping.is_set():
                lost_workers[name] = _cause(exc)
                print(
                    f"llmbatch: ray: worker lost ({cause}); its {held} unfinished prompts go "
                    "to the other workers",
                    file=sys.stderr,
                    flush=True,
                )
                return
            fatal.append(cause)
            if not died:
                own_errors.append(cause)
            stop_all()

        async def feed_worker(k: int) -> None:
            actor, name = actors[k], names[k]
            try:
                while name in feed.held:
                    if stopping.is_set():
                        # A worker that missed its stop (it had not started) then ends
                        # once its queue is done.
                        await actor.close_feed.remote()
                        return
                    chunk = feed.take(name)
                    if chunk:
                        feed.pushing += 1
                        try:
                            await actor.push.remote(_pack(chunk))
                        finally:
                            feed.pushing -= 1
                    elif feed.closed:
                        await actor.close_feed.remote()
                        return
                    else:
                        await feed.wait()
            except ray.exceptions.RayError as exc:
                await on_lost(k, exc)

        deadline = None
        if cfg.max_runtime_s is not None:

            def at_deadline() -> None:
                nonlocal stop_reason
                stop_reason = stop_reason or StopReason.MAX_RUNTIME
                stop_all()

            deadline = loop.call_later(cfg.max_runtime_s, at_deadline)

        feeders = [asyncio.ensure_future(feed_worker(k)) for k in range(len(actors))]
        ends = [None] * len(actors)

        async def wait_run(k: int) -> None:
            try:
                end = ends[k] = await runs[k]
            except ray.exceptions.RayError as exc:
                await on_lost(k, exc)
                return
            if end.get("stop_reason") == StopReason.ABORTED and not stopping.is_set():
                stop_all()  # fatal for the run (a bad key, no quota): as in one process

        waiters = [asyncio.ensure_future(wait_run(k)) for k in range(len(actors))]
        last_summary = last_log = time.monotonic()
        all_runs = asyncio.gather(*waiters)
        idle_checks = 0
        while not all_runs.done():
            await asyncio.wait({all_runs}, timeout=0.5)
            await cons.absorb_all()
            if feed.drained and not feed.closed and not stopping.is_set():
                # Every prompt is out: close the feeds once every record is in, or once
                # the workers sit idle twice in a row (a batch holds back its first
                # failures until something succeeds; they come at its end).
                if feed.held_count() == 0:
                    feed.close()
                elif feed.pushing == 0 and await _idle([actors[k] for k in feed_alive()]):
                    idle_checks += 1
                    if idle_checks >= 2:
                        feed.close()
                else:
                    idle_checks = 0
            now = time.monotonic()
            if now - last_summary >= 2.0:
                last_summary = now
                rundir.write_summary(
                    {**cons.summary.summary(), "engine": _engine_section(cons, len(actors))}
                )
            if now - last_log >= progress_every_s:
                last_log = now
                print(_progress_line(cons, index, started), file=sys.stderr, flush=True)
        for f in feeders:
            f.cancel()
        if deadline is not None:
            deadline.cancel()
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        await cons.finish()
        for end in ends:
            if end and end.get("stop_reason") == StopReason.ABORTED:
                stop_reason = StopReason.ABORTED
                abort_message = end.get("abort_message")
        if fatal:
            stop_reason = StopReason.ABORTED
            lost = [f"{w}: {why}" for w, why in lost_workers.items()]
            causes = "; ".join(dict.fromkeys([*lost, *fatal]))
            if own_errors:
                abort_message = f"worker failed ({'; '.join(dict.fromkeys(own_errors))})"
            elif not feed.alive:
                abort_message = (
                    f"no worker left: every worker was lost ({causes}); the records made "
                    "are kept, and the same command run again (once the cluster has "
                    "workers) runs the prompts that have none"
                )
            else:
                abort_message = f"worker lost ({causes}); its prompts run again on re-run"
        pending_left = stop_reason is not None
        try:
            gov_snapshot = await governor.snapshot.remote()
        except ray.exceptions.RayError:
            gov_snapshot = None
        for a in [*actors, governor]:
            with contextlib.suppress(Exception):
                ray.kill(a)
        driver_cpu_s = time.process_time() - driver_cpu0_s
        driver_threads = {
            k: round(v - driver_threads0.get(k, 0.0), 3) for k, v in _threads_cpu_s().items()
        }
    finally:
        await rundir.aclose()
    summary = cons.summary.summary()
    conc = (gov_snapshot or {}).get("concurrency")
    if conc:  # --concurrency auto: the cluster's limit at the end
        summary["concurrency_limit"] = conc["limit"]
    summary["engine"] = {
        **_engine_section(cons, len(actors)),
        "worker_stats": [e for e in ends if e],
        "rate_budget": gov_snapshot,
        "driver_cpu_s": round(driver_cpu_s, 4),
        "driver_setup_cpu_s": round(driver_setup_cpu_s, 4),
        "driver_threads_cpu_s": driver_threads,
    }
    (run_dir / SUMMARY).write_bytes(
        orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    return RayRunOutput(
        summary=summary,
        run_dir=run_dir,
        stop_reason=stop_reason,
        abort_message=abort_message,
        pending_left=pending_left,
        failed=cons.added_failed,
        signal_received=signal_received,
    )


async def _idle(actors: list[Any]) -> bool:
    """True when none of ``actors`` has a prompt queued or a request in flight."""
    import ray

    try:
        stats = await asyncio.gather(*(a.stats.remote() for a in actors))
    except ray.exceptions.RayError:
        return False  # a worker is going: the loss is handled where its calls fail
    return all(s["queued"] == 0 and s["in_flight"] == 0 for s in stats)


def _node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray)."""
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return None


def _cause(exc: BaseException) -> str:
    """What ended a worker: its own error when it raised one, else how Ray saw it die."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return type(exc).__name__


def _item_id(item: PromptRecord | InputError) -> str:
    from llmbatch.rundir.shard import item_id

    return item_id(item)


def _engine_section(cons: _Consolidator, workers: int) -> dict[str, Any]:
    """summary.json's ``engine``: which engine, its workers and their nodes, records per
    worker."""
    return {
        "name": "ray",
        "workers": workers,
        "worker_nodes": dict(cons.placement),
        "records_per_worker": dict(cons.per_worker),
        "this_session_records": cons.added,
        "workers_lost": dict(cons.lost_workers),
    }


def _progress_line(cons: _Consolidator, index: ResumeIndex, started: float) -> str:
    per = ", ".join(f"{w} {n}" for w, n in sorted(cons.per_worker.items()))
    lost = f"; lost: {', '.join(sorted(cons.lost_workers))}" if cons.lost_workers else ""
    return (
        f"llmbatch: ray: {cons.added} done this run ({cons.added_failed} failed), "
        f"{len(index)} in all, {time.monotonic() - started:.0f}s; per worker: {per or '-'}" + lost
    )


def run_on_ray(
    prompts: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    address: str | None = None,
    workers: int | None = None,
    **flags: Any,
) -> RayRunOutput:
    """``llmbatch run PROMPTS --engine ray --out OUT_DIR`` from Python (sync).

    ``flags`` are the CLI's option names (``provider``, ``base_url``, ``model``,
    ``concurrency``, ``rpm``, ...), over ``./config.toml`` when present; no ``LLMBATCH_*``
    variable is read. Raises the llmbatch error that stopped the run (LLMBatchError).
    """
    from llmbatch.config.load import load_config

    cfg = load_config(None, flags={**flags, "run_dir": os.fspath(out_dir)}, environ={})
    return asyncio.run(
        execute_ray_run(
            cfg,
            Path(os.fspath(prompts)),
            Path(os.fspath(out_dir)),
            address=address,
            workers=workers,
            install_signal_handlers=False,
        )
    )
