"""What a compare measures: targets (provider profiles or ``--target`` specs) × clients.

``--target NAME=URL[,model=M][,key-env=VAR][,kind=openai|openai-completions|anthropic]``
names an endpoint on the command line, so two servers are compared without a config
file; the key is read from ``VAR`` when the step runs and never written anywhere. A
target's base URL is recorded without credentials (:func:`public_url`).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbatch.config.files import DEFAULT_CONFIG_FILE
from llmbatch.config.load import load_config
from llmbatch.config.model import RunConfig
from llmbatch.config.profiles import resolve_api_key
from llmbatch.errors import ConfigError
from llmbatch.notices import warn as notice

__all__ = ["Series", "TargetSpec", "parse_target", "plan_series", "public_url"]

_TARGET_KEYS = {"model": "model", "key-env": "api_key_env", "kind": "kind"}


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """A ``--target``: a name, a base URL and what the profile needs besides."""

    name: str
    base_url: str
    model: str = ""
    api_key_env: str | None = None
    kind: str = "openai"


@dataclass(frozen=True, slots=True)
class Series:
    """One target with one client: the unit a sweep climbs a ladder for."""

    target: str
    client: str
    cfg: RunConfig

    @property
    def name(self) -> str:
        """``<target>-<client>``: the start of its run directories' names."""
        return f"{self.target}-{self.client}"

    def describe(self) -> dict[str, Any]:
        """What was measured, for compare.json (no key, no credentials in the URL)."""
        p = self.cfg.provider
        return {
            "name": self.target,
            "kind": p.kind,
            "base_url": "embedded-mock" if p.embedded_mock else public_url(p.base_url),
            "model": p.model,
            "api_key_env": p.api_key_env,
            "client": self.client,
            "http2": self.cfg.http2,
        }


def public_url(url: str) -> str:
    """``url`` without user:password, query string or fragment (where keys can hide)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_target(spec: str) -> TargetSpec:
    """``NAME=URL[,model=M][,key-env=VAR][,kind=K]`` as a TargetSpec (ConfigError if bad)."""
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise ConfigError(f"--target {spec!r}: expected NAME=URL[,model=M][,key-env=VAR]")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"--target {spec!r}: a name holds letters, digits, - _ . only")
    url, *options = rest.split(",")
    fields: dict[str, str] = {}
    for opt in options:
        key, eq, value = opt.partition("=")
        key = key.strip().lower()
        if not eq or key not in _TARGET_KEYS or not value.strip():
            raise ConfigError(
                f"--target {name}: unknown or empty option {opt!r} (model=, key-env=, kind=)"
            )
        fields[_TARGET_KEYS[key]] = value.strip()
    return TargetSpec(name=name, base_url=url.strip(), **fields)


def _target_config(
    spec: TargetSpec,
    config_path: Path | None,
    flags: dict[str, Any],
    warn: Callable[[str], None] | None = None,
) -> RunConfig:
    """The RunConfig of a --target: an ad-hoc provider profile named after it."""
    # A target named like a built-in profile (openai, mock...) keeps its headers and
    # params, but always goes to the URL given: never to the embedded mock (a profile
    # given a base_url never runs the embedded mock: config/profiles.py).
    profile: dict[str, Any] = {"kind": spec.kind, "base_url": spec.base_url, "model": spec.model}
    if spec.api_key_env is not None:
        profile["api_key_env"] = spec.api_key_env
    data: dict[str, Any] = {"providers": {spec.name: profile}}
    if config_path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        config_path = Path(DEFAULT_CONFIG_FILE)
    if config_path is not None:  # keep the file's [run], [timeouts], [retry], [mock]
        import tomllib

        try:
            with open(config_path, "rb") as fh:
                file_data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{config_path}: {exc}") from None
        data = {**file_data, "providers": {**file_data.get("providers", {}), **data["providers"]}}
    return load_config(
        None, data=data, flags={**flags, "provider": spec.name}, flag_label=_label, warn=warn
    )


def _label(key: str) -> str:
    return "--target" if key in ("base_url", "provider") else "--" + key.replace("_", "-")


def plan_series(
    config_path: Path | None,
    providers: Sequence[str],
    targets: Sequence[str],
    clients: Sequence[str],
    *,
    flags: dict[str, Any] | None = None,
) -> list[Series]:
    """Every target × client with its validated config (API keys checked): nothing sent.

    No provider and no target means the configured default provider; no client, the
    configured default client.
    """
    base = {k: v for k, v in (flags or {}).items() if v is not None}
    seen_warnings: set[str] = set()

    def warn(message: str) -> None:  # every series reads the same variables: say it once
        if message not in seen_warnings:
            seen_warnings.add(message)
            notice(message)

    specs = [parse_target(t) for t in targets]
    names = [*providers, *(s.name for s in specs)]
    if len(set(names)) != len(names):
        raise ConfigError(f"compare: a target name is given twice ({', '.join(names)})")
    out: list[Series] = []
    client_list: list[str | None] = [*clients] or [None]
    for client in client_list:
        provider_list: list[str | None] = [*providers] or ([] if specs else [None])
        for provider in provider_list:
            cfg = load_config(
                config_path, flags={**base, "provider": provider, "client": client}, warn=warn
            )
            resolve_api_key(cfg.provider)
            out.append(Series(cfg.provider.name, cfg.client, cfg))
        for spec in specs:
            cfg = _target_config(spec, config_path, {**base, "client": client}, warn)
            resolve_api_key(cfg.provider)
            out.append(Series(spec.name, cfg.client, cfg))
    seen: set[str] = set()
    unique = []
    for s in out:
        if s.name not in seen:
            seen.add(s.name)
            unique.append(s)
    # Target-major order: a target's clients side by side in tables.
    order = {t: i for i, t in enumerate(dict.fromkeys(s.target for s in unique))}
    return sorted(unique, key=lambda s: order[s.target])
