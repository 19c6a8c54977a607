"""The ``llmbatch run`` command's body: run a prompts file, return the exit code.

cli/app.py's typer command parses the arguments and calls ``run_command``, which
turns llmbatch's errors into messages and exit codes; app.py turns the returned
code into typer's exit.

Exit codes: 0 all requests succeeded · 1 some requests failed (records written) ·
2 usage, config or input error, nothing sent · 3 run aborted (fatal provider error) ·
4 stopped at --max-cost with work left (resumable with a larger budget) ·
75 stopped at --max-runtime-s (resumable) · 130 / 143 interrupted by SIGINT / SIGTERM
(resumable).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbatch.config.options import options_in

if TYPE_CHECKING:
    from llmbatch.cli.job import RunOutput
    from llmbatch.config.model import RunConfig
    from llmbatch.engine.arrivals import ArrivalProfile
    from llmbatch.metrics import SLO
    from llmbatch.rundir.shard import Shard

__all__ = [
    "EXIT_ABORTED",
    "EXIT_BUDGET",
    "EXIT_FAILED_REQUESTS",
    "EXIT_MAX_RUNTIME",
    "EXIT_OK",
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "EXIT_USAGE",
    "UVLOOP_MIN_PROMPTS",
    "CommandExit",
    "echo",
    "error_exit",
    "loop_factory",
    "parse_slo",
    "run_command",
    "warn_insecure",
]

EXIT_OK = 0
EXIT_FAILED_REQUESTS = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_BUDGET = 4
EXIT_MAX_RUNTIME = 75
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

# A run of fewer prompts than this stays on asyncio's own loop: importing uvloop costs
# ~15 ms of CPU, more than it saves on a few requests (bench/RESULTS.md, start-up).
UVLOOP_MIN_PROMPTS = 100


class CommandExit(Exception):
    """A command ends with ``code``; its message (if any) is already printed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def echo(message: str, *, err: bool = False) -> None:
    """Write ``message`` and a newline, flushed, as typer's ``echo`` does (ANSI escapes
    removed when the stream is not a terminal)."""
    stream = sys.stderr if err else sys.stdout
    if stream is None:
        return
    if "\x1b" in message and not _isatty(stream):
        import re

        message = re.sub(r"\033\[[;?0-9]*[a-zA-Z]", "", message)  # click's strip_ansi
    stream.write(message + "\n")
    stream.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:  # a stream without a usable isatty is not a terminal
        return False


def fail(message: str, code: int) -> CommandExit:
    """Print ``llmbatch: error: message`` on stderr; the exit to raise."""
    echo(f"llmbatch: error: {message}", err=True)
    return CommandExit(code)


def error_exit(exc: Exception) -> CommandExit:
    """The message and exit code of an llmbatch error that ended a command."""
    from llmbatch.errors import ConfigError, InputError, RunDirError

    # Before anything was sent (usage, config, input, run directory): 2; later: 3.
    code = EXIT_USAGE if isinstance(exc, (ConfigError, InputError, RunDirError)) else EXIT_ABORTED
    return fail(str(exc), code)


def warn_insecure(cfg: RunConfig) -> None:
    """Say once that certificates are not verified (the library's own warning is muted)."""
    if not cfg.insecure:
        return
    import warnings

    from llmbatch.errors import InsecureTLSWarning

    echo(
        "llmbatch: warning: insecure: TLS certificates are NOT verified (for tests "
        "only); to trust a private CA use --ca-bundle PATH",
        err=True,
    )
    warnings.filterwarnings("ignore", category=InsecureTLSWarning)


def parse_slo(spec: str | None) -> SLO:
    """``ttft=0.5,tpot=0.05`` as an SLO (ConfigError naming the bad part)."""
    from llmbatch.errors import ConfigError
    from llmbatch.metrics import SLO

    if not spec:
        return SLO()
    values: dict[str, float] = {}
    for part in spec.split(","):
        name, _, val = part.partition("=")
        name = name.strip()
        if name not in ("ttft", "tpot", "e2el"):
            raise ConfigError(f"--slo: unknown metric {name!r} (ttft, tpot, e2el)")
        try:
            values[f"{name}_s"] = float(val)
        except ValueError:
            raise ConfigError(f"--slo: {name} needs seconds, got {val!r}") from None
    return SLO(**values)


def parse_arrivals(request_rate: float | None, burstiness: float | None) -> ArrivalProfile | None:
    """``--request-rate`` (and ``--burstiness``) as an open-loop arrival profile: Poisson
    arrivals at the rate, gamma-distributed gaps for a burstiness other than 1, as
    ``vllm bench serve`` defines them. None (closed loop) without a rate."""
    from llmbatch.engine.arrivals import ArrivalProfile
    from llmbatch.errors import ConfigError

    if request_rate is None:
        if burstiness is not None:
            raise ConfigError("--burstiness shapes --request-rate's arrivals: give a rate too")
        return None
    try:
        return ArrivalProfile(rate_rps=request_rate, burstiness=burstiness or 1.0)
    except ValueError as exc:
        raise ConfigError(f"--request-rate: {exc}") from None


def run_command(prompts: Path, **options: Any) -> int:
    """``llmbatch run`` with its options as keywords (config/options.py names); the exit
    code. Options left at None were not given."""
    command = {o.name: options.pop(o.name, None) for o in options_in("cli", "command")}
    try:
        return _run(prompts, options, command)
    except CommandExit as exc:
        return exc.code


