"""The command line. The only place that turns errors into messages and exit codes.

Exit codes: 0 all requests succeeded · 1 some requests failed (records written) ·
2 usage, config or input error, nothing sent · 3 run aborted (fatal provider error) ·
4 stopped at --max-cost (resumable with a larger budget) · 75 stopped at --max-runtime-s
(resumable) · 130 / 143 interrupted by SIGINT / SIGTERM (resumable).

Heavy modules are imported inside the commands so ``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import inspect
import os
import sys
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmbatch.cli.options import typer_parameter
from llmbatch.cli.run import (
    EXIT_FAILED_REQUESTS,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_USAGE,
    error_exit,
    loop_factory,
    parse_slo,
    run_command,
)
from llmbatch.config.options import options_in

if TYPE_CHECKING:
    from llmbatch.cli.tables import Table


app = typer.Typer(
    name="llmbatch",
    help="Run large sets of LLM prompts against streaming chat APIs, fast, losing nothing.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    # Plain help: typer's rich panels print a type placeholder after every option, flags
    # included (`--http2 <bool>`), and read `[ray]` in a help text as markup.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmbatch {_dist_version('llmbatch')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """llmbatch: streaming batch inference over chat APIs."""


def _fail_for(exc: Exception) -> typer.Exit:
    """The message and exit code of an llmbatch error that ended a command."""
    return typer.Exit(error_exit(exc).code)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"llmbatch: error: {message}", err=True)
    return typer.Exit(code)


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: ./config.toml if present)."),
]
SloOpt = Annotated[
    str | None, typer.Option(help="Goodput objectives, e.g. ttft=0.5,tpot=0.05 (seconds).")
]
ProgressOpt = Annotated[
    bool | None,
    typer.Option("--progress/--no-progress", help="Progress bar (default: when a terminal)."),
]
ProviderOpt = Annotated[
    str | None, typer.Option("--provider", "-p", help="Provider profile (default: mock).")
]
Http2Opt = Annotated[bool | None, typer.Option("--http2", help="HTTP/2 over TLS (native, httpx).")]
InsecureOpt = Annotated[
    bool | None, typer.Option("--insecure", help="Do not verify TLS certificates (tests only).")
]
CaBundleOpt = Annotated[
    Path | None,
    typer.Option(help="PEM file of the CAs to trust (default: $SSL_CERT_FILE, else system)."),
]


def run(prompts: Path, **options: Any) -> None:
    """Send every prompt of PROMPTS as a streaming chat completion; resumable."""
    raise typer.Exit(run_command(prompts, **options))


# The command's options come from config/options.py, where each is declared once.
run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter(
            "prompts",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[
                Path, typer.Argument(metavar="PROMPTS", help="JSONL file of prompts.")
            ],
        ),
        *(typer_parameter(o) for o in options_in("cli")),
    ]
)
app.command()(run)


@app.command()
def validate(
    prompts: Annotated[Path, typer.Argument(metavar="PROMPTS", help="JSONL file of prompts.")],
) -> None:
    """Check PROMPTS without sending anything; list every bad line."""
    from collections import Counter

    from llmbatch.errors import InputError, UnfinishedLine
    from llmbatch.notices import warn
    from llmbatch.rundir.reader import iter_records

    shapes: Counter[str] = Counter()
    bad = 0
    try:
        for item in iter_records(prompts):
            if isinstance(item, UnfinishedLine):
                warn(str(item))  # not an error: a run leaves it for the next one
            elif isinstance(item, InputError):
                bad += 1
                typer.echo(f"{item}", err=True)
            else:
                shapes[item.shape] += 1
    except InputError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    total = bad + sum(shapes.values())
    if total == 0:
        raise _fail(f"{prompts}: contains no prompts", EXIT_USAGE)
    detail = ", ".join(f"{n} {s}" for s, n in sorted(shapes.items()))
    typer.echo(f"{prompts}: {total} lines, {total - bad} valid ({detail or 'none'}), {bad} invalid")
    raise typer.Exit(EXIT_FAILED_REQUESTS if bad else EXIT_OK)


@app.command()
def estimate(
    prompts: Annotated[Path, typer.Argument(help="JSONL file of prompts.")],
    provider: ProviderOpt = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model to price.")] = None,
    base_url: Annotated[str | None, typer.Option(help="Override the provider's base URL.")] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", "-o", help="Run directory whose records to leave out."),
    ] = None,
    config: ConfigOpt = None,
    shard: Annotated[str | None, typer.Option(help="Only shard I/N of the ids.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON.")] = False,
) -> None:
    """Requests, input tokens (counted offline), output range and cost of a run; sends nothing."""
    from llmbatch.cli.estimate import estimate_command
    from llmbatch.config.load import load_config
    from llmbatch.errors import LLMBatchError

    flags = {"provider": provider, "model": model, "base_url": base_url, "run_dir": run_dir}
    try:
        cfg = load_config(config, flags=flags)
        code = estimate_command(cfg, prompts, shard=shard, as_json=as_json)
    except LLMBatchError as exc:
        raise _fail_for(exc) from None
    raise typer.Exit(code)


@app.command()
def prices(
    model: Annotated[str | None, typer.Argument(help="Model (default: the profile's).")] = None,
    provider: ProviderOpt = None,
    config: ConfigOpt = None,
) -> None:
    """What a model is charged per million tokens, and where the figure comes from."""
    from llmbatch.cli.estimate import format_prices
    from llmbatch.config.load import load_config
    from llmbatch.errors import LLMBatchError
    from llmbatch.pricing import PriceBook

    try:
        cfg = load_config(config, flags={"provider": provider})
        book = PriceBook(cfg)
        name = model or cfg.provider.model
        rates = book.rates(name)
    except LLMBatchError as exc:
        raise _fail_for(exc) from None
    if rates is None:
        typer.echo(f"llmbatch: {book.why_unpriced(name)}", err=True)
        raise typer.Exit(EXIT_FAILED_REQUESTS)
    typer.echo(format_prices(name, cfg.provider.name, rates))


@app.command("mock-server")
def mock_server(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 8000,
    tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 32,
    ttft_ms: Annotated[float, typer.Option(help="Time to first token, ms.")] = 20.0,
    itl_ms: Annotated[float, typer.Option(help="Delay between tokens, ms.")] = 2.0,
    fault: Annotated[
        list[str] | None,
        typer.Option(help="Fault rate KIND=FRACTION (repeatable), e.g. 429=0.1."),
    ] = None,
    fault_attempts: Annotated[int, typer.Option(help="Attempts of a prompt a fault hits.")] = 1,
    retry_after_ms: Annotated[
        float, typer.Option(help="Retry-After of an injected 429, ms.")
    ] = 50.0,
    fault_header: Annotated[
        list[str] | None,
        typer.Option(help="Header NAME=VALUE on injected 429s (repeatable)."),
    ] = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per limit window.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per limit window.")] = None,
    rpd: Annotated[
        float | None,
        typer.Option(help="Requests per day; the -requests headers then count per day."),
    ] = None,
    limit_window_s: Annotated[
        float, typer.Option(help="Length of the rate-limit window, s (1, 10, 60...).")
    ] = 60.0,
    input_tpm: Annotated[
        float | None, typer.Option(help="Input tokens per limit window (Anthropic-style).")
    ] = None,
    output_tpm: Annotated[
        float | None, typer.Option(help="Output tokens per limit window (Anthropic-style).")
    ] = None,
    limit_mode: Annotated[
        str,
        typer.Option(
            help="refill (continuous, OpenAI-style), sliding (window log) or fixed (windows)."
        ),
    ] = "refill",
    output_counted: Annotated[
        str, typer.Option(help="Charge output tokens at admission or at the answer's end.")
    ] = "admission",
    tokens_spread: Annotated[
        int, typer.Option(min=0, help="Answers get up to this many tokens more, by prompt.")
    ] = 0,
    limit_headers: Annotated[
        str, typer.Option(help="Send rate-limit headers: always, on_429 or never.")
    ] = "always",
    tls: Annotated[
        bool, typer.Option("--tls", help="HTTPS, with a CA and certificate made now.")
    ] = False,
    http2: Annotated[bool, typer.Option("--http2", help="HTTP/2 (and HTTP/1.1) over TLS.")] = False,
    max_streams: Annotated[
        int, typer.Option(min=1, help="HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS per connection.")
    ] = 100,
    goaway_after: Annotated[
        int | None,
        typer.Option(min=1, help="HTTP/2: send GOAWAY on a connection's Nth stream (like nginx)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(metavar="KEY", help="Answer 401 to requests without this API key."),
    ] = None,
    capacity: Annotated[
        int | None,
        typer.Option(
            min=1, help="Streams served at full speed; more in flight slow every stream down."
        ),
    ] = None,
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the certificates (default: a temp dir, removed on exit)."
        ),
    ] = None,
) -> None:
    """Serve the mock (/v1/chat/completions, /v1/completions, /v1/messages, /v1/models)."""
    import asyncio

    from llmbatch.mockserver import FAULT_KINDS, MockConfig, start_mock_server
    from llmbatch.mockserver.tls import make_mock_tls

    faults: dict[str, float] = {}
    for spec in fault or []:
        kind, _, rate = spec.partition("=")
        if kind not in FAULT_KINDS:
            raise _fail(f"--fault: unknown kind {kind!r} (one of {', '.join(FAULT_KINDS)})", 2)
        try:
            faults[kind] = float(rate)
        except ValueError:
            raise _fail(f"--fault: {kind} needs a fraction, got {rate!r}", 2) from None
    headers: dict[str, str] = {}
    for spec in fault_header or []:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip():
            raise _fail(f"--fault-header: expected NAME=VALUE, got {spec!r}", 2)
        headers[name.strip().lower()] = value.strip()
    try:
        cfg = MockConfig(
            tokens=tokens,
            ttft_s=ttft_ms / 1000,
            itl_s=itl_ms / 1000,
            faults=faults,
            fault_attempts=fault_attempts,
            retry_after_s=retry_after_ms / 1000,
            fault_headers=headers,
            rpm=rpm,
            tpm=tpm,
            rpd=rpd,
            input_tpm=input_tpm,
            output_tpm=output_tpm,
            limit_window_s=limit_window_s,
            limit_mode=limit_mode,
            limit_headers=limit_headers,
            capacity=capacity,
            api_key=api_key,
            output_counted=output_counted,
            tokens_spread=tokens_spread,
        )
    except ValueError as exc:
        raise _fail(f"mock-server: {exc}", 2) from None

    if http2 and not tls:
        raise _fail("--http2 needs --tls (clients negotiate h2 through TLS ALPN)", EXIT_USAGE)
    import shutil
    import signal
    import tempfile

    own_dir = None
    if tls and tls_dir is None:
        own_dir = tls_dir = Path(tempfile.mkdtemp(prefix="llmbatch-mock-tls-"))
    try:
        certs = make_mock_tls(tls_dir) if tls else None
    except (RuntimeError, OSError) as exc:
        raise _fail(str(exc), EXIT_USAGE) from None

    async def serve() -> None:
        server = await start_mock_server(
            cfg,
            host=host,
            port=port,
            tls=certs,
            http2=http2,
            max_streams=max_streams,
            goaway_after=goaway_after,
        )
        typer.echo(f"mock server listening on {server.url}", err=True)
        if certs is not None:
            proto = f"HTTP/2 (max {max_streams} streams per connection)" if http2 else "HTTP/1.1"
            typer.echo(
                f"serving {proto} over TLS; trust its CA: --ca-bundle {certs.ca_file}", err=True
            )
        stop = asyncio.Event()
        # SIGTERM ends it like Ctrl-C, so the certificates it made are removed.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await server.close()

    from llmbatch.errors import ConfigError

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve())
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:  # LLMBATCH_LOOP
        raise _fail(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise _fail(f"cannot listen on {host}:{port}: {exc.strerror}", EXIT_USAGE) from None
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_SIGINT)


# -- report and compare ---------------------------------------------------------------------
def _print_tables(tables: list[Table]) -> None:
    """A rich table on a terminal, aligned plain text otherwise."""
    from llmbatch.cli.tables import render_plain, to_rich

    if sys.stdout.isatty():
        from rich.console import Console

        console = Console()
        for t in tables:
            console.print(to_rich(t))
    else:
        typer.echo("\n\n".join(render_plain(t) for t in tables))


@app.command()
def report(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="Run directory, e.g. outputs/example-mock.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print the summary as CSV (dotted keys, one row).")
    ] = False,
    recompute: Annotated[
        bool,
        typer.Option("--recompute", help="Recompute from results.jsonl, not summary.json."),
    ] = False,
    slo: Annotated[
        str | None,
        typer.Option(help="Goodput objectives, e.g. ttft=0.5,tpot=0.05 (implies --recompute)."),
    ] = None,
) -> None:
    """Show a run's metrics (also while it runs): a table, JSON or CSV."""
    from llmbatch.cli.report import load_report, report_csv, report_json, report_tables
    from llmbatch.errors import ConfigError, RunDirError
    from llmbatch.notices import warn
    from llmbatch.rundir.writer import damaged_lines_notice

    if as_json and as_csv:
        raise _fail("--json and --csv exclude each other", EXIT_USAGE)
    try:
        slo_obj = parse_slo(slo) if slo else None
        summary = load_report(run_dir, recompute=recompute, slo=slo_obj)
    except (ConfigError, RunDirError) as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    warn(damaged_lines_notice(run_dir / "results.jsonl", summary["report"].get("damaged_lines")))
    if as_json:
        typer.echo(report_json(summary))
    elif as_csv:
        typer.echo(report_csv(summary), nl=False)
    else:
        _print_tables(report_tables(summary, run_dir))


