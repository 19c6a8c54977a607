"""``--engine ray``: one batch over a Ray cluster, with the results of one process.

Layout of a run directory written by this engine (the driver's view)::

    run.json, .lock, results.jsonl, text/, summary.json   as for one process
    parts/<session>-w<k>/   one run directory per worker actor and session, whose
                            text/ is a link to the run's text/

The pieces:

- **Driver** (the ``llmbatch run`` process): holds the run directory's lock, reads the
  prompts file once and in order (so ids, automatic ids and bad lines are exactly a
  single-process run's), skips ids already done, and pushes the rest in small chunks to
  the workers (``ray/feed.py``, which remembers what each worker holds, so a dead
  worker's prompts go to the others); a worker's bounded queue pushes back, so no
  process holds more than O(concurrency) prompts. It folds the workers' records into the
  run directory as they are committed (``parts.Consolidator``: each line appended as the
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
import math
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llmbatch.config.model import RunConfig
from llmbatch.config.profiles import resolve_api_key
from llmbatch.engine import StopReason
from llmbatch.engine.batch import CHANGED_SHOWN
from llmbatch.errors import ConfigError, InputError, UnfinishedLine
from llmbatch.metrics import SLO, format_cost, rate_used
from llmbatch.pacing.governor import stated_rates
from llmbatch.pricing import PriceBook
from llmbatch.ray.actors import GovernorActor, WorkerActor, loop_kind, threads_cpu_s
from llmbatch.ray.feed import Feed
from llmbatch.ray.parts import (
    PARTS_DIR,
    Consolidator,
    Part,
    driver_text_layout,
    make_part,
    make_parts_dir,
)
from llmbatch.ray.wire import pack
from llmbatch.records import PromptRecord
from llmbatch.rundir.identity import run_identity
from llmbatch.rundir.layout import RESULTS, SUMMARY
from llmbatch.rundir.nofollow import replace_file
from llmbatch.rundir.reader import iter_records, open_prompts
from llmbatch.rundir.resultline import record_cost_usd
from llmbatch.rundir.results import ResumeIndex, iter_result_lines
from llmbatch.rundir.summary import SummaryBuilder
from llmbatch.rundir.writer import RunDir

__all__ = ["RayRunOutput", "execute_ray_run"]

CHUNK_MAX = 64


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
    # Done ids whose prompt changed since their record (skipped, old answer kept).
    changed: int = 0
    changed_ids: tuple[str, ...] = ()


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
    if cfg.max_cost is not None:  # as a one-process Client checks it, before anything starts
        book = PriceBook(cfg)
        if book.rates(cfg.provider.model) is None:
            raise ConfigError(f"{book.why_unpriced(cfg.provider.model)}: max_cost needs a price")
    driver = _Driver(ray, cfg, prompts, run_dir, slo=slo, progress_every_s=progress_every_s)
    try:
        await driver.set_up(address=address, workers=workers, api_key=api_key)
        await driver.feed_workers(install_signal_handlers=install_signal_handlers)
        await driver.finish()
    finally:
        await driver.rundir.aclose()
    return driver.output()


class _Driver:
    """One Ray run, seen from the driver: ``set_up`` (the run directory, the cluster, the
    governor and worker actors), ``feed_workers`` (prompts out, records in, until every
    worker's batch ended), ``finish`` (why it stopped, the actors gone), ``output``."""

    def __init__(
        self,
        ray: Any,
        cfg: RunConfig,
        prompts: Path,
        run_dir: Path,
        *,
        slo: SLO | None,
        progress_every_s: float,
    ) -> None:
        """Open and lock ``run_dir`` (resuming it) and fold its records into the summary."""
        self.ray = ray
        self.cfg = cfg
        self.run_dir = run_dir
        self.progress_every_s = progress_every_s
        self.items = open_prompts(prompts)  # an empty or unreadable file: before anything
        self.changed: list[str] = []  # done ids whose prompt changed (counted, not rerun)
        self.meta = run_identity(cfg, prompts)
        self.meta["engine"] = "ray"
        self.rundir, self.index = RunDir.open(
            run_dir,
            self.meta,
            retry_failed=cfg.retry_failed,
            text_files=cfg.text_files,
            text_layout=driver_text_layout(cfg, run_dir),
            force_resume=cfg.force_resume,
            # --rerun-changed: the records of prompts that changed go, so they run again.
            rerun=(lambda idx: idx.changed_among(iter_records(prompts)))
            if cfg.rerun_changed
            else None,
        )
        self.cons = cons = Consolidator(
            run_dir,
            self.rundir,
            self.index,
            skip_failed=cfg.retry_failed,
            summary=SummaryBuilder(slo=slo),
        )
        for _, rec in iter_result_lines(run_dir / RESULTS):  # the whole run's figures
            cons.summary.add(rec)
        self.signal_received: int | None = None
        self.stop_reason: str | None = None
        self.abort_message: str | None = None
        self.pending_left = False
        self.lost_workers: dict[str, str] = {}  # worker -> why, for workers whose prompts went on
        self.fatal: list[str] = []  # why the run stopped for a worker (none survived, ...)
        self.own_errors: list[str] = []  # of those, workers that failed with an error of theirs
        self.names: list[str] = []
        self.actors: list[Any] = []
        self.runs: list[Any] = []  # each worker's batch (an ObjectRef of its end)
        self.ends: list[Any] = []  # each worker's end, once its batch returned
        self.governor: Any = None
        self.gov_snapshot: Any = None
        self.feed: Feed | None = None
        self.stopping = asyncio.Event()
        self.driver_cpu_s = self.driver_setup_cpu_s = 0.0
        self.driver_threads: dict[str, float] = {}
        self._cpu0_s = 0.0
        self._threads0: dict[str, float] = {}
        self.started = time.monotonic()
        self.loop = asyncio.get_running_loop()

    # -- set-up ----------------------------------------------------------------------------
    async def set_up(
        self, *, address: str | None, workers: int | None, api_key: str | None
    ) -> None:
        """Fold what a killed driver left behind, connect to the cluster, start the
        governor and the workers (each with its part directory), open the feed."""
        ray, cfg, cons = self.ray, self.cfg, self.cons
        await cons.absorb_leftovers()
        spent_usd = 0.0  # --max-cost counts what the run's records already cost
        if cfg.max_cost is not None:
            results = iter_result_lines(self.run_dir / RESULTS)
            spent_usd = sum(record_cost_usd(r) for _, r in results)
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        self._cpu0_s = time.process_time()  # the driver's own work, after connecting
        self._threads0 = threads_cpu_s()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        node_ids = [str(n["NodeID"]) for n in nodes] or [ray.get_runtime_context().get_node_id()]
        n_workers = workers or max(1, len(nodes))
        self.names = names = [f"w{k}" for k in range(n_workers)]
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
        self.governor = (
            ray.remote(GovernorActor)
            .options(num_cpus=0, scheduling_strategy=here)
            .remote(cfg, names, spent_usd=spent_usd)
        )
        worker_cls = ray.remote(WorkerActor)
        session = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        make_parts_dir(self.run_dir)
        for k, share in enumerate(shares):
            node_id = node_ids[k % len(node_ids)]
            worker_cfg = dataclasses.replace(
                cfg, concurrency=min(share, caps[k]), max_concurrency=caps[k]
            )
            actor = self._start_worker(worker_cls, names[k], node_id, session, worker_cfg, api_key)
            self.actors.append(actor)
        self.runs = [a.run.remote() for a in self.actors]
        self.ends = [None] * len(self.actors)
        # Placing the workers (Ray's first calls, the actors' creation): a fixed cost.
        self.driver_setup_cpu_s = time.process_time() - self._cpu0_s
        todo = _todo(self.items, self.index, self.changed)
        chunk_size = max(1, min(CHUNK_MAX, min(shares) // 2 or 1))
        self.feed = Feed(todo, chunk_size=chunk_size, workers=names)
        cons.recorded = self.feed.recorded
        cons.lost_workers = self.lost_workers

    def _start_worker(
        self,
        worker_cls: Any,
        name: str,
        node_id: str,
        session: str,
        cfg: RunConfig,
        api_key: str | None,
    ) -> Any:
        """The worker actor ``name`` on ``node_id``, writing into a part directory of its own."""
        ray = self.ray
        part = self.run_dir / PARTS_DIR / f"{session}-{name}"
        part_meta = {**self.meta, "part_of": str(self.run_dir.resolve()), "worker": name}
        make_part(part, part_meta, text_layout=self.cfg.text_layout)
        self.cons.parts.append(Part(part, worker=name))
        self.cons.placement[name] = node_id
        # The worker checks it (never written through a link planted there).
        replace_file(part.with_name(part.name + ".token"), name.encode(), sync=False)
        return worker_cls.options(
            num_cpus=0,
            # Round-robin over the nodes, strictly (a busy node must not push its
            # worker onto another: the share of each node is the point). A node
            # gone meanwhile fails its worker: the run stops, resumable.
            scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                node_id=node_id, soft=False
            ),
            # run, push, close_feed, stop, stats: each waits in a thread of its own.
            max_concurrency=8,
        ).remote(
            cfg,
            api_key=api_key,
            name=name,
            part_dir=str(part.resolve()),
            meta=part_meta,
            governor=self.governor,
            loop=loop_kind(),
        )

    # -- feeding ---------------------------------------------------------------------------
    async def feed_workers(self, *, install_signal_handlers: bool) -> None:
        """Push the prompts to the workers and fold their records in, until every
        worker's batch has ended (or was lost); summary.json every 2 s, a progress line
        every ``progress_every_s``."""
        cfg, loop = self.cfg, self.loop
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
        deadline = None
        if cfg.max_runtime_s is not None:
            deadline = loop.call_later(cfg.max_runtime_s, self._at_deadline)
        feeders = [asyncio.ensure_future(self._feed_worker(k)) for k in range(len(self.actors))]
        waiters = [asyncio.ensure_future(self._wait_run(k)) for k in range(len(self.actors))]
        last_summary = last_log = time.monotonic()
        all_runs = asyncio.gather(*waiters)
        idle_checks = 0
        while not all_runs.done():
            await asyncio.wait({all_runs}, timeout=0.5)
            await self.cons.absorb_all()
            idle_checks = await self._close_feed_when_done(idle_checks)
            now = time.monotonic()
            if now - last_summary >= 2.0:
                last_summary = now
                self.rundir.write_summary(
                    {
                        **_with_budget(self.cons.summary.summary(), cfg),
                        "engine": _engine_section(self.cons, len(self.actors)),
                    }
                )
            if now - last_log >= self.progress_every_s:
                last_log = now
                line = _progress_line(self.cons, self.index, self.started)
                cost = format_cost(self.cons.summary.summary().get("cost"))
                print(line + (f"; {cost}" if cost else ""), file=sys.stderr, flush=True)
        for f in feeders:
            f.cancel()
        if deadline is not None:
            deadline.cancel()
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _close_feed_when_done(self, idle_checks: int) -> int:
        """Every prompt is out: close the feeds once every record is in, or once the
        workers sit idle twice in a row (a batch holds back its first failures until
        something succeeds; they come at its end). The idle checks in a row so far."""
        feed = self._the_feed()
        if not feed.drained or feed.closed or self.stopping.is_set():
            return idle_checks
        if feed.held_count() == 0:
            feed.close()
        elif feed.pushing == 0 and await _idle([self.actors[k] for k in self._feed_alive()]):
            idle_checks += 1
            if idle_checks >= 2:
                feed.close()
        else:
            idle_checks = 0
        return idle_checks

    def _the_feed(self) -> Feed:
        assert self.feed is not None, "set_up() makes the feed"
        return self.feed

    def _feed_alive(self) -> list[int]:
        return [self.names.index(w) for w in self._the_feed().alive]

    def _stop_all(self, grace_s: float | None = None) -> None:
        self.stopping.set()
        self._the_feed().wake()
        for k in self._feed_alive():
            self.actors[k].stop.remote(grace_s)

    def _on_signal(self, signum: int) -> None:
        if self.signal_received is None:
            self.signal_received = signum
            self.stop_reason = StopReason.INTERRUPTED
            print(
                f"llmbatch: {signal.Signals(signum).name}: stopping the workers "
                f"(up to {self.cfg.grace_s:g}s); signal again to stop now",
                file=sys.stderr,
                flush=True,
            )
            self._stop_all()
        else:
            self._stop_all(0.0)

    def _at_deadline(self) -> None:
        self.stop_reason = self.stop_reason or StopReason.MAX_RUNTIME
        self._stop_all()

    async def _feed_worker(self, k: int) -> None:
        """Push chunks of prompts to worker ``k`` while it holds any (its queue pushes back)."""
        actor, name, feed = self.actors[k], self.names[k], self._the_feed()
        try:
            while name in feed.held:
                if self.stopping.is_set():
                    # A worker that missed its stop (it had not started) then ends
                    # once its queue is done.
                    await actor.close_feed.remote()
                    return
                chunk = feed.take(name)
                if chunk:
                    feed.pushing += 1
                    try:
                        await actor.push.remote(pack(chunk))
                    finally:
                        feed.pushing -= 1
                elif feed.closed:
                    await actor.close_feed.remote()
                    return
                else:
                    await feed.wait()
        except self.ray.exceptions.RayError as exc:
            await self._on_lost(k, exc)

    async def _wait_run(self, k: int) -> None:
        """Wait for worker ``k``'s batch to end; its stop may be the run's."""
        try:
            end = self.ends[k] = await self.runs[k]
        except self.ray.exceptions.RayError as exc:
            await self._on_lost(k, exc)
            return
        if end.get("stop_reason") == StopReason.ABORTED and not self.stopping.is_set():
            self._stop_all()  # fatal for the run (a bad key, no quota): as in one process
        elif end.get("stop_reason") == StopReason.BUDGET and not self.stopping.is_set():
            self._stop_all(math.inf)  # the cluster's budget: in-flight requests finish

    async def _on_lost(self, k: int, exc: BaseException) -> None:
        """Worker k failed: re-send what it held to the others, or stop the run."""
        ray, feed, name = self.ray, self._the_feed(), self.names[k]
        if name not in feed.held:
            return
        cause = f"{name}: {_cause(exc)}"
        # It writes nothing more: fold every whole line it wrote before it went.
        self.cons.absorb(self.cons.parts[k])
        await self.rundir.flush()
        held = feed.lost(name)
        self.governor.forget.remote(name)
        died = isinstance(exc, ray.exceptions.ActorDiedError)
        if isinstance(exc, ray.exceptions.ActorUnavailableError):
            # Unreachable (its node is going, or the network): make it dead for sure
            # before its prompts go to another worker.
            with contextlib.suppress(Exception):
                ray.kill(self.actors[k], no_restart=True)
            died = True
        # The last worker gone with prompts not yet sent: nobody can finish the job.
        none_left = not feed.alive and not feed.drained and not self.stopping.is_set()
        if held == 0 and died and not none_left:
            self.lost_workers[name] = _cause(exc)
            return
        if died and feed.alive and not feed.closed and not self.stopping.is_set():
            self.lost_workers[name] = _cause(exc)
            print(
                f"llmbatch: ray: worker lost ({cause}); its {held} unfinished prompts go "
                "to the other workers",
                file=sys.stderr,
                flush=True,
            )
            return
        self.fatal.append(cause)
        if not died:
            self.own_errors.append(cause)
        self._stop_all()

    # -- the end ---------------------------------------------------------------------------
    async def finish(self) -> None:
        """Fold the last records, say why the run stopped, take the governor's figures and
        end the actors."""
        ray = self.ray
        await self.cons.finish()
        for end in self.ends:
            if end and end.get("stop_reason") == StopReason.BUDGET and self.stop_reason is None:
                self.stop_reason = StopReason.BUDGET
                self.abort_message = end.get("abort_message")
        for end in self.ends:
            if end and end.get("stop_reason") == StopReason.ABORTED:
                self.stop_reason = StopReason.ABORTED
                self.abort_message = end.get("abort_message")
        if self.fatal:
            self.stop_reason = StopReason.ABORTED
            self.abort_message = self._fatal_message()
        self.pending_left = self.stop_reason is not None
        try:
            self.gov_snapshot = await self.governor.snapshot.remote()
        except ray.exceptions.RayError:
            self.gov_snapshot = None
        for a in [*self.actors, self.governor]:
            with contextlib.suppress(Exception):
                ray.kill(a)
        self.driver_cpu_s = time.process_time() - self._cpu0_s
        self.driver_threads = {
            k: round(v - self._threads0.get(k, 0.0), 3) for k, v in threads_cpu_s().items()
        }

    def _fatal_message(self) -> str:
        lost = [f"{w}: {why}" for w, why in self.lost_workers.items()]
        causes = "; ".join(dict.fromkeys([*lost, *self.fatal]))
        if self.own_errors:
            return f"worker failed ({'; '.join(dict.fromkeys(self.own_errors))})"
        if not self._the_feed().alive:
            return (
                f"no worker left: every worker was lost ({causes}); the records made "
                "are kept, and the same command run again (once the cluster has "
                "workers) runs the prompts that have none"
            )
        return f"worker lost ({causes}); its prompts run again on re-run"

    def output(self) -> RayRunOutput:
        """The final summary.json (written now, after the run directory was closed) and
        what the CLI needs."""
        summary = _with_budget(self.cons.summary.summary(), self.cfg)
        rates = stated_rates(self.gov_snapshot or {})
        if rates:  # the cluster's one budget: what the run used of it
            tokens = summary["tokens"]
            summary["rate"] = rate_used(
                summary["requests"]["succeeded"],
                tokens["input"],
                tokens["output"],
                summary["duration_s"],
                rates,
            )
        conc = (self.gov_snapshot or {}).get("concurrency")
        if conc:  # --concurrency auto: the cluster's limit at the end
            summary["concurrency_limit"] = conc["limit"]
        summary["engine"] = {
            **_engine_section(self.cons, len(self.actors)),
            "worker_stats": [e for e in self.ends if e],
            "rate_budget": self.gov_snapshot,
            "driver_cpu_s": round(self.driver_cpu_s, 4),
            "driver_setup_cpu_s": round(self.driver_setup_cpu_s, 4),
            "driver_threads_cpu_s": self.driver_threads,
        }
        replace_file(
            self.run_dir / SUMMARY,
            orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS),
        )
        return RayRunOutput(
            summary=summary,
            run_dir=self.run_dir,
            stop_reason=self.stop_reason,
            abort_message=self.abort_message,
            pending_left=self.pending_left,
            failed=self.cons.added_failed,
            signal_received=self.signal_received,
            changed=len(self.changed),
            changed_ids=tuple(self.changed[:CHANGED_SHOWN]),
        )


async def _idle(actors: list[Any]) -> bool:
    """True when none of ``actors`` has a prompt queued or a request in flight."""
    import ray

    try:
        stats = await asyncio.gather(*(a.stats.remote() for a in actors))
    except ray.exceptions.RayError:
        return False  # a worker is going: the loss is handled where its calls fail
    return all(s["queued"] == 0 and s["in_flight"] == 0 for s in stats)


def _cause(exc: BaseException) -> str:
    """What ended a worker: its own error when it raised one, else how Ray saw it die."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return type(exc).__name__


def _todo(
    items: Iterable[PromptRecord | InputError], index: ResumeIndex, changed: list[str]
) -> Iterator[PromptRecord | InputError]:
    """The items still to do: not done, not a last line still being written (the next
    run has it); done ids whose prompt changed go to ``changed``."""
    for item in items:
        if isinstance(item, UnfinishedLine):
            continue
        if isinstance(item, PromptRecord) and item.id in index:
            if index.changed(item):
                changed.append(item.id)
            continue
        if _item_id(item) not in index:
            yield item


def _item_id(item: PromptRecord | InputError) -> str:
    from llmbatch.rundir.shard import item_id

    return item_id(item)


def _engine_section(cons: Consolidator, workers: int) -> dict[str, Any]:
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


def _with_budget(summary: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """The summary with the run's --max-cost (the records alone do not know it)."""
    if cfg.max_cost is not None and isinstance(summary.get("cost"), dict):
        summary["cost"]["max_cost_usd"] = cfg.max_cost
    return summary


def _progress_line(cons: Consolidator, index: ResumeIndex, started: float) -> str:
    per = ", ".join(f"{w} {n}" for w, n in sorted(cons.per_worker.items()))
    lost = f"; lost: {', '.join(sorted(cons.lost_workers))}" if cons.lost_workers else ""
    return (
        f"llmbatch: ray: {cons.added} done this run ({cons.added_failed} failed), "
        f"{len(index)} in all, {time.monotonic() - started:.0f}s; per worker: {per or '-'}" + lost
    )
