"""Typer parameters made from the option specs (config/options.py), so a flag's name,
type, help and choices are written once."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from llmbatch.config.options import Option

__all__ = ["typer_parameter"]


def typer_parameter(opt: Option) -> inspect.Parameter:
    """The keyword parameter a typer command declares for ``opt`` (default None: not given)."""
    decls = [opt.long_flag]
    if opt.switch:
        decls = [f"{opt.long_flag}/--no-{opt.long_flag[2:]}"]
    if opt.short:
        decls.append(opt.short)
    # Choices are checked where every source is (config/values.py); the help shows them.
    metavar = "[" + "|".join(opt.choices) + "]" if opt.choices else None
    info = typer.Option(*decls, help=opt.help, show_default=False, metavar=metavar)
    return inspect.Parameter(
        opt.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[opt.type | None, info],
    )
