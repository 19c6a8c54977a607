"""One configuration value, wherever it comes from: made the option's type and checked
on its own (ranges, choices, a URL that can be connected to, a variable name that is not
a key). A bad value is a ConfigError naming where it was given."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llmbatch.config.model import ProviderConfig
from llmbatch.config.options import RUN_OPTIONS, Option
from llmbatch.errors import ConfigError
from llmbatch.redaction import url_without_credentials

__all__ = [
    "LIMIT_KEYS",
    "as_float",
    "as_int",
    "check_base_url",
    "check_key_variable",
    "check_value",
    "from_table",
]

LIMIT_KEYS = tuple(o.name for o in RUN_OPTIONS if o.scope == "limits")
# What one value must be, checked wherever it comes from: also a value that a higher
# source overrides (a bad value in config.toml is an error even when a flag wins).
_VALUE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "concurrency": (lambda v: v == "auto" or v >= 1, "must be at least 1 (or auto)"),
    "max_concurrency": (lambda v: v >= 1, "must be at least 1"),
    "grace_s": (lambda v: v >= 0, "must be >= 0"),
    "max_runtime_s": (lambda v: v > 0, "must be greater than 0 seconds"),
    "max_cost": (lambda v: v > 0, "must be greater than 0 USD"),
    "max_answer_bytes": (lambda v: v >= 4096, "must be at least 4096"),
    "max_event_bytes": (lambda v: v >= 4096, "must be at least 4096"),
    **{k: (lambda v: v > 0, "must be positive") for k in LIMIT_KEYS},
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_PREFIXES = ("sk-", "sk_", "gsk_", "xai-", "AIza", "hf_", "r8_", "pk-")


def check_value(opt: Option, val: Any, where: str, profiles: Mapping[str, ProviderConfig]) -> Any:
    """``val`` as the option's type, checked on its own (range, choices, a known provider,
    a URL, a variable name); ConfigError naming ``where`` otherwise."""
    out = _coerce(opt, val, where)
    rule = _VALUE_RULES.get(opt.name)
    if rule is not None and not rule[0](out):
        shown = f"{out:g}" if isinstance(out, float) else str(out)
        raise ConfigError(f"{where} {rule[1]}, got {shown}")
    if opt.choices and out not in opt.choices:
        what = opt.name.replace("_", " ")
        raise ConfigError(f"{where}: unknown {what} {out!r} (one of {', '.join(opt.choices)})")
    if opt.name == "provider" and out not in profiles:
        raise ConfigError(
            f"{where}: unknown provider {out!r} (known: {', '.join(sorted(profiles))})"
        )
    if opt.name == "base_url":
        check_base_url(out, where)
    elif opt.name == "api_key_env":
        check_key_variable(out, where)
    elif opt.name == "ca_bundle" and not out.is_file():
        raise ConfigError(f"{where}: CA bundle not found: {out}")
    return out


def _coerce(opt: Option, val: Any, where: str) -> Any:
    """``val`` (from a file, a variable, a flag or a keyword) as the option's type."""
    if opt.name == "concurrency":  # a number, or "auto"
        if isinstance(val, str) and val.strip().lower() == "auto":
            return "auto"
        return as_int(val, where)
    if opt.type is bool:
        return _as_bool(val, where)
    if opt.type is int:
        return as_int(val, where)
    if opt.type is float:
        return as_float(val, where)
    if opt.type is Path:
        return Path(val if isinstance(val, os.PathLike) else _as_str(val, where))
    return _as_str(val, where)


def check_key_variable(name: str, where: str) -> None:
    """``api_key_env`` must name an environment variable. A key pasted there instead (a
    common slip) is refused without being shown anywhere."""
    if _looks_like_key(name):
        raise ConfigError(
            f"{where} looks like an API key itself, not the name of the variable that holds "
            "it: put the key in a variable (export MY_KEY=...) and name that variable here "
            "(the value is not shown)"
        )
    if not _ENV_NAME.fullmatch(name):
        raise ConfigError(
            f"{where} is not an environment variable name (letters, digits and _): it names "
            "the variable that holds the key, e.g. OPENAI_API_KEY (the value is not shown)"
        )


def _looks_like_key(name: str) -> bool:
    digits = any(c.isdigit() for c in name)
    mixed = any(c.islower() for c in name) and any(c.isupper() for c in name)
    return (
        name.startswith(_KEY_PREFIXES)
        or (len(name) >= 32 and digits)
        or (len(name) >= 20 and digits and mixed)
    )


def check_base_url(url: str, where: str) -> None:
    """A URL that can never be connected to fails here, before anything is sent (its
    credentials, if any, are never shown)."""
    shown = url_without_credentials(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises on a port out of range or not a number
    except ValueError as exc:
        raise ConfigError(f"{where}: invalid URL {shown!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{where} must start with http:// or https://, got {shown!r}")
    if not parts.hostname:
        raise ConfigError(f"{where}: invalid URL {shown!r}: no host")
    if port == 0:
        raise ConfigError(f"{where}: invalid URL {shown!r}: port must be 1-65535")


def from_table(cls: Any, raw: Mapping[str, Any], source: str, section: str) -> Any:
    """Build a frozen dataclass from a table, checking names and number types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, val in raw.items():
        f = fields.get(key)
        if f is None:
            raise ConfigError(
                f"{source}: unknown key {key!r} in [{section}] (known: {', '.join(sorted(fields))})"
            )
        where = f"{source}: {section}.{key}"
        kind = str(f.type)
        if "int" in kind and "float" not in kind:
            kwargs[key] = as_int(val, where)
        elif "float" in kind:
            kwargs[key] = None if val is None else as_float(val, where)
        else:
            kwargs[key] = val
    return cls(**kwargs)


def as_int(val: Any, where: str) -> int:
    """``val`` as an int (a whole float or a numeric string too); ConfigError otherwise."""
    if isinstance(val, bool) or isinstance(val, float) and not val.is_integer():
        raise ConfigError(f"{where} must be an integer, got {val!r}")
    try:
        return int(val)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where} must be an integer, got {val!r}") from None


def as_float(val: Any, where: str) -> float:
    """``val`` as a finite float (a numeric string too); ConfigError otherwise."""
    if isinstance(val, bool):
        raise ConfigError(f"{where} must be a number, got {val!r}")
    try:
        out = float(val)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number, got {val!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"{where} must be a finite number, got {val!r}")
    return out


def _as_str(val: Any, where: str) -> str:
    if not isinstance(val, str):
        raise ConfigError(f"{where} must be a string, got {val!r}")
    return val


def _as_bool(val: Any, where: str) -> bool:
    if isinstance(val, bool):
        return val
    if isinstance(val, str) and val.lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return val.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"{where or 'value'} must be true or false, got {val!r}")
