"""Typer's parameter coercion for plain types, without importing pydantic.

Typer (0.2x) coerces every parameter of an invoked command, set or not, through a
pydantic ``TypeAdapter``. Importing pydantic and building those adapters cost about
100 ms of CPU for ``llmbatch run``: a third of a one-prompt run's start-up. Here the
plain annotations llmbatch uses (str, int, float, Path, bool) take a direct
conversion; every other annotation, constraint or odd value goes to typer's own
coercion, so messages and rules stay typer's. ``install()`` does nothing when the
installed typer does not have the internals this relies on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

__all__ = ["FLOAT_TEXT", "INT_TEXT", "install", "only_invoked"]

# What a number on the command line looks like; anything else gets typer's own rules.
INT_TEXT = re.compile(r"-?[0-9]+")
FLOAT_TEXT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_PLAIN = (str, int, float, bool, Path)
_installed = False


def install() -> bool:
    """Route plain parameter types around pydantic; True when typer allowed it."""
    global _installed
    if _installed:
        return True
    try:
        from typer import core
        from typer._coercion import RuntimeParam
        from typer._param_types import coerce_cli_path
    except ImportError:
        return False
    found = getattr(core, "build_runtime_param", None)
    if found is None or not hasattr(RuntimeParam, "_coerce_value"):
        return False
    original: Callable[[Any], Any] = found

    class PlainRuntimeParam(RuntimeParam):
        """Direct conversion of a plain value; typer's adapter for anything else."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            ann = self.annotation
            if ann is str and isinstance(value, str):
                return value
            if ann is bool and isinstance(value, bool):
                return value
            if isinstance(value, str):
                if ann is int and INT_TEXT.fullmatch(value):
                    return int(value)
                if ann is float and FLOAT_TEXT.fullmatch(value):
                    return float(value)
            if ann is Path and isinstance(value, (str, Path)):
                info = self.parameter_info
                return coerce_cli_path(
                    Path(value), info, path_type=info.path_type or Path, param=param, ctx=ctx
                )
            return self._typer(param)._coerce_value(value, param=param, ctx=ctx)

        def _typer(self, param: Any) -> Any:
            return original(param.type_descriptor)

    def build(descriptor: Any) -> Any:
        info = descriptor.parameter_info
        plain = (
            descriptor.annotation in _PLAIN
            and descriptor.file_annotation is None
            and info.parser is None
            and info.min is None
            and info.max is None
            and not info.clamp
            and getattr(descriptor, "choices", None) is None
        )
        if not plain:
            return original(descriptor)
        return PlainRuntimeParam(parameter_info=info, annotation=descriptor.annotation)

    setattr(core, "build_runtime_param", build)  # noqa: B010 - a module attribute
    _installed = True
    return True


def only_invoked(app: typer.Typer, args: list[str]) -> typer.Typer:
    """``app`` with only the command that ``args`` invokes, when they name one.

    Typer builds every registered command (their signatures and type hints read,
    their parameters made) before it runs one: ~25 ms of a one-prompt run's CPU, most
    of it for commands not invoked. The copy keeps the group's callback (``--version``),
    so ``llmbatch run ...`` parses, helps and fails exactly as before; anything else
    (no command, ``--help``, a mistyped name that typer may suggest a fix for) gets
    the whole app.
    """
    import copy

    if not args or args[0].startswith("-"):
        return app
    for info in app.registered_commands:
        callback = info.callback
        name = info.name or (callback.__name__.lower().replace("_", "-") if callback else None)
        if name == args[0]:
            narrow = copy.copy(app)
            narrow.registered_commands = [info]
            narrow.registered_groups = []
            return narrow
    return app
