"""The sources of configuration below the flags: config.toml and ``LLMBATCH_*`` variables.

A file holds only known tables (``[run]``, ``[timeouts]``, ``[retry]``, ``[mock]``,
``[providers.*]``, ``[prices.*]``); a variable is ``LLMBATCH_`` + an option's name. A
misspelt table, key or variable is never ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from llmbatch.config.model import ModelPrices
from llmbatch.config.options import options_in
from llmbatch.config.values import as_float
from llmbatch.errors import ConfigError

__all__ = [
    "CONFIG_OPTIONS",
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "LOOP_VARIABLE",
    "check_top_level",
    "from_env",
    "loop_choice",
    "prices_from",
    "read_file",
    "section",
    "unknown_variables",
]

DEFAULT_CONFIG_FILE = "config.toml"
ENV_PREFIX = "LLMBATCH_"
# The tables a config file may hold; anything else at the top level is a mistake.
_SECTIONS = ("run", "timeouts", "retry", "mock", "providers", "prices")
# What a config file's [run] table and LLMBATCH_* variables may set (config/options.py).
CONFIG_OPTIONS = {o.name: o for o in options_in("config")}
# The event loop of a command (cli/run.py, ray/actors.py): not a run option, but an
# LLMBATCH_* variable all the same, checked like the others.
LOOP_VARIABLE = "LLMBATCH_LOOP"
LOOP_CHOICES = ("auto", "asyncio", "uvloop")


def read_file(config_path: str | Path | None) -> tuple[dict[str, Any], str]:
    """The config file's tables and its name for messages; ``config_path`` None means
    ./config.toml if there is one (else no tables, named ``defaults``)."""
    if config_path is None:
        default = Path(DEFAULT_CONFIG_FILE)
        if not default.is_file():
            return {}, "defaults"
        config_path = default
    import tomllib  # only with a file: ~2 ms of a run's start-up without one

    path = Path(config_path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh), str(path)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "TOML files must be UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def check_top_level(data: Mapping[str, Any], source: str) -> None:
    """Only known tables at the top: a stray key or a misspelt section is never ignored."""
    known = ", ".join(f"[{s}]" for s in _SECTIONS)
    for key, val in data.items():
        if key in _SECTIONS:
            continue
        if isinstance(val, dict):
            raise ConfigError(f"{source}: unknown section [{key}] (known: {known})")
        hint = " (it belongs under [run])" if key in CONFIG_OPTIONS else ""
        raise ConfigError(
            f"{source}: unknown top-level key {key!r}{hint}; settings go in a section: {known}"
        )


def section(data: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    """The table ``[name]`` of a file (empty when absent); ConfigError if not a table."""
    sec = data.get(name, {})
    if not isinstance(sec, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    return dict(sec)


def prices_from(file_data: Mapping[str, Any], source: str) -> dict[str, ModelPrices]:
    """``[prices."MODEL"]`` tables: ``input`` and ``output`` required, all >= 0."""
    out: dict[str, ModelPrices] = {}
    fields = {f.name for f in dataclasses.fields(ModelPrices)}
    for model, raw in section(file_data, "prices", source).items():
        where = f"{source}: prices.{model!r}" if "." in model else f"{source}: prices.{model}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table, e.g. {{ input = 0.15, output = 0.6 }}")
        unknown = set(raw) - fields
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(fields))}; USD per million tokens)"
            )
        for key in ("input", "output"):
            if key not in raw:
                raise ConfigError(f"{where}.{key} is required (USD per million tokens)")
        values = {key: as_float(val, f"{where}.{key}") for key, val in raw.items()}
        for key, val in values.items():
            if val < 0:
                raise ConfigError(f"{where}.{key} must be >= 0, got {val:g}")
        out[model] = ModelPrices(**values)
    return out


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The options set by ``LLMBATCH_*`` variables in ``env`` (an empty one is unset)."""
    out: dict[str, Any] = {}
    for key, opt in CONFIG_OPTIONS.items():
        val = env.get(opt.env)
        if val is not None and val != "":
            out[key] = val
    return out


def unknown_variables(env: Mapping[str, str], *, also: Iterable[str] = ()) -> list[str]:
    """One warning for each ``LLMBATCH_*`` variable in ``env`` that llmbatch does not read
    (``also``: other names in use, such as a key variable), with the likely one meant."""
    known = {o.env for o in CONFIG_OPTIONS.values()} | {LOOP_VARIABLE, *also}
    out = []
    for name in sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"{name} is not a variable llmbatch reads{hint}; it is ignored")
    return out


def loop_choice(env: Mapping[str, str] | None = None) -> str:
    """LLMBATCH_LOOP (auto, asyncio or uvloop; auto when unset); ConfigError otherwise."""
    value = (os.environ if env is None else env).get(LOOP_VARIABLE, "") or "auto"
    if value not in LOOP_CHOICES:
        raise ConfigError(
            f"{LOOP_VARIABLE} must be one of {', '.join(LOOP_CHOICES)}, got {value!r}"
        )
    return value