@app.command()
def compare(
    prompts: Annotated[Path, typer.Argument(metavar="PROMPTS", help="JSONL file of prompts.")],
    provider: Annotated[
        list[str] | None,
        typer.Option("--provider", "-p", help="Provider profile (repeatable; default: mock)."),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            help="An endpoint to compare, NAME=URL[,model=M][,key-env=VAR][,kind=K] "
            "(repeatable; no config file needed)."
        ),
    ] = None,
    client: Annotated[
        list[str] | None,
        typer.Option(help="Client adapter (repeatable): aiohttp, httpx, httpx-aiohttp, native."),
    ] = None,
    concurrency: Annotated[
        str | None,
        typer.Option(
            "--concurrency",
            "-j",
            help="Closed-loop ladder, e.g. 1,2,4,8 (= --profile concurrent:...).",
        ),
    ] = None,
    profile: Annotated[
        list[str] | None,
        typer.Option(
            help="Load profile (repeatable): concurrent:1,2,4 | constant:5,10 | poisson:5,10 "
            "(req/s) | synchronous."
        ),
    ] = None,
    burstiness: Annotated[
        float, typer.Option(help="Poisson profiles: gamma shape (1 = Poisson, <1 burstier).")
    ] = 1.0,
    max_concurrency: Annotated[
        int | None, typer.Option(help="Request-rate profiles: cap on requests in flight.")
    ] = None,
    ramp_up: Annotated[
        str | None, typer.Option(help="Request-rate profiles: linear or exponential ramp.")
    ] = None,
    ramp_up_s: Annotated[float, typer.Option(help="Length of the ramp, seconds.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the Poisson/gamma arrival times.")] = 0,
    requests: Annotated[
        int | None, typer.Option(min=1, help="Requests per step (the prompts cycle if fewer).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Seconds per step (then in-flight requests finish).")
    ] = None,
    max_errors: Annotated[
        int | None, typer.Option(min=1, help="Stop a step after this many failed requests.")
    ] = None,
    warmup: Annotated[
        str, typer.Option(help="Left out at each step's start: 5s, 20 (requests) or 10%.")
    ] = "0",
    cooldown: Annotated[
        str, typer.Option(help="Left out at each step's end: 5s, 20 (requests) or 10%.")
    ] = "0",
    repeats: Annotated[int, typer.Option(min=1, help="Runs of each step (spread shown).")] = 1,
    min_gain: Annotated[
        float, typer.Option(help="Saturated when throughput grows less than this share.")
    ] = 0.10,
    max_error_rate: Annotated[
        float, typer.Option(help="Saturated when more than this share of requests fail.")
    ] = 0.10,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Send only the first N prompts of the file.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Compare directory (default outputs/compare-<...>)."),
    ] = None,
    http2: Http2Opt = None,
    insecure: InsecureOpt = None,
    ca_bundle: CaBundleOpt = None,
    config: ConfigOpt = None,
    slo: SloOpt = None,
    progress: ProgressOpt = None,
) -> None:
    """Sweep PROMPTS over every target × client under each load profile, one step after
    another, to saturation; print the tables and write compare.json, compare.csv,
    compare.html (and compare.png).
    """
    from llmbatch.cli.compare.cli import compare_command

    code = compare_command(
        prompts,
        providers=provider or [],
        targets=target or [],
        clients=client or [],
        concurrency=concurrency,
        profiles=profile or [],
        burstiness=burstiness,
        max_concurrency=max_concurrency,
        ramp_up=ramp_up,
        ramp_up_s=ramp_up_s,
        seed=seed,
        requests=requests,
        duration=duration,
        max_errors=max_errors,
        warmup=warmup,
        cooldown=cooldown,
        repeats=repeats,
        min_gain=min_gain,
        max_error_rate=max_error_rate,
        limit=limit,
        out=out,
        flags={"progress": progress, "http2": http2, "insecure": insecure, "ca_bundle": ca_bundle},
        config=config,
        slo=slo,
        print_tables=_print_tables,
    )
    raise typer.Exit(code)


