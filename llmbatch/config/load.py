"""Configuration as frozen value objects, merged in one place.

Precedence: CLI flags > environment (LLMBATCH_*) > config file > built-in defaults.
API keys are never stored here: a provider names the environment variable that
holds its key, and the key is read only when a request is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbatch.config.options import RUN_OPTIONS, Option, options_in
from llmbatch.errors import ConfigError, LLMBatchWarning
from llmbatch.redaction import url_without_credentials

__all__ = [
    "BUILTIN_PROVIDERS",
    "CLIENTS",
    "DEFAULT_CONFIG_FILE",
    "Limits",
    "MockSettings",
    "ModelPrices",
    "ProviderConfig",
    "RetryPolicy",
    "RunConfig",
    "Timeouts",
    "LOOP_VARIABLE",
    "load_config",
    "load_profiles",
    "loop_choice",
    "resolve_api_key",
    "unknown_variables",
]

DEFAULT_CONFIG_FILE = "config.toml"
# Far above any real answer: 128k output tokens at ~1 KB of SSE per token (with logprobs)
# is 128 MiB; one event holds at most one whole final response (the Responses API's
# response.completed) of a few MiB.
DEFAULT_MAX_ANSWER_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024
AUTO_INITIAL_CONCURRENCY = 8
CLIENTS = ("aiohttp", "httpx", "httpx-aiohttp", "native")
# files: text/<id>.partial, then text/<id>.txt per request; log: one text.log (textlog.py).
TEXT_LAYOUTS = ("files", "log")
PROVIDER_KINDS = ("openai", "openai-completions", "openai-responses", "anthropic", "gemini")
# Rate-limit header families (llmbatch/pacing/headers.py; a test keeps the two in step).
RATE_HEADER_FAMILIES = (
    "openai",
    "anthropic",
    "groq",
    "together",
    "azure",
    "cerebras",
    "openrouter",
    "generic",
    "none",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Per-request time limits, in seconds."""

    connect_s: float = 10.0
    first_byte_s: float = 120.0
    idle_s: float = 60.0
    total_s: float = 900.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How transient failures are retried (exponential backoff with full jitter)."""

    max_attempts: int = 6
    max_total_s: float = 900.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Provider rate limits; None means not limited on our side."""

    rpm: float | None = None
    input_tpm: float | None = None
    output_tpm: float | None = None
    tpm: float | None = None  # input + output together (OpenAI's TPM)
    # The limits' time unit. Providers count per minute; tests scale time down with it.
    window_s: float = 60.0
    # How the server's rate-limit headers are read ("" = by the provider profile).
    headers: str = ""
    # The window the server's figures count over where its headers do not say (Azure: 1 or 10).
    header_window_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MockSettings:
    """What the built-in mock server streams."""

    tokens: int = 32
    ttft_s: float = 0.02
    itl_s: float = 0.002


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPrices:
    """One model's prices in USD per million tokens (``[prices."MODEL"]`` in config.toml).

    They replace (or add to) the bundled price data for that model name: for a
    self-hosted server, a negotiated rate, or a model the data does not know yet.
    """

    input: float
    output: float
    cached_input: float | None = None  # cache reads; default: input
    cache_write: float | None = None  # default: input
    reasoning: float | None = None  # default: output


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderConfig:
    """A provider profile: where to send requests and how."""

    name: str
    kind: str = "openai"
    base_url: str = ""
    api_key_env: str | None = None
    model: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    embedded_mock: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """Everything one run needs, after all sources were merged."""

    provider: ProviderConfig
    concurrency: int = 32
    adaptive: bool = False  # --concurrency auto: AIMD between 1 and max_concurrency
    max_concurrency: int = 256
    grace_s: float = 30.0  # after SIGINT/SIGTERM/--max-runtime-s, before in-flight are cancelled
    client: str = "aiohttp"
    http2: bool = False
    outputs_dir: Path = Path("outputs")  # the parent of default run directories
    run_dir: Path | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    mock: MockSettings = field(default_factory=MockSettings)
    keep_partial: bool = False
    text_files: bool = True  # text/<id>.txt per request; results.jsonl has the text anyway
    text_layout: str = "files"  # files: text/<id>.txt; log: one append-only text.log
    max_runtime_s: float | None = None
    retry_failed: bool = False
    rerun_changed: bool = False  # done prompts whose request changed run again
    # Continue a run directory made for another target (base URL, model, ...).
    force_resume: bool = False
    insecure: bool = False
    # PEM file of the CAs to trust instead of the system store (a company proxy, a
    # self-hosted server behind TLS); SSL_CERT_FILE when not set here.
    ca_bundle: Path | None = None
    progress: bool | None = None
    # Bounds on one answer, whatever a server sends (docs/security.md): the body's bytes
    # per attempt, and one server-sent event (a line or the lines of one event).
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    # Stop admitting requests before spent + the worst case of those in flight passes it.
    max_cost: float | None = None
    prices: Mapping[str, ModelPrices] = field(default_factory=dict)  # by model name


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

