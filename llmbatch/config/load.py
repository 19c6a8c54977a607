"""The one merge of configuration: defaults, config.toml, ``LLMBATCH_*`` variables, flags.

Precedence: CLI flags > environment (LLMBATCH_*) > config file > built-in defaults. Every
value is checked where it was given (values.py), also when a higher source overrides it;
the merged whole is checked last (the profile in use, the tables).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llmbatch.config.files import (
    CONFIG_OPTIONS,
    ENV_PREFIX,
    check_top_level,
    from_env,
    loop_choice,
    prices_from,
    read_file,
    section,
    unknown_variables,
)
from llmbatch.config.model import (
    PROVIDER_KINDS,
    RATE_HEADER_FAMILIES,
    MockSettings,
    ProviderConfig,
    RetryPolicy,
    RunConfig,
    Timeouts,
)
from llmbatch.config.options import RUN_OPTIONS
from llmbatch.config.profiles import profiles_from
from llmbatch.config.values import LIMIT_KEYS, as_int, check_base_url, check_value, from_table
from llmbatch.errors import ConfigError, LLMBatchWarning

__all__ = [
    "load_config",
    "load_profiles",
]

AUTO_INITIAL_CONCURRENCY = 8
_OPTIONS = {o.name: o for o in RUN_OPTIONS}


def _flag_name(key: str) -> str:
    opt = _OPTIONS.get(key)
    return opt.long_flag if opt is not None else "--" + key.replace("_", "-")


def load_config(
    config_path: str | Path | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
    flag_label: Callable[[str], str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> RunConfig:
    """Merge defaults, the config file, LLMBATCH_* variables and flags into a RunConfig.

    ``config_path`` None means ./config.toml if it exists. ``flags`` holds only the
    options the user actually gave (None values are ignored). A bad value raises a
    ConfigError naming where it came from: the flag, the variable or ``file: section.key``,
    also when a higher source overrides it. ``data`` replaces the file (the library's
    options, in the file's shape): then no file is read. ``flag_label`` names a flag in
    messages (default: its ``--flag``). With ``environ`` None (the process's variables), an
    ``LLMBATCH_*`` variable llmbatch does not read is reported through ``warn`` (default: an
    LLMBatchWarning), and a bad LLMBATCH_LOOP is an error.
    """
    env = os.environ if environ is None else environ
    if data is not None:
        file_data, source = dict(data), "options"
    else:
        file_data, source = read_file(config_path)
    check_top_level(file_data, source)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}

    run_table = section(file_data, "run", source)
    unknown = sorted(set(run_table) - CONFIG_OPTIONS.keys())
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) in [run]: {', '.join(unknown)}")
    unknown = sorted(k for k in flags if k not in _OPTIONS or _OPTIONS[k].scope == "command")
    if unknown:  # a flag or keyword no option has (a caller's mistake)
        raise ConfigError(f"{source}: unknown key(s) in [run]: {', '.join(unknown)}")
    profiles = profiles_from(file_data, source)
    if environ is None:  # the process's own variables: a misspelt one is never ignored
        loop_choice(env)  # a bad LLMBATCH_LOOP is an error, not a silent default
        for message in unknown_variables(env, also=_key_variables(profiles)):
            (warn or _library_warning)(message)

    # Every value is checked where it was given, then merged; each merged key remembers
    # where its value came from, so later errors blame that place.
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    layers: list[tuple[Mapping[str, Any], Callable[[str], str]]] = [
        (run_table, lambda k: f"{source}: run.{k}"),
        (from_env(env), lambda k: ENV_PREFIX + k.upper()),
        (flags, flag_label or _flag_name),
    ]
    for table, label in layers:
        for key, val in table.items():
            merged[key] = check_value(_OPTIONS[key], val, label(key), profiles)
            origin[key] = label(key)
    values = merged

    provider = profiles[values.pop("provider", "mock")]
    overrides = {k: values.pop(k) for k in list(values) if _OPTIONS[k].scope == "provider"}
    if overrides:
        if "base_url" in overrides:  # a URL given for the mock: send there, no embedded one
            overrides["embedded_mock"] = False
        provider = dataclasses.replace(provider, **overrides)
    limit_over = {k: values.pop(k) for k in list(values) if _OPTIONS[k].scope == "limits"}
    if limit_over:
        provider = dataclasses.replace(
            provider, limits=dataclasses.replace(provider.limits, **limit_over)
        )
    if values.get("concurrency") == "auto":
        values["adaptive"], values["concurrency"] = True, AUTO_INITIAL_CONCURRENCY
    elif "concurrency" in values:
        values["concurrency"] = as_int(values["concurrency"], origin["concurrency"])
    cert_file = env.get("SSL_CERT_FILE")
    if values.get("ca_bundle") is None and cert_file:
        # The usual convention, below every llmbatch source.
        if not Path(cert_file).is_file():
            raise ConfigError(f"SSL_CERT_FILE names no file: {cert_file}")
        values["ca_bundle"], origin["ca_bundle"] = Path(cert_file), "SSL_CERT_FILE"
    cfg = RunConfig(
        provider=provider,
        timeouts=from_table(Timeouts, section(file_data, "timeouts", source), source, "timeouts"),
        retry=from_table(RetryPolicy, section(file_data, "retry", source), source, "retry"),
        mock=from_table(MockSettings, section(file_data, "mock", source), source, "mock"),
        prices=prices_from(file_data, source),
        **values,
    )
    _validate(cfg, source, origin)
    return cfg


def load_profiles(config_path: str | Path | None = None) -> dict[str, ProviderConfig]:
    """Every provider profile: the built-in ones, then the config file's ``[providers.*]``."""
    data, source = read_file(config_path)
    check_top_level(data, source)
    return profiles_from(data, source)


def _validate(cfg: RunConfig, source: str, origin: Mapping[str, str]) -> None:
    """What no single value shows: the profile in use (its limits, kind and URL) and the
    tables checked as a whole. Every value given was checked on its own (check_value)."""

    def where(key: str, default: str | None = None) -> str:
        return origin.get(key) or default or key

    p = cfg.provider
    lim = p.limits
    for name in LIMIT_KEYS:
        v = getattr(lim, name)
        if v is not None and v <= 0:
            label = where(name, f"{source}: providers.{p.name}.limits.{name}")
            raise ConfigError(f"{label} must be positive, got {v:g}")
    if lim.window_s <= 0:
        raise ConfigError(f"{source}: limits.window_s must be positive")
    if lim.header_window_s is not None and lim.header_window_s <= 0:
        raise ConfigError(f"{source}: limits.header_window_s must be positive")
    if lim.headers and lim.headers not in RATE_HEADER_FAMILIES:
        raise ConfigError(
            f"{source}: limits.headers must be one of {', '.join(RATE_HEADER_FAMILIES)}, "
            f"got {lim.headers!r}"
        )
    if p.kind not in PROVIDER_KINDS:
        raise ConfigError(
            f"{source}: provider {p.name!r} has unknown kind {p.kind!r} "
            f"(one of {', '.join(PROVIDER_KINDS)})"
        )
    if not p.embedded_mock:
        check_base_url(p.base_url, where("base_url", f"provider {p.name!r}: base_url"))
    for name in ("connect_s", "first_byte_s", "idle_s", "total_s"):
        if getattr(cfg.timeouts, name) <= 0:
            raise ConfigError(f"{source}: timeouts.{name} must be positive")
    if cfg.retry.max_total_s <= 0 or cfg.retry.backoff_base_s < 0 or cfg.retry.backoff_max_s < 0:
        raise ConfigError(f"{source}: [retry] times must be positive")
    if cfg.retry.max_attempts < 1:
        raise ConfigError(f"{source}: retry.max_attempts must be at least 1")
    if cfg.mock.tokens < 1 or cfg.mock.ttft_s < 0 or cfg.mock.itl_s < 0:
        raise ConfigError(f"{source}: [mock] tokens must be >= 1 and delays >= 0")


def _key_variables(profiles: Mapping[str, ProviderConfig]) -> set[str]:
    return {p.api_key_env for p in profiles.values() if p.api_key_env}


def _library_warning(message: str) -> None:
    warnings.warn(LLMBatchWarning(message), stacklevel=3)