@app.command()
def merge(
    dirs: Annotated[
        list[Path], typer.Argument(metavar="DIR", help="The run directories of every shard.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--run-dir", "-o", help="Merged run dir (default: first name minus -shardIofN)."
        ),
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="The prompts file, if not at the path run.json names.")
    ] = None,
) -> None:
    """Join the finished run directories of --shard I/N runs into one run directory."""
    from llmbatch.cli.merge import default_merge_dir, merge_shards
    from llmbatch.errors import LLMBatchError

    try:
        result = merge_shards(dirs, out or default_merge_dir(dirs), prompts=prompts)
    except LLMBatchError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    typer.echo(
        f"merged {len(result.shards)} shards into {result.out_dir}: {result.records} records "
        f"({result.succeeded} succeeded, {result.failed} failed)"
    )


# -- export and providers (issue 8) ------------------------------------------------------
@app.command()
def export(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A run directory (outputs/<run>).")
    ],
    fmt: Annotated[
        str,
        typer.Option("--format", "-f", help="openai-batch, anthropic-batch, gemini-batch or csv."),
    ] = "openai-batch",
    ordered: Annotated[
        bool, typer.Option("--ordered", help="In input order (default: completion order).")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default: stdout).")
    ] = None,
) -> None:
    """Write a run's results as an OpenAI Batch or Anthropic batch file, or as CSV."""
    from llmbatch.cli.export import export_run
    from llmbatch.errors import LLMBatchError
    from llmbatch.notices import warn
    from llmbatch.rundir.writer import RESULTS, damaged_lines_notice

    damaged: list[int] = []
    try:
        if output is None:
            sys.stdout.flush()
            n = export_run(run_dir, fmt, ordered=ordered, stdout=sys.stdout.buffer, damaged=damaged)
            sys.stdout.buffer.flush()
        else:
            n = export_run(run_dir, fmt, ordered=ordered, output=output, damaged=damaged)
    except LLMBatchError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    warn(damaged_lines_notice(run_dir / RESULTS, damaged))
    if output is not None:
        typer.echo(f"exported {n} records to {output}", err=True)


@app.command()
def providers(config: ConfigOpt = None) -> None:
    """List provider profiles: kind, base URL, model, and whether the key variable is set."""
    from llmbatch.config.load import load_profiles
    from llmbatch.errors import ConfigError
    from llmbatch.redaction import url_without_credentials

    try:
        profiles = load_profiles(config)
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    rows = [("NAME", "KIND", "BASE URL", "MODEL", "API KEY")]
    for name, p in sorted(profiles.items()):
        if p.api_key_env is None:
            key = "-"
        else:
            state = "set" if os.environ.get(p.api_key_env, "").strip() else "not set"
            key = f"${p.api_key_env} ({state})"
        url = "(embedded mock)" if p.embedded_mock else url_without_credentials(p.base_url)
        rows.append((name, p.kind, url, p.model or "-", key))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
