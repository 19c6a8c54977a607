"""One run, end to end: config → prompts → client/provider → dispatcher → run directory.

The CLI calls ``execute_run`` inside an event loop and maps its result to an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from .clients import make_client
from .config import RunConfig, resolve_api_key
from .dispatcher import Dispatcher, RunResult, StopReason
from .errors import InputError
from .identity import run_identity
from .metrics import SLO, RunMetrics
from .mockserver import MockConfig, start_mock_server
from .notices import warn
from .progress import make_progress
from .providers import make_provider
from .reader import iter_records
from .records import PromptRecord
from .shard import Shard, select_shard
from .writer import RESULTS, RunDir, damaged_lines_notice

__all__ = ["RunOutput", "default_run_dir", "execute_run", "open_prompts"]


@dataclass
class RunOutput:
    """What the CLI needs after a run: the result, where it went, which signal stopped it."""

    result: RunResult
    run_dir: Path
    signal_received: int | None


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
    return cfg.out_dir / "-".join(parts)


def open_prompts(prompts: Path) -> Iterator[PromptRecord | InputError]:
    """The prompt iterator, with an empty or unreadable file reported before anything starts."""
    items = iter_records(prompts)
    first = next(items, None)
    if first is None:
        raise InputError("contains no prompts", path=str(prompts))
    return itertools.chain([first], items)


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


@contextlib.asynccontextmanager
async def _base_url(cfg: RunConfig) -> AsyncIterator[str]:
    """The provider's base URL; for the embedded mock, a server started for this run."""
    if not cfg.provider.embedded_mock:
        yield cfg.provider.base_url
        return
    m = cfg.mock
    server = await start_mock_server(MockConfig(tokens=m.tokens, ttft_s=m.ttft_s, itl_s=m.itl_s))
    try:
        yield server.url
    finally:
        await server.close()


async def execute_run(
    cfg: RunConfig,
    prompts: Path,
    *,
    slo: SLO | None = None,
    install_signal_handlers: bool = True,
    shard: Shard | None = None,
) -> RunOutput:
    """Run every prompt of ``prompts`` (of ``shard`` only, if given); resumable by calling
    again with the same config."""
    api_key = resolve_api_key(cfg.provider)  # before anything is sent
    items = open_prompts(prompts)
    run_dir = default_run_dir(cfg, prompts, shard)
    meta = run_identity(cfg, prompts)
    if shard is not None:
        items = select_shard(items, shard)
        meta["shard"] = shard.spec
    rundir, index = RunDir.open(
        run_dir,
        meta,
        retry_failed=cfg.retry_failed,
        text_files=cfg.text_files,
        force_resume=cfg.force_resume,
    )
    warn(damaged_lines_notice(run_dir / RESULTS, index.damaged_lines))
    metrics = RunMetrics(
        slo=slo or SLO(), done_before_succeeded=index.succeeded, done_before_failed=index.failed
    )
    signal_received: int | None = None
    try:
        async with _base_url(cfg) as base_url:
            provider = make_provider(cfg.provider, api_key, base_url)
            client = make_client(
                cfg.client,
                max_connections=cfg.max_concurrency if cfg.adaptive else cfg.concurrency,
                timeouts=cfg.timeouts,
                verify_tls=not cfg.insecure,
                http2=cfg.http2,
            )
            async with client:
                dispatcher = Dispatcher(
                    cfg,
                    provider,
                    client,
                    rundir,
                    index,
                    metrics,
                    secrets=(api_key,) if api_key else (),
                )
                loop = asyncio.get_running_loop()

                def on_signal(signum: int) -> None:
                    nonlocal signal_received
                    if signal_received is None:
                        signal_received = signum
                        dispatcher.stop(StopReason.INTERRUPTED)
                        print(
                            f"llmbatch: {signal.Signals(signum).name}: finishing "
                            f"{dispatcher.in_flight} requests in flight (up to {cfg.grace_s:g}s); "
                            "signal again to stop now",
                            file=sys.stderr,
                            flush=True,
                        )
                    else:  # a second signal: stop now (files stay consistent)
                        dispatcher.stop(StopReason.INTERRUPTED, grace_s=0)

                if install_signal_handlers:
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        loop.add_signal_handler(sig, on_signal, sig)
                deadline = None
                if cfg.max_runtime_s is not None:
                    deadline = loop.call_later(
                        cfg.max_runtime_s, dispatcher.stop, StopReason.MAX_RUNTIME
                    )
                total = None
                interactive = cfg.progress
                if interactive is None:
                    interactive = sys.stdout.isatty()
                if interactive:
                    total = _count_lines(prompts)
                aimd = dispatcher.aimd
                view = make_progress(
                    total,
                    lambda: (metrics.succeeded + metrics.failed, metrics.failed, metrics.skipped),
                    dispatcher,
                    interactive=interactive,
                    extra=(lambda: f"limit {aimd.limit}") if aimd is not None else None,
                )
                view.start()
                try:
                    result = await dispatcher.run(items)
                finally:
                    await view.stop()
                    if deadline is not None:
                        deadline.cancel()
                    if install_signal_handlers:
                        for sig in (signal.SIGINT, signal.SIGTERM):
                            loop.remove_signal_handler(sig)
    finally:
        await rundir.aclose()
    return RunOutput(result=result, run_dir=run_dir, signal_received=signal_received)
