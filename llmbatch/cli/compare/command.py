"""``llmbatch compare``'s options, handed to its body (cli/compare/cli.py, imported when
the command runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmbatch.cli.common import (
    CaBundleOpt,
    ConfigOpt,
    Http2Opt,
    InsecureOpt,
    ProgressOpt,
    SloOpt,
    print_tables,
)

__all__ = ["compare"]


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
        print_tables=print_tables,
    )
    raise typer.Exit(code)