_ENV_PREFIX = "LLMBATCH_"
# The tables a config file may hold; anything else at the top level is a mistake.
_SECTIONS = ("run", "timeouts", "retry", "mock", "providers", "prices")
# What a config file's [run] table and LLMBATCH_* variables may set (config/options.py).
_CONFIG_OPTIONS = {o.name: o for o in options_in("config")}
_OPTIONS = {o.name: o for o in RUN_OPTIONS}
_LIMIT_KEYS = tuple(o.name for o in RUN_OPTIONS if o.scope == "limits")


# The event loop of a command (cli/run.py, ray/actors.py): not a run option, but an
# LLMBATCH_* variable all the same, checked like the others.
LOOP_VARIABLE = "LLMBATCH_LOOP"
LOOP_CHOICES = ("auto", "asyncio", "uvloop")
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
    **{k: (lambda v: v > 0, "must be positive") for k in _LIMIT_KEYS},
}
# The keys of a provider table; embedded_mock and name are llmbatch's own.
_PROFILE_KEYS = {f.name for f in dataclasses.fields(ProviderConfig)} - {
    "name",
    "limits",
    "embedded_mock",
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEY_PREFIXES = ("sk-", "sk_", "gsk_", "xai-", "AIza", "hf_", "r8_", "pk-")


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
        file_data, source = _read_file(config_path)
    _check_top_level(file_data, source)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}

    run_table = _section(file_data, "run", source)
    unknown = sorted(set(run_table) - _CONFIG_OPTIONS.keys())
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) in [run]: {', '.join(unknown)}")
    unknown = sorted(k for k in flags if k not in _OPTIONS or _OPTIONS[k].scope == "command")
    if unknown:  # a flag or keyword no option has (a caller's mistake)
        raise ConfigError(f"{source}: unknown key(s) in [run]: {', '.join(unknown)}")
    profiles = _profiles_from(file_data, source)
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
        (_from_env(env), lambda k: _ENV_PREFIX + k.upper()),
        (flags, flag_label or _flag_name),
    ]
    for table, label in layers:
        for key, val in table.items():
            merged[key] = _check_value(_OPTIONS[key], val, label(key), profiles)
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
        values["concurrency"] = _as_int(values["concurrency"], origin["concurrency"])
    cert_file = env.get("SSL_CERT_FILE")
    if values.get("ca_bundle") is None and cert_file:
        # The usual convention, below every llmbatch source.
        if not Path(cert_file).is_file():
            raise ConfigError(f"SSL_CERT_FILE names no file: {cert_file}")
        values["ca_bundle"], origin["ca_bundle"] = Path(cert_file), "SSL_CERT_FILE"
    cfg = RunConfig(
        provider=provider,
        timeouts=_typed(Timeouts, _section(file_data, "timeouts", source), source, "timeouts"),
        retry=_typed(RetryPolicy, _section(file_data, "retry", source), source, "retry"),
        mock=_typed(MockSettings, _section(file_data, "mock", source), source, "mock"),
        prices=_prices_from(file_data, source),
        **values,
    )
    _validate(cfg, source, origin)
    return cfg


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


def _read_file(config_path: str | Path | None) -> tuple[dict[str, Any], str]:
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


def _check_top_level(data: Mapping[str, Any], source: str) -> None:
    """Only known tables at the top: a stray key or a misspelt section is never ignored."""
    known = ", ".join(f"[{s}]" for s in _SECTIONS)
    for key, val in data.items():
        if key in _SECTIONS:
            continue
        if isinstance(val, dict):
            raise ConfigError(f"{source}: unknown section [{key}] (known: {known})")
        hint = " (it belongs under [run])" if key in _CONFIG_OPTIONS else ""
        raise ConfigError(
            f"{source}: unknown top-level key {key!r}{hint}; settings go in a section: {known}"
        )


