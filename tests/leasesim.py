"""The cluster's one rate budget on virtual time: the lease protocol without Ray.

``--engine ray`` paces every worker through one lease governor (llmbatch/ray/lease.py): each
worker's engine holds a :class:`~llmbatch.ray.lease.LeasedPacer` whose calls go to the one
:class:`~llmbatch.ray.lease.LeaseGovernor` (in Ray: an actor's method). Here the governor and
two or more workers' engines (ramp, leased pacer, the cluster's ``--concurrency auto``
share, retries) live in one process, built as the Ray actors build them
(``llmbatch.ray.actors``), on tests/pacesim.py's virtual-time loop, against the mock's own
rate-limit models. The actor call is an in-memory stand-in that takes ``call_latency_s`` of
virtual time (half on the way there, half back) and, like an actor, runs one call at a time.

What this leaves out is Ray itself (scheduling, serialisation, processes on 2 shared
cores): tests/test_ray_engine.py's ``pacing`` scenario runs the same through a real cluster.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmbatch.engine.batch import BatchRun
from llmbatch.engine.core import Engine
from llmbatch.metrics import RunMetrics
from llmbatch.mockserver import MockConfig
from llmbatch.providers import make_provider
from llmbatch.ray.actors import lease_governor, leased_pacing
from llmbatch.ray.lease import LeaseGovernor, SyncReply, SyncRequest

from .pacesim import (
    ModelAdapter,
    SimResult,
    Spec,
    VirtualClockLoop,
    _adapter,
    _Exact,
    _items,
    _rows,
    _setup,
)

__all__ = ["simulate_cluster"]


class ActorStandIn:
    """The governor actor's ``sync`` as an awaitable call that takes ``latency_s``: the
    request reaches the actor after half of it, the reply the worker after the other half.
    The actor answers one call at a time (``sync`` is synchronous, so it does here too)."""

    def __init__(self, lease: LeaseGovernor, latency_s: float) -> None:
        self._lease = lease
        self._half_s = latency_s / 2
        self.calls = 0

    async def sync(self, req: SyncRequest) -> SyncReply:
        """One worker's call, there and back."""
        await asyncio.sleep(self._half_s)
        self.calls += 1
        reply = self._lease.sync(req)
        await asyncio.sleep(self._half_s)
        return reply


async def _run_cluster(spec: Spec, workers: int, call_latency_s: float) -> SimResult:
    server, prompts, style = spec.server, spec.prompts, spec.style
    loop, limits, cfg = _setup(server, spec.flags, spec.family)
    names = [f"w{i}" for i in range(workers)]
    lease = lease_governor(cfg, names, clock=loop.time, wall_clock=loop.wall)
    actor = ActorStandIn(lease, call_latency_s)
    rows = _rows(prompts)
    exact = _Exact(rows, server)
    adapters: list[ModelAdapter] = []
    runs: list[tuple[BatchRun, RunMetrics, Any]] = []
    for i, name in enumerate(names):
        adapter = _adapter(limits, server, style, cfg)
        pacer, conc = leased_pacing(cfg, actor.sync, worker=name, clock=loop.time)
        engine = Engine(
            cfg,
            make_provider(cfg.provider, None, cfg.provider.base_url),
            adapter,
            governor=pacer,
            concurrency=conc,
            clock=loop.time,
        )
        metrics = RunMetrics()
        # The driver deals prompts out in turn (its chunks are small against the run).
        share = rows[i::workers]
        runs.append((BatchRun(engine, _items(share), metrics, on_record=exact), metrics, pacer))
        adapters.append(adapter)
    t0 = loop.time()
    try:
        await asyncio.gather(*(batch.run() for batch, _, _ in runs))
    finally:
        for _, _, pacer in runs:
            await pacer.aclose()
    succeeded = sum(m.succeeded for _, m, _ in runs)
    snap = lease.snapshot()
    workers_snap = {name: pacer.snapshot() for name, (_, _, pacer) in zip(names, runs, strict=True)}
    return SimResult(
        measured=limits.measured(),
        requests=sum(a.requests for a in adapters),
        rate_limited=sum(a.rate_limited for a in adapters),
        succeeded=succeeded,
        exact=exact.ok and succeeded == prompts,
        duration_s=loop.time() - t0,
        concurrency_limit=(snap.get("concurrency") or {}).get("limit"),
        summary={"lease": snap, "calls": actor.calls, "workers": workers_snap},
    )


def simulate_cluster(
    server: MockConfig,
    *,
    prompts: int,
    workers: int = 2,
    call_latency_s: float = 0.01,
    style: str = "openai",
    family: str = "",
    **flags: Any,
) -> SimResult:
    """Run ``prompts`` prompts through ``workers`` workers' engines paced by one lease
    governor (calls to it take ``call_latency_s``) against ``server``'s limits, on virtual
    time; as :func:`tests.pacesim.simulate` otherwise."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        spec = Spec(server, prompts, flags, style, family)
        return runner.run(_run_cluster(spec, workers, call_latency_s))
