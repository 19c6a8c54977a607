"""The Ray actors: the cluster's one rate budget (GovernorActor) and the workers that
each run one llmbatch Client and one batch into their own part directory (WorkerActor)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from llmbatch.clock import now
from llmbatch.config.model import RunConfig
from llmbatch.errors import RunDirError
from llmbatch.pacing import governor_for
from llmbatch.pacing.bucket import Clock
from llmbatch.ray.lease import (
    ClusterBudget,
    ClusterConcurrency,
    LeasedBudget,
    LeasedConcurrency,
    LeasedPacer,
    LeaseGovernor,
    SyncReply,
    SyncRequest,
    Transport,
)
from llmbatch.ray.wire import BadLine, Packed, decode_item, unpack
from llmbatch.records import PromptRecord

__all__ = [
    "GovernorActor",
    "WorkerActor",
    "has_limits",
    "lease_governor",
    "leased_pacing",
    "loop_kind",
    "node_id",
    "threads_cpu_s",
]


# -- the rate budget actor --------------------------------------------------------------
def has_limits(cfg: RunConfig) -> bool:
    """True when any rate limit is configured (then every request waits for a grant)."""
    lim = cfg.provider.limits
    return any(v is not None for v in (lim.rpm, lim.input_tpm, lim.output_tpm, lim.tpm))


def lease_governor(
    cfg: RunConfig,
    workers: list[str] | None = None,
    *,
    clock: Clock = now,
    wall_clock: Clock = time.time,
) -> LeaseGovernor:
    """The cluster's one rate budget for ``cfg`` (and with ``--concurrency auto`` its one
    controller, shared by ``workers``): what the governor actor holds. ``clock`` and
    ``wall_clock`` are the governor's (virtual in tests)."""
    concurrency = None
    if cfg.adaptive:  # --concurrency auto: one controller for the cluster
        concurrency = ClusterConcurrency(
            workers or [],
            initial=min(cfg.concurrency, cfg.max_concurrency),
            cap=cfg.max_concurrency,
            clock=clock,
        )
    governor = governor_for(cfg, clock=clock, wall_clock=wall_clock)
    return LeaseGovernor(governor, concurrency=concurrency)


def leased_pacing(
    cfg: RunConfig, transport: Transport, *, worker: str, clock: Clock = now
) -> tuple[LeasedPacer, LeasedConcurrency | None]:
    """A worker's pacer on the cluster's one budget, whose calls go through ``transport``
    (in Ray: the governor actor's ``sync``), and with ``--concurrency auto`` its share of the
    cluster's limit (None otherwise)."""
    conc = LeasedConcurrency(cfg.concurrency) if cfg.adaptive else None
    pacer = LeasedPacer(
        transport, worker=worker, limited=has_limits(cfg), concurrency=conc, clock=clock
    )
    return pacer, conc


class GovernorActor:
    """The Ray actor holding the cluster's LeaseGovernor (its calls run one at a time)."""

    def __init__(
        self, cfg: RunConfig, workers: list[str] | None = None, *, spent_usd: float = 0.0
    ) -> None:
        # --max-cost: the cluster's one budget (what the run's records cost counts).
        self._budget = (
            ClusterBudget(cfg.max_cost, spent_usd=spent_usd) if cfg.max_cost is not None else None
        )
        self._lease = lease_governor(cfg, workers)
        self._cpu0_s = time.process_time()

    def forget(self, worker: str) -> None:
        """``worker`` is gone: the others share the cluster's concurrency; what it held
        of the budget counts as spent."""
        self._lease.forget(worker)
        if self._budget is not None:
            self._budget.forget(worker)

    def budget_admit(self, worker: str, worst_usd: float) -> str:
        """--max-cost: may one of ``worker``'s requests (at most ``worst_usd``) go?"""
        assert self._budget is not None
        return self._budget.admit(worker, worst_usd)

    def budget_settle(self, worker: str, worst_usd: float, actual_usd: float) -> None:
        """--max-cost: one of ``worker``'s requests cost ``actual_usd``."""
        assert self._budget is not None
        self._budget.settle(worker, worst_usd, actual_usd)

    def sync(self, req: SyncRequest) -> SyncReply:
        """One worker's batch of tickets and news (see lease.py)."""
        return self._lease.sync(req)

    def snapshot(self) -> dict[str, Any]:
        """Limits, balances and grants, and this actor's CPU time, for summary.json."""
        snap = {**self._lease.snapshot(), "cpu_s": round(time.process_time() - self._cpu0_s, 4)}
        if self._budget is not None:
            snap["cost_budget"] = self._budget.snapshot()
        return snap


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
        self.queue: asyncio.Queue[PromptRecord | BadLine | None] = asyncio.Queue(
            maxsize=max(2, cfg.max_concurrency if cfg.adaptive else cfg.concurrency)
        )
        self.received = 0
        self.batch: Any = None
        self.live: Any = None  # the engine's live counts, once the batch runs
        # A stop that came before the batch had started: applied once it has.
        self.stop_requested: tuple[float | None] | None = None
        self.batch_cpu_s = 0.0  # this process's CPU while the batch ran (client started)
        self.batch_threads_cpu_s: dict[str, float] = {}  # the same by thread

    async def put(self, items: list[PromptRecord | BadLine | None]) -> None:
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
            yield decode_item(item)

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
        pacer, conc = leased_pacing(cfg, transport, worker=self.name)
        budget = None
        if cfg.max_cost is not None:  # the cluster's one budget, in the governor actor
            name = self.name

            async def admit(worst_usd: float) -> str:
                verdict: str = await governor.budget_admit.remote(name, worst_usd)
                return verdict

            def settle(worst_usd: float, actual_usd: float) -> None:
                governor.budget_settle.remote(name, worst_usd, actual_usd)

            budget = LeasedBudget(cfg.max_cost, admit, settle)
        client = Client._for_run(
            cfg, api_key=self.api_key, pacer=pacer, concurrency=conc, budget=budget
        )
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
                    threads0 = threads_cpu_s()
                    if self.stop_requested is not None:  # while the client was starting
                        batch.stop(grace_s=self.stop_requested[0])
                    # wait(), not iterating: the counts come from the batch's live metrics,
                    # so no Result is built per record (as the CLI's one-process run).
                    await batch.wait()
                self.batch_cpu_s = time.process_time() - cpu0_s
                threads1 = threads_cpu_s()
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
        self._node = node_id()
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
        items: list[PromptRecord | BadLine | None] = list(unpack(packed))
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


def threads_cpu_s() -> dict[str, float]:
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


def node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray)."""
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:
        return None