def _section(data: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    sec = data.get(name, {})
    if not isinstance(sec, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    return dict(sec)


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, opt in _CONFIG_OPTIONS.items():
        val = env.get(opt.env)
        if val is not None and val != "":
            out[key] = val
    return out


def _check_value(opt: Option, val: Any, where: str, profiles: Mapping[str, ProviderConfig]) -> Any:
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
        _check_base_url(out, where)
    elif opt.name == "api_key_env":
        check_key_variable(out, where)
    elif opt.name == "ca_bundle" and not out.is_file():
        raise ConfigError(f"{where}: CA bundle not found: {out}")
    return out


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


def unknown_variables(env: Mapping[str, str], *, also: Iterable[str] = ()) -> list[str]:
    """One warning for each ``LLMBATCH_*`` variable in ``env`` that llmbatch does not read
    (``also``: other names in use, such as a key variable), with the likely one meant."""
    known = {o.env for o in _CONFIG_OPTIONS.values()} | {LOOP_VARIABLE, *also}
    out = []
    for name in sorted(n for n in env if n.startswith(_ENV_PREFIX) and n not in known):
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


def _key_variables(profiles: Mapping[str, ProviderConfig]) -> set[str]:
    return {p.api_key_env for p in profiles.values() if p.api_key_env}


def _library_warning(message: str) -> None:
    warnings.warn(LLMBatchWarning(message), stacklevel=3)


def _coerce(opt: Option, val: Any, where: str) -> Any:
    """``val`` (from a file, a variable, a flag or a keyword) as the option's type."""
    if opt.name == "concurrency":  # a number, or "auto"
        if isinstance(val, str) and val.strip().lower() == "auto":
            return "auto"
        return _as_int(val, where)
    if opt.type is bool:
        return _as_bool(val, where)
    if opt.type is int:
        return _as_int(val, where)
    if opt.type is float:
        return _as_float(val, where)
    if opt.type is Path:
        return Path(val if isinstance(val, os.PathLike) else _as_str(val, where))
    return _as_str(val, where)


def _typed(cls: Any, raw: Mapping[str, Any], source: str, section: str) -> Any:
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
            kwargs[key] = _as_int(val, where)
        elif "float" in kind:
            kwargs[key] = None if val is None else _as_float(val, where)
        else:
            kwargs[key] = val
    return cls(**kwargs)


def _prices_from(file_data: Mapping[str, Any], source: str) -> dict[str, ModelPrices]:
    """``[prices."MODEL"]`` tables: ``input`` and ``output`` required, all >= 0."""
    out: dict[str, ModelPrices] = {}
    fields = {f.name for f in dataclasses.fields(ModelPrices)}
    for model, raw in _section(file_data, "prices", source).items():
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
        values = {key: _as_float(val, f"{where}.{key}") for key, val in raw.items()}
        for key, val in values.items():
            if val < 0:
                raise ConfigError(f"{where}.{key} must be >= 0, got {val:g}")
        out[model] = ModelPrices(**values)
    return out


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
    limits = _typed(
        Limits,
        {**dataclasses.asdict(prov.limits), **limits_raw},
        source,
        f"providers.{name}.limits",
    )
    return dataclasses.replace(prov, name=name, limits=limits, **raw)


def _validate(cfg: RunConfig, source: str, origin: Mapping[str, str]) -> None:
    """What no single value shows: the profile in use (its limits, kind and URL) and the
    tables checked as a whole. Every value given was checked on its own (_check_value)."""

    def where(key: str, default: str | None = None) -> str:
        return origin.get(key) or default or key

    p = cfg.provider
    lim = p.limits
    for name in _LIMIT_KEYS:
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
        _check_base_url(p.base_url, where("base_url", f"provider {p.name!r}: base_url"))
    for name in ("connect_s", "first_byte_s", "idle_s", "total_s"):
        if getattr(cfg.timeouts, name) <= 0:
            raise ConfigError(f"{source}: timeouts.{name} must be positive")
    if cfg.retry.max_total_s <= 0 or cfg.retry.backoff_base_s < 0 or cfg.retry.backoff_max_s < 0:
        raise ConfigError(f"{source}: [retry] times must be positive")
    if cfg.retry.max_attempts < 1:
        raise ConfigError(f"{source}: retry.max_attempts must be at least 1")
    if cfg.mock.tokens < 1 or cfg.mock.ttft_s < 0 or cfg.mock.itl_s < 0:
        raise ConfigError(f"{source}: [mock] tokens must be >= 1 and delays >= 0")


def _check_base_url(url: str, where: str) -> None:
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


def _as_int(val: Any, where: str) -> int:
    if isinstance(val, bool) or isinstance(val, float) and not val.is_integer():
        raise ConfigError(f"{where} must be an integer, got {val!r}")
    try:
        return int(val)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where} must be an integer, got {val!r}") from None


def _as_float(val: Any, where: str) -> float:
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


def load_profiles(config_path: str | Path | None = None) -> dict[str, ProviderConfig]:
    """Every provider profile: the built-in ones, then the config file's ``[providers.*]``."""
    data, source = _read_file(config_path)
    _check_top_level(data, source)
    return _profiles_from(data, source)


def _profiles_from(file_data: Mapping[str, Any], source: str) -> dict[str, ProviderConfig]:
    profiles = dict(BUILTIN_PROVIDERS)
    for name, raw in _section(file_data, "providers", source).items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: [providers.{name}] must be a table")
        profiles[name] = _provider_from(name, raw, profiles.get(name), source)
    return profiles
