"""The ``llmbatch`` console script (and ``python -m llmbatch``).

``llmbatch run`` with plain arguments (run_args.py) runs at once, without importing
typer: that import and building the command cost ~35 ms of a one-prompt run's CPU
(bench/RESULTS.md). The end is handled as typer handles it: the command's exit code,
130 for Ctrl-C, 1 and no traceback when stdout is a closed pipe, ``Aborted!`` on end
of input. Everything else (other commands, ``--help``, arguments the fast reading
does not take, shell completion) goes to cli.py's typer app, unchanged.
"""

from __future__ import annotations

import os
import sys

__all__ = ["main"]


def main() -> None:
    """Console-script entry point."""
    from .run_args import parse_run_args

    kwargs = None if _completion_requested() else parse_run_args(sys.argv[1:])
    if kwargs is None:
        from .cli import main as typer_main

        typer_main()
        return
    from .run_command import EXIT_SIGINT, echo, run_command

    try:
        code = run_command(**kwargs)
    except KeyboardInterrupt:
        code = EXIT_SIGINT
    except EOFError:
        echo("", err=True)
        echo("Aborted!", err=True)
        code = 1
    except BrokenPipeError:
        _quiet_closed_pipes()
        code = 1
    sys.exit(code)


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
