"""One CLI run, end to end: config → Client → Batch into the run directory.

The CLI calls ``execute_run`` inside an event loop and maps its result to an exit code.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbatch.client import Client
from llmbatch.config.model import RunConfig
from llmbatch.engine import BatchEnd, StopReason
from llmbatch.engine.arrivals import ArrivalPacer, ArrivalProfile
from llmbatch.engine.fdlimit import fit_run_config
from llmbatch.errors import InputError, ProxyIgnoredWarning
from llmbatch.http.proxy import ignored_proxy
from llmbatch.metrics import SLO
from llmbatch.notices import warn
from llmbatch.progress import ProgressView, cost_text, make_progress
from llmbatch.records import Outcome, PromptRecord
from llmbatch.rundir.identity import run_identity
from llmbatch.rundir.layout import RESULTS
from llmbatch.rundir.reader import iter_records, open_prompts
from llmbatch.rundir.results import changed_notice, damaged_lines_notice

if TYPE_CHECKING:
    from llmbatch.rundir.shard import Shard

__all__ = ["RunHooks", "RunOutput", "default_run_dir", "execute_run"]


@dataclass
class RunOutput:
    """What the CLI needs after a run: the result, where it went, which signal stopped it."""

    result: BatchEnd
    run_dir: Path
    signal_received: int | None
    pacer: ArrivalPacer | None = None  # the open-loop pacer, with RunHooks.arrivals


@dataclass
class RunHooks:
    """What ``llmbatch compare`` changes in a run: the records, open-loop arrivals, and
    callbacks that see each Outcome (a returned message stops the run: a stop
    condition) and each response's headers."""

    items: Iterator[PromptRecord | InputError] | None = None
    arrivals: ArrivalProfile | None = None
    on_outcome: Callable[[Outcome], str | None] | None = None
    on_headers: Callable[[Any], None] | None = None


def default_run_dir(cfg: RunConfig, prompts: Path, shard: Shard | None = None) -> Path:
    """outputs/<prompts stem>-<provider>[-<model>][-shardIofN]: the same command resumes
    the same run."""
    if cfg.run_dir is not None:
        return cfg.run_dir
    parts = [prompts.stem, cfg.provider.name]
    if cfg.provider.model and not cfg.provider.embedded_mock:
        parts.append(cfg.provider.model.replace("/", "_"))
    if shard is not None:
        parts.append(shard.suffix)
    return cfg.outputs_dir / "-".join(parts)


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


async def execute_run(
    cfg: RunConfig,
    prompts: Path,
    *,
    slo: SLO | None = None,
    install_signal_handlers: bool = True,
    shard: Shard | None = None,
    hooks: RunHooks | None = None,
) -> RunOutput:
    """Run every prompt of ``prompts`` (of ``shard`` only, if given); resumable by calling
    again with the same config.

    The CLI's run on top of the library: a Client for ``cfg``, one Batch into the run
    directory, SIGINT/SIGTERM turned into a graceful stop (a second signal: at once).
    """
    cfg, capped = fit_run_config(cfg)  # within the open-file limit (raised, or capped)
    warn(capped)
    if not cfg.provider.embedded_mock:  # said once here; the Client's own warning muted
        warn(ignored_proxy(cfg.provider.base_url))
        warnings.filterwarnings("ignore", category=ProxyIgnoredWarning)
    client = Client._for_run(cfg)  # resolves the API key before anything is sent
    hooks = hooks or RunHooks()
    items: Iterator[PromptRecord | InputError] = hooks.items or open_prompts(prompts)
    run_dir = default_run_dir(cfg, prompts, shard)
    meta = run_identity(cfg, prompts)
    if shard is not None:
        from llmbatch.rundir.shard import select_shard

        items = select_shard(items, shard)
        meta["shard"] = shard.spec
    signal_received: int | None = None
    on_outcome = None
    if hooks.on_outcome is not None:
        check = hooks.on_outcome

        def on_outcome(outcome: Outcome) -> None:
            if (why := check(outcome)) is not None:
                batch.stop(reason=why, grace_s=0)

    async with client:
        if hooks.on_headers is not None:
            client.engine.header_listeners.append(hooks.on_headers)
        batch = client.batch(
            items,  # type: ignore[arg-type]  # parsed records pass through unchanged
            run_dir,
            text_files=cfg.text_files,
            text_layout=cfg.text_layout,
            keep_partial=cfg.keep_partial,
            retry_failed=cfg.retry_failed,
            rerun_changed=(lambda: _again(prompts, shard)) if cfg.rerun_changed else False,
            max_runtime_s=cfg.max_runtime_s,
            slo=slo,
            meta=meta,
            force_resume=cfg.force_resume,
            arrivals=hooks.arrivals,
            on_outcome=on_outcome,
        )
        live = client.engine.live
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            nonlocal signal_received
            if signal_received is None:
                signal_received = signum
                batch.stop(reason=StopReason.INTERRUPTED)
                print(
                    f"llmbatch: {signal.Signals(signum).name}: finishing "
                    f"{live.in_flight} requests in flight (up to {cfg.grace_s:g}s); "
                    "signal again to stop now",
                    file=sys.stderr,
                    flush=True,
                )
            else:  # a second signal: stop now (files stay consistent)
                batch.stop(reason=StopReason.INTERRUPTED, grace_s=0)

        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, sig)
        interactive = cfg.progress
        if interactive is None:
            interactive = sys.stdout.isatty()
        # The bar's length, and the requests left that the projected cost counts.
        priced = client.engine.prices.rates(cfg.provider.model) is not None
        total = _count_lines(prompts) if interactive or priced else None
        engine = client.engine
        view: ProgressView | None = None
        try:
            async with batch:
                await batch.start()
                warn(damaged_lines_notice(run_dir / RESULTS, batch.damaged_lines))
                metrics = batch.metrics
                assert metrics is not None

                def extra() -> str:
                    limit = f"limit {engine.concurrency_limit}  " if cfg.adaptive else ""
                    return limit + cost_text(metrics, total)

                view = make_progress(
                    total if interactive else None,
                    lambda: (metrics.succeeded + metrics.failed, metrics.failed, metrics.skipped),
                    live,
                    interactive=interactive,
                    extra=extra,
                )
                view.start()
                result = await batch.wait()
        finally:
            if view is not None:
                await view.stop()
            if install_signal_handlers:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
    warn(changed_notice(result.changed, result.changed_ids))
    warn(str(result.unfinished) if result.unfinished is not None else None)
    return RunOutput(
        result=result, run_dir=run_dir, signal_received=signal_received, pacer=batch.pacer
    )


def _again(prompts: Path, shard: Shard | None) -> Iterator[PromptRecord | InputError]:
    """The prompts read once more (for --rerun-changed), of ``shard`` only if given."""
    items = iter_records(prompts)
    if shard is None:
        return items
    from llmbatch.rundir.shard import select_shard

    return select_shard(items, shard)
