"""What the typer commands share: the options several of them declare, errors as typer
exits (the message printed by cli/run.py's ``fail``), and tables printed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from llmbatch.cli.run import error_exit, fail

if TYPE_CHECKING:
    from llmbatch.cli.tables import Table

__all__ = [
    "CaBundleOpt",
    "ConfigOpt",
    "Http2Opt",
    "InsecureOpt",
    "ProgressOpt",
    "ProviderOpt",
    "SloOpt",
    "exit_for",
    "exit_with",
    "print_tables",
]

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


def exit_with(message: str, code: int) -> typer.Exit:
    """Print ``llmbatch: error: message`` on stderr; the typer exit to raise."""
    return typer.Exit(fail(message, code).code)


def exit_for(exc: Exception) -> typer.Exit:
    """The message and exit code of an llmbatch error that ended a command."""
    return typer.Exit(error_exit(exc).code)


def print_tables(tables: list[Table]) -> None:
    """A rich table on a terminal, aligned plain text otherwise."""
    from llmbatch.cli.tables import render_plain, to_rich

    if sys.stdout.isatty():
        from rich.console import Console

        console = Console()
        for t in tables:
            console.print(to_rich(t))
    else:
        typer.echo("\n\n".join(render_plain(t) for t in tables))
