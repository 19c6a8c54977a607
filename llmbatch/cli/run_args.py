"""``llmbatch run``'s arguments read without typer, when they are plain.

``parse_run_args(argv)`` gives run_command's keywords, or None when anything is not
plainly one of these forms; then typer parses (and helps, and fails) as always:

- ``run`` first, one PROMPTS argument anywhere after it;
- each option at most once, by a name below: ``--name VALUE``, ``--name=VALUE``,
  ``-x VALUE`` (its short name), a flag alone;
- values as typer converts them: text as given, a path as ``Path`` (typer's readable
  check: an existing path that cannot be read goes to typer), numbers only when they
  look like one (typer_fast's patterns).

A value that is empty or starts with ``-``, a repeated or unknown option, ``--``,
``--help`` and everything else go to typer. tests/test_run_args.py checks this table
against typer's own command (names, types, flags, defaults) and the keywords against
what typer passes for the same arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmbatch.cli.typer_fast import FLOAT_TEXT, INT_TEXT

__all__ = ["RUN_OPTIONS", "parse_run_args"]

# keyword of run_command, kind, names, names that turn it off (kind "pair" only)
RUN_OPTIONS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("provider", "str", ("--provider", "-p"), ()),
    ("base_url", "str", ("--base-url",), ()),
    ("model", "str", ("--model",), ()),
    ("concurrency", "str", ("--concurrency", "-j"), ()),
    ("rpm", "float", ("--rpm",), ()),
    ("tpm", "float", ("--tpm",), ()),
    ("input_tpm", "float", ("--input-tpm",), ()),
    ("output_tpm", "float", ("--output-tpm",), ()),
    ("client", "str", ("--client",), ()),
    ("http2", "flag", ("--http2",), ()),
    ("out", "path", ("--out", "-o"), ()),
    ("config", "path", ("--config", "-c"), ()),
    ("text_files", "pair", ("--text",), ("--no-text",)),
    ("text_layout", "str", ("--text-layout",), ()),
    ("keep_partial", "flag", ("--keep-partial",), ()),
    ("max_runtime", "float", ("--max-runtime",), ()),
    ("retry_failed", "flag", ("--retry-failed",), ()),
    ("force_resume", "flag", ("--force-resume",), ()),
    ("insecure", "flag", ("--insecure",), ()),
    ("ca_bundle", "path", ("--ca-bundle",), ()),
    ("slo", "str", ("--slo",), ()),
    ("progress", "pair", ("--progress",), ("--no-progress",)),
    ("shard", "str", ("--shard",), ()),
    ("engine", "str", ("--engine",), ()),
    ("ray_address", "str", ("--ray-address",), ()),
    ("ray_workers", "int", ("--ray-workers",), ()),
)

# name on the command line -> (keyword, kind, value of a flag name)
_BY_NAME: dict[str, tuple[str, str, bool]] = {}
for _key, _kind, _on, _off in RUN_OPTIONS:
    for _name in _on:
        _BY_NAME[_name] = (_key, _kind, True)
    for _name in _off:
        _BY_NAME[_name] = (_key, _kind, False)


def parse_run_args(argv: list[str]) -> dict[str, Any] | None:
    """run_command's keywords for ``argv`` (without the program name), or None: typer's."""
    if not argv or argv[0] != "run":
        return None
    kwargs: dict[str, Any] = {}
    prompts: str | None = None
    args = iter(argv[1:])
    for arg in args:
        if not arg.startswith("-"):
            if prompts is not None:
                return None  # typer's "unexpected extra argument"
            prompts = arg
            continue
        name, eq, inline = arg.partition("=")
        found = _BY_NAME.get(name)
        if found is None or (eq and not name.startswith("--")):
            return None  # unknown, --help, --, or -x=V (click reads "=V" as the value)
        key, kind, on = found
        if key in kwargs:
            return None  # repeated: typer's rules
        if kind in ("flag", "pair"):
            if eq:
                return None  # typer's "does not take a value"
            kwargs[key] = on
            continue
        raw = inline if eq else next(args, None)
        value = _value(kind, raw)
        if value is None:
            return None
        kwargs[key] = value
    if prompts is None:
        return None
    path = _path(prompts)
    if path is None:
        return None
    return {"prompts": path, **kwargs}


def _value(kind: str, raw: str | None) -> Any:
    """The converted value, or None when typer should judge it."""
    if not raw or raw.startswith("-"):
        return None
    if kind == "str":
        return raw
    if kind == "path":
        return _path(raw)
    if kind == "int":
        return int(raw) if INT_TEXT.fullmatch(raw) else None
    return float(raw) if FLOAT_TEXT.fullmatch(raw) else None


def _path(raw: str) -> Path | None:
    """``Path(raw)``, or None when typer's readable check would refuse it."""
    if not raw or raw.startswith("-"):
        return None
    if os.path.exists(raw) and not os.access(raw, os.R_OK):
        return None
    return Path(raw)
