"""The ``llmbatch`` console script (and ``python -m llmbatch``).

``llmbatch run`` with plain arguments (run_args.py) runs at once, and ``llmbatch
--version`` answers, without importing typer: that import and building the command
cost ~35 ms of a one-prompt run's CPU (bench/RESULTS.md). The end is handled as typer
handles it: the command's exit code, 130 for Ctrl-C, 1 and no traceback when stdout is
a closed pipe, ``Aborted!`` on end of input. Everything else (other commands,
``--help``, arguments the fast reading does not take, shell completion) goes to
cli.py's typer app, unchanged.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["main"]


def main() -> None:
    """Console-script entry point."""
    args = sys.argv[1:]
    if not _completion_requested():
        if args == ["--version"]:  # what typer's eager --version prints
            from llmbatch import __version__

            sys.stdout.write(f"llmbatch {__version__}\n")
            sys.stdout.flush()
            sys.exit(0)
        from llmbatch.cli.run_args import parse_run_args

        kwargs = parse_run_args(args)
        if kwargs is not None:
            sys.exit(_run(kwargs))
    from llmbatch.cli.app import main as typer_main

    typer_main()


def _run(kwargs: dict[str, Any]) -> int:
    """run_command's exit code, with typer's handling of how a command can end."""
    from llmbatch.cli.run import EXIT_SIGINT, echo, run_command

    try:
        return run_command(**kwargs)
    except KeyboardInterrupt:
        return EXIT_SIGINT
    except EOFError:
        echo("", err=True)
        echo("Aborted!", err=True)
        return 1
    except BrokenPipeError:
        _quiet_closed_pipes()
        return 1


def _completion_requested() -> bool:
    """Typer answers a shell's completion request (``_LLMBATCH_COMPLETE=...``)."""
    return any(k.startswith("_") and k.endswith("_COMPLETE") and v for k, v in os.environ.items())


def _quiet_closed_pipes() -> None:
    """Let the interpreter's final flush of a closed stdout/stderr pass silently."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass
