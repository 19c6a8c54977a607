"""Configuration as frozen value objects: what one run needs, after every source was merged.

API keys are never stored here: a provider names the environment variable that holds its
key, and the key is read only when a request is built (profiles.resolve_api_key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CLIENTS",
    "PROVIDER_KINDS",
    "RATE_HEADER_FAMILIES",
    "TEXT_LAYOUTS",
    "Limits",
    "MockSettings",
    "ModelPrices",
    "ProviderConfig",
    "RetryPolicy",
    "RunConfig",
    "Timeouts",
]

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