def _run(prompts: Path, flags: dict[str, Any], command: dict[str, Any]) -> int:
    """Run with ``flags`` (what the config merge takes) and ``command`` (how to run)."""
    from llmbatch.config.load import load_config
    from llmbatch.errors import LLMBatchError
    from llmbatch.notices import one_line_per_cause, warn

    engine = command["engine"] or "local"
    try:
        cfg = load_config(command["config"], flags=flags, warn=warn)
        warn_insecure(cfg)
        slo_obj = parse_slo(command["slo"])
        arrivals = parse_arrivals(command["request_rate"], command["burstiness"])
        if engine not in ("local", "ray"):
            raise fail(f"--engine: expected local or ray, got {engine!r}", EXIT_USAGE)
        if command["dry_run"]:
            from llmbatch.cli.estimate import estimate_command

            return estimate_command(cfg, prompts, shard=command["shard"])
        with one_line_per_cause():
            if engine == "ray":
                if arrivals is not None:
                    raise fail("--request-rate runs on --engine local only", EXIT_USAGE)
                return _run_ray(
                    cfg,
                    prompts,
                    slo_obj,
                    command["shard"],
                    command["ray_address"],
                    command["ray_workers"],
                )
            shard = None
            if command["shard"]:
                from llmbatch.rundir.shard import parse_shard

                shard = parse_shard(command["shard"])
            output = _run_loop(cfg, prompts, slo_obj, shard, arrivals)
    except LLMBatchError as exc:
        raise error_exit(exc) from None
    return _report_and_code(output)


def _run_ray(
    cfg: RunConfig,
    prompts: Path,
    slo: SLO,
    shard: str | None,
    address: str | None,
    workers: int | None,
) -> int:
    import asyncio

    from llmbatch.cli.job import default_run_dir
    from llmbatch.cli.report import format_summary
    from llmbatch.ray.engine import execute_ray_run

    if shard:
        raise fail("--shard and --engine ray exclude each other (Ray spreads the ids)", 2)
    if workers is not None and workers < 1:  # checked here: a typer min= costs start-up time
        raise fail(f"--ray-workers must be at least 1, got {workers}", 2)
    run_dir = default_run_dir(cfg, prompts)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        out = runner.run(
            execute_ray_run(cfg, prompts, run_dir, address=address, workers=workers, slo=slo)
        )
    echo(format_summary(out.summary, out.run_dir))
    per = out.summary["engine"]["records_per_worker"]
    echo("per worker: " + (", ".join(f"{w} {n}" for w, n in sorted(per.items())) or "-"))
    from llmbatch.notices import warn
    from llmbatch.rundir.results import changed_notice

    warn(changed_notice(out.changed, out.changed_ids))
    return _exit_code(
        out.stop_reason, out.abort_message, out.pending_left, out.failed, out.signal_received
    )


def _run_loop(
    cfg: RunConfig, prompts: Path, slo: SLO, shard: Shard | None, arrivals: ArrivalProfile | None
) -> RunOutput:
    import asyncio

    from llmbatch.cli.job import RunHooks, execute_run
    from llmbatch.engine.gctune import batch_gc

    with batch_gc(), asyncio.Runner(loop_factory=loop_factory(prompts)) as runner:
        hooks = RunHooks(arrivals=arrivals) if arrivals is not None else None
        return runner.run(execute_run(cfg, prompts, slo=slo, shard=shard, hooks=hooks))


def few_prompts(prompts: Path) -> bool:
    """Fewer than UVLOOP_MIN_PROMPTS lines, judged without reading a large file."""
    import stat

    try:
        st = prompts.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > 256 * 1024:
            return False  # a pipe must not be read here; a large file has many prompts
        return prompts.read_bytes().count(b"\n") < UVLOOP_MIN_PROMPTS
    except OSError:
        return False  # the reader reports it, with its own message


def loop_factory(prompts: Path | None = None) -> Any:
    """uvloop when installed (``pip install llmbatch[fast]``), except for a run of few
    ``prompts``; LLMBATCH_LOOP=asyncio or uvloop chooses."""
    from llmbatch.config.files import loop_choice

    choice = loop_choice()  # ConfigError for a value that is none of auto, asyncio, uvloop
    if choice == "asyncio" or (choice != "uvloop" and prompts and few_prompts(prompts)):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _report_and_code(output: RunOutput) -> int:
    from llmbatch.cli.report import format_summary

    result = output.result
    summary = result.metrics.summary()
    echo(format_summary(summary, output.run_dir))
    return _exit_code(
        result.stop_reason,
        result.abort_message,
        result.pending_left,
        result.metrics.failed,
        output.signal_received,
    )


def _exit_code(
    stop_reason: str | None,
    abort_message: str | None,
    pending_left: bool,
    failed: int,
    signal_received: int | None,
) -> int:
    import signal

    from llmbatch.engine import StopReason

    if stop_reason == StopReason.ABORTED:
        echo(f"llmbatch: run aborted: {abort_message}", err=True)
        echo("llmbatch: fix the cause and run the same command to resume", err=True)
        return EXIT_ABORTED
    if stop_reason == StopReason.INTERRUPTED:
        echo("llmbatch: interrupted; run the same command to resume", err=True)
        return EXIT_SIGTERM if signal_received == signal.SIGTERM else EXIT_SIGINT
    if stop_reason == StopReason.BUDGET and pending_left:
        echo(f"llmbatch: stopped at the cost budget: {abort_message}", err=True)
        echo("llmbatch: run the same command with a larger --max-cost to resume", err=True)
        return EXIT_BUDGET
    if stop_reason == StopReason.MAX_RUNTIME and pending_left:
        echo("llmbatch: --max-runtime-s reached; run the same command to resume", err=True)
        return EXIT_MAX_RUNTIME
    if failed:
        return EXIT_FAILED_REQUESTS
    return EXIT_OK
