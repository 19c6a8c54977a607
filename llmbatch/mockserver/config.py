"""What the mock does: answer shape and timing, injected faults, rate limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["FAULT_KINDS", "HEADER_MODES", "LIMIT_MODES", "OUTPUT_COUNTED", "MockConfig"]

FAULT_KINDS = (
    "429",  # rate limited, with Retry-After (and ``fault_headers``)
    "quota",  # 429 insufficient_quota (fatal for a run)
    "401",  # echoes the key it was given, as some providers do (tests redaction)
    "400",
    "404",  # model_not_found
    "500",
    "502",
    "503",
    "reset",  # connection closed before any response
    "disconnect",  # connection closed mid-stream
    "stall",  # stream stops sending mid-way for stall_s
    "malformed",  # a chunk that is not JSON
    "error_payload",  # {"error": ...} inside a 200 stream
    "overloaded",  # {"error": {"type": "overloaded_error"}} inside a 200 stream
    "no_done",  # stream ends without [DONE]
    "slow_first_byte",  # headers only after slow_first_byte_s
)

LIMIT_MODES = ("refill", "sliding", "fixed")
"""How a rate limit counts: ``refill`` = a bucket holding the whole limit, refilled
continuously at limit / window (OpenAI's model: reset = time until full again);
``sliding`` = at most ``limit`` admissions within any ``limit_window_s``; ``fixed`` = at
most ``limit`` per window [k W, (k + 1) W) counted from the server's start."""

OUTPUT_COUNTED = ("admission", "end")
"""When output tokens are charged: at admission (the answer's length, as the server
plans it) or when the answer ends (a client cannot know the length before)."""

HEADER_MODES = ("always", "on_429", "never")
"""When the rate-limit headers are sent: on every response, only on 429s, or never."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MockConfig:
    """How the mock answers. Rates in ``faults`` are fractions of distinct prompts."""

    tokens: int = 32
    ttft_s: float = 0.02
    itl_s: float = 0.002
    model: str = "mock-model"
    faults: Mapping[str, float] = field(default_factory=dict)
    fault_attempts: int = 1
    retry_after_s: float = 0.05
    # Extra headers on an injected "429" fault (e.g. a claim of x-ratelimit-limit-requests).
    fault_headers: Mapping[str, str] = field(default_factory=dict)
    stall_s: float = 30.0
    slow_first_byte_s: float = 2.0
    # A server that serves at most this many requests at once: one more gets a 429 with
    # Retry-After ``retry_after_s`` (like a provider's concurrency limit). None = no limit.
    max_in_flight: int | None = None
    # Streams served at full speed at once. With more in flight every stream slows down
    # by in_flight / capacity (its time to first token and each gap between tokens), as
    # a server with a fixed token budget shares it: output throughput stops growing at
    # ``capacity`` (the knee a compare sweep finds). None = no such limit.
    capacity: int | None = None
    # Rate limits like a real provider's, per limit_window_s (1, 10 or 60 s; scaled down
    # in tests), counted as limit_mode. ``rpd`` is a second request limit per
    # ``day_window_s``; when it is set the x-ratelimit-*-requests headers describe it
    # (Groq: request headers count per day, token headers per minute).
    rpm: float | None = None
    tpm: float | None = None  # prompt + completion tokens
    input_tpm: float | None = None  # prompt tokens (Anthropic's input-tokens limit)
    output_tpm: float | None = None  # completion tokens (Anthropic's output-tokens limit)
    rpd: float | None = None
    limit_window_s: float = 60.0
    day_window_s: float = 86400.0
    limit_mode: str = "refill"
    limit_headers: str = "always"
    # Like ``vllm serve --api-key`` / ``llama-server --api-key``: requests without this key
    # (``Authorization: Bearer KEY``, or ``x-api-key`` as Anthropic's) get a 401.
    api_key: str | None = None
    output_counted: str = "admission"
    # Answers of ``tokens`` plus up to this many more, chosen by the prompt's content.
    tokens_spread: int = 0

    def __post_init__(self) -> None:
        if self.limit_mode not in LIMIT_MODES:
            raise ValueError(f"limit_mode must be one of {LIMIT_MODES}, got {self.limit_mode!r}")
        if self.limit_headers not in HEADER_MODES:
            raise ValueError(
                f"limit_headers must be one of {HEADER_MODES}, got {self.limit_headers!r}"
            )
        if self.capacity is not None and self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {self.capacity}")
        if self.output_counted not in OUTPUT_COUNTED:
            raise ValueError(
                f"output_counted must be one of {OUTPUT_COUNTED}, got {self.output_counted!r}"
            )
        for name in ("limit_window_s", "day_window_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
