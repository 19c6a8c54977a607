"""Provider profiles: the built-in ones, a config file's ``[providers.*]`` tables over
them, and the API key a profile names."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from llmbatch.config.files import section
from llmbatch.config.model import Limits, ProviderConfig
from llmbatch.config.values import check_key_variable, from_table
from llmbatch.errors import ConfigError

__all__ = ["BUILTIN_PROVIDERS", "profiles_from", "resolve_api_key"]

BUILTIN_PROVIDERS: dict[str, ProviderConfig] = {
    "mock": ProviderConfig(name="mock", kind="openai", model="mock-model", embedded_mock=True),
    "openai": ProviderConfig(
        name="openai",
        kind="openai",
        base_url="https://api.openai.com/v1",
        api_key_env="OPENAI_API_KEY",
        model="gpt-4o-mini",
    ),
    "anthropic": ProviderConfig(
        name="anthropic",
        kind="anthropic",
        base_url="https://api.anthropic.com/v1",
        api_key_env="ANTHROPIC_API_KEY",
        model="claude-3-5-haiku-latest",
        headers={"anthropic-version": "2023-06-01"},
        params={"max_tokens": 1024},
    ),
    "gemini": ProviderConfig(
        name="gemini",
        kind="gemini",
        base_url="https://generativelanguage.googleapis.com/v1beta",
        api_key_env="GEMINI_API_KEY",
        model="gemini-2.5-flash",
    ),
    "groq": ProviderConfig(
        name="groq",
        base_url="https://api.groq.com/openai/v1",
        api_key_env="GROQ_API_KEY",
        model="llama-3.1-8b-instant",
    ),
    "together": ProviderConfig(
        name="together",
        base_url="https://api.together.xyz/v1",
        api_key_env="TOGETHER_API_KEY",
        model="meta-llama/Llama-3.3-70B-Instruct-Turbo",
    ),
    "cerebras": ProviderConfig(
        name="cerebras",
        base_url="https://api.cerebras.ai/v1",
        api_key_env="CEREBRAS_API_KEY",
        model="llama3.1-8b",
    ),
    "openrouter": ProviderConfig(
        name="openrouter",
        base_url="https://openrouter.ai/api/v1",
        api_key_env="OPENROUTER_API_KEY",
        model="openai/gpt-4o-mini",
    ),
    "vllm": ProviderConfig(name="vllm", base_url="http://127.0.0.1:8000/v1"),
    "llamacpp": ProviderConfig(name="llamacpp", base_url="http://127.0.0.1:8080/v1"),
    "ollama": ProviderConfig(name="ollama", base_url="http://127.0.0.1:11434/v1"),
}

# The keys of a provider table; embedded_mock and name are llmbatch's own.
_PROFILE_KEYS = {f.name for f in dataclasses.fields(ProviderConfig)} - {
    "name",
    "limits",
    "embedded_mock",
}


def profiles_from(file_data: Mapping[str, Any], source: str) -> dict[str, ProviderConfig]:
    """The built-in profiles with a file's ``[providers.*]`` tables over them."""
    profiles = dict(BUILTIN_PROVIDERS)
    for name, raw in section(file_data, "providers", source).items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: [providers.{name}] must be a table")
        profiles[name] = _provider_from(name, raw, profiles.get(name), source)
    return profiles


def _provider_from(
    name: str, raw: Mapping[str, Any], base: ProviderConfig | None, source: str
) -> ProviderConfig:
    raw = dict(raw)
    limits_raw = raw.pop("limits", {})
    if not isinstance(limits_raw, dict):
        raise ConfigError(f"{source}: [providers.{name}.limits] must be a table")
    where = f"{source}: providers.{name}"
    for key in ("headers", "params"):
        if key in raw and not isinstance(raw[key], dict):
            raise ConfigError(f"{where}.{key} must be a table")
    for hk, hv in raw.get("headers", {}).items():
        if not isinstance(hv, str):
            raise ConfigError(f"{where}.headers.{hk} must be a string, got {hv!r}")
    if "embedded_mock" in raw:
        raise ConfigError(
            f"{where}.embedded_mock is llmbatch's own (only the built-in mock provider has "
            'it) and cannot be set; remove it (provider = "mock" runs the built-in mock)'
        )
    unknown = set(raw) - _PROFILE_KEYS
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) in [providers.{name}]: {', '.join(sorted(unknown))}"
        )
    for key in ("kind", "base_url", "model", "api_key_env"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{where}.{key} must be a string, got {raw[key]!r}")
    if "api_key_env" in raw:
        check_key_variable(raw["api_key_env"], f"{where}.api_key_env")
    if "base_url" in raw:
        raw["embedded_mock"] = False  # a URL given for the mock: send there
    prov = base or ProviderConfig(name=name)
    limits = from_table(
        Limits,
        {**dataclasses.asdict(prov.limits), **limits_raw},
        source,
        f"providers.{name}.limits",
    )
    return dataclasses.replace(prov, name=name, limits=limits, **raw)


def resolve_api_key(
    provider: ProviderConfig, environ: Mapping[str, str] | None = None
) -> str | None:
    """The provider's API key from its environment variable; ConfigError when missing."""
    if not provider.api_key_env:
        return None
    env = os.environ if environ is None else environ
    key = env.get(provider.api_key_env, "").strip()
    if not key:
        raise ConfigError(
            f"provider {provider.name!r} needs an API key: set the environment variable "
            f"{provider.api_key_env}"
        )
    return key
