"""The command line. The only place that turns errors into messages and exit codes.

Exit codes: 0 all requests succeeded · 1 some requests failed (records written) ·
2 usage, config or input error, nothing sent · 3 run aborted (fatal provider error) ·
4 stopped at --max-cost (resumable with a larger budget) · 75 stopped at --max-runtime-s
(resumable) · 130 / 143 interrupted by SIGINT / SIGTERM (resumable).

This module is the command table: each command is registered here, in the order
``--help`` lists them; the long ones are declared in modules of their own (``run``'s
options come from config/options.py, ``mock-server`` is in mock.py, ``compare`` in
compare/command.py). Heavy modules are imported inside the commands so ``--help`` and
``--version`` stay fast.
"""

from __future__ import annotations

import inspect
import os
import sys
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import Annotated, Any

import typer

from llmbatch.cli.common import ConfigOpt, ProviderOpt, exit_for, exit_with, print_tables
from llmbatch.cli.compare.command import compare
from llmbatch.cli.mock import mock_server
from llmbatch.cli.options import typer_parameter
from llmbatch.cli.run import (
    EXIT_FAILED_REQUESTS,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_USAGE,
    parse_slo,
    run_command,
)
from llmbatch.config.options import options_in

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
        raise exit_with(str(exc), EXIT_USAGE) from None
    total = bad + sum(shapes.values())
    if total == 0:
        raise exit_with(f"{prompts}: contains no prompts", EXIT_USAGE)
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
        raise exit_for(exc) from None
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
        raise exit_for(exc) from None
    if rates is None:
        typer.echo(f"llmbatch: {book.why_unpriced(name)}", err=True)
        raise typer.Exit(EXIT_FAILED_REQUESTS)
    typer.echo(format_prices(name, cfg.provider.name, rates))


app.command("mock-server")(mock_server)


# -- reading run directories ----------------------------------------------------------
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
    from llmbatch.rundir.results import damaged_lines_notice

    if as_json and as_csv:
        raise exit_with("--json and --csv exclude each other", EXIT_USAGE)
    try:
        slo_obj = parse_slo(slo) if slo else None
        summary = load_report(run_dir, recompute=recompute, slo=slo_obj)
    except (ConfigError, RunDirError) as exc:
        raise exit_with(str(exc), EXIT_USAGE) from None
    warn(damaged_lines_notice(run_dir / "results.jsonl", summary["report"].get("damaged_lines")))
    if as_json:
        typer.echo(report_json(summary))
    elif as_csv:
        typer.echo(report_csv(summary), nl=False)
    else:
        print_tables(report_tables(summary, run_dir))


app.command()(compare)


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
        raise exit_with(str(exc), EXIT_USAGE) from None
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
    from llmbatch.rundir.layout import RESULTS
    from llmbatch.rundir.results import damaged_lines_notice

    damaged: list[int] = []
    try:
        if output is None:
            sys.stdout.flush()
            n = export_run(run_dir, fmt, ordered=ordered, stdout=sys.stdout.buffer, damaged=damaged)
            sys.stdout.buffer.flush()
        else:
            n = export_run(run_dir, fmt, ordered=ordered, output=output, damaged=damaged)
    except LLMBatchError as exc:
        raise exit_with(str(exc), EXIT_USAGE) from None
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
        raise exit_with(str(exc), EXIT_USAGE) from None
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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_SIGINT)
