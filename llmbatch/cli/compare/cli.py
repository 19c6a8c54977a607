"""The body of ``llmbatch compare``: options to a plan, the sweep, files, exit code."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmbatch.cli.compare.files import PROMPTS_FILE, limit_prompts, make_compare_dir
from llmbatch.cli.compare.measure import Window
from llmbatch.cli.compare.profiles import LoadProfile, parse_profile
from llmbatch.cli.compare.report_html import write_report
from llmbatch.cli.compare.results import JSON_FILE, tables, write_results
from llmbatch.cli.compare.runner import STOP_MAX_ERRORS, StopConditions
from llmbatch.cli.compare.sweep import SaturationRule, SweepResult, run_sweep
from llmbatch.cli.compare.targets import Series, plan_series
from llmbatch.cli.run import (
    EXIT_ABORTED,
    EXIT_FAILED_REQUESTS,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    error_exit,
    loop_factory,
    parse_slo,
    warn_insecure,
)
from llmbatch.cli.tables import Table
from llmbatch.errors import ConfigError, InputError, LLMBatchError
from llmbatch.notices import one_line_per_cause

__all__ = ["compare_command", "parse_int_list"]


def parse_int_list(spec: str | None, flag: str) -> list[int]:
    """``2,8,32`` as integers >= 1 (ConfigError naming ``flag``)."""
    if not spec:
        return []
    out: list[int] = []
    for part in spec.split(","):
        try:
            n = int(part)
        except ValueError:
            raise ConfigError(f"{flag}: expected comma-separated integers, got {part!r}") from None
        if n < 1:
            raise ConfigError(f"{flag}: must be >= 1, got {n}")
        out.append(n)
    return out


def _say(message: str) -> None:
    print(f"llmbatch: {message}", file=sys.stderr, flush=True)


def compare_command(
    prompts: Path,
    *,
    providers: Sequence[str],
    targets: Sequence[str],
    clients: Sequence[str],
    concurrency: str | None,
    profiles: Sequence[str],
    burstiness: float,
    max_concurrency: int | None,
    ramp_up: str | None,
    ramp_up_s: float,
    seed: int,
    requests: int | None,
    duration: float | None,
    max_errors: int | None,
    warmup: str,
    cooldown: str,
    repeats: int,
    min_gain: float,
    max_error_rate: float,
    limit: int | None,
    out: Path | None,
    flags: dict[str, Any],
    config: Path | None,
    slo: str | None,
    print_tables: Callable[[list[Table]], None],
) -> int:
    """Run the compare; return the exit code (messages printed here)."""
    try:
        slo_obj = parse_slo(slo)
        series = plan_series(config, providers, targets, clients, flags=flags)
        warn_insecure(series[0].cfg)
        load = _profiles(
            series,
            concurrency,
            profiles,
            burstiness=burstiness,
            max_concurrency=max_concurrency,
            ramp=ramp_up,
            ramp_up_s=ramp_up_s,
            seed=seed,
        )
        if duration is not None and not duration > 0:
            raise ConfigError(f"--duration must be > 0 seconds, got {duration:g}")
        if not 0 <= min_gain < 10 or not 0 <= max_error_rate <= 1:
            raise ConfigError("--min-gain must be in [0, 10) and --max-error-rate in [0, 1]")
        window = Window(warmup, cooldown)
        if not prompts.is_file():
            raise InputError("no such file", path=str(prompts))
        cdir = make_compare_dir(series[0].cfg.outputs_dir, prompts, out)
        source = limit_prompts(prompts, limit, cdir / PROMPTS_FILE) if limit else prompts
        label = prompts.name + (f" (first {limit})" if limit else "")
        result = SweepResult(
            out_dir=cdir,
            prompts=source,
            label=label,
            window=window,
            stop=StopConditions(requests=requests, duration_s=duration, max_errors=max_errors),
            rule=SaturationRule(min_gain=min_gain, max_error_rate=max_error_rate),
            slo=slo_obj,
            repeats=repeats,
        )
        plan = [(s, p) for s in series for p in load]
        total = sum(len(p.levels) for _, p in plan) * repeats
        count = 0

        def on_start(name: str) -> None:
            nonlocal count
            count += 1
            _say(f"[{count}/{total} at most] {name}")

        with one_line_per_cause(), asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run_sweep(plan, source, result, on_start=on_start, after_step=write_results))
    except LLMBatchError as exc:
        return error_exit(exc).code
    return _finish(result, cdir, print_tables)


def _profiles(
    series: list[Series],
    concurrency: str | None,
    specs: Sequence[str],
    **open_loop: Any,
) -> list[LoadProfile]:
    """The --profile list; ``-j 2,8`` is ``concurrent:2,8``; none: the configured
    concurrency, closed loop (what ``llmbatch run`` does)."""
    out = []
    for spec in specs:
        kind = spec.partition(":")[0].strip().lower()
        out.append(parse_profile(spec, **(open_loop if kind in ("constant", "poisson") else {})))
    concs = parse_int_list(concurrency, "--concurrency")
    if concs:
        out.insert(0, parse_profile("concurrent:" + ",".join(map(str, concs))))
    if not out:
        out.append(parse_profile(f"concurrent:{series[0].cfg.concurrency}"))
    kinds = [p.kind for p in out]
    if len(set(kinds)) != len(kinds):
        raise ConfigError("compare: give each profile kind once, with all its levels")
    unused = [
        flag
        for flag, value, default in (
            ("--max-concurrency", open_loop["max_concurrency"], None),
            ("--ramp-up", open_loop["ramp"], None),
        )
        if value != default
    ]
    if unused and not any(p.open_loop for p in out):
        raise ConfigError(f"{', '.join(unused)}: only for request-rate profiles (--profile)")
    return out


def _finish(result: SweepResult, cdir: Path, print_tables: Callable[[list[Table]], None]) -> int:
    """Tables, files, messages; the exit code."""
    write_results(result)
    report = write_report(result)
    print_tables(tables(result))
    print(f"written: {cdir / JSON_FILE}, {cdir / 'compare.csv'}")
    print(f"report: {report}")
    if result.runs():
        try:
            from llmbatch.cli.compare.plot import plot_compare

            png = plot_compare(result)
        except ImportError:
            _say("matplotlib is not installed, no chart (pip install 'llmbatch[plot]')")
        else:
            print(f"chart: {png}")
    aborted = False
    for run in result.runs():
        if run.abort_message and run.stop_reason not in (None, STOP_MAX_ERRORS):
            aborted = True
            _say(f"{run.run_dir.name} aborted: {run.abort_message}")
        if run.rate.get("rate_kept") is False:
            _say(
                f"{run.run_dir.name}: sent {run.rate['achieved_request_rate']} req/s of "
                f"{run.rate.get('scheduled_request_rate') or run.rate['request_rate']} scheduled "
                f"(held back by {run.rate.get('rate_limited_by')}: not the server's limit)"
            )
    if result.signal_received is not None:
        _say("interrupted; the remaining steps did not run")
        return EXIT_SIGTERM if result.signal_received == signal.SIGTERM else EXIT_SIGINT
    if aborted:
        return EXIT_ABORTED
    failed = any(r.status != "ok" for r in result.runs())
    return EXIT_FAILED_REQUESTS if failed else EXIT_OK
