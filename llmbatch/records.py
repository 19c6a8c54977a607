"""The values that flow through the pipeline: prompts in, outcomes out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

__all__ = ["Attempt", "Cost", "InputShape", "Outcome", "PromptRecord", "RequestMetrics"]

InputShape = Literal["prompt", "messages", "input", "contents", "batch"]


@dataclass(frozen=True, slots=True)
class PromptRecord:
    """One request to make, as read from a JSONL line.

    ``body`` holds the request parameters as the line gave them: OpenAI chat shape
    (``messages`` plus any extra parameters), a Responses API request (``input``) or a
    Gemini request (``contents``); providers translate it to their own wire format.
    ``endpoint`` is the OpenAI Batch ``url`` when the line gave one.
    """

    id: str
    line_no: int
    shape: InputShape
    body: dict[str, Any]
    endpoint: str | None = None


@dataclass(slots=True)
class Attempt:
    """One try of one request, kept in the result record's attempt history."""

    n: int
    status: int | None
    error: str | None
    message: str | None
    request_id: str | None
    wait_s: float

    def as_dict(self) -> dict[str, Any]:
        """The JSON form written to results.jsonl."""
        return {
            "n": self.n,
            "status": self.status,
            "error": self.error,
            "message": self.message,
            "request_id": self.request_id,
            "wait_s": round(self.wait_s, 4),
        }


@dataclass(slots=True)
class RequestMetrics:
    """Timings of the final attempt of a request (vLLM benchmark definitions: a reasoning
    token counts as a token, so TTFT ends at the first token of any kind)."""

    queue_s: float = 0.0
    ttft_s: float | None = None  # to the first token of any kind (reasoning or answer)
    answer_ttft_s: float | None = None  # to the first answer token
    e2el_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    output_tokens_estimated: bool = True
    input_tokens: int | None = None
    chunks: int = 0  # token events of either kind
    reasoning_chunks: int = 0  # the reasoning ones among them
    # From the usage details when sent; else the reasoning chunks, flagged estimated.
    reasoning_tokens: int | None = None
    reasoning_tokens_estimated: bool = False
    http_version: str | None = None  # protocol of the final attempt's response
    sent_at: float | None = None  # llmbatch.clock.now() when the final attempt was sent

    @property
    def tpot_s(self) -> float | None:
        """(E2EL - TTFT) / (output_tokens - 1): mean time per token after the first."""
        if self.ttft_s is None or self.e2el_s is None or self.output_tokens < 2:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)


class Cost(NamedTuple):
    """What one request cost in USD, priced from the usage the provider reported.

    ``usd`` is the sum of the parts: uncached input, cached input (cache reads), cache
    writes, output other than reasoning, and reasoning tokens, each at its own rate.
    ``estimated`` when some usage was not reported (tokens counted or assumed instead).
    ``source`` names the price: ``genai-prices <version>: <provider>/<model>`` or
    ``config [prices.<model>]``. (A NamedTuple: one is made per record, and a frozen
    dataclass costs several times more to build.)
    """

    usd: float
    input_usd: float = 0.0
    cached_input_usd: float = 0.0
    cache_write_usd: float = 0.0
    output_usd: float = 0.0
    reasoning_usd: float = 0.0
    source: str = ""
    estimated: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The JSON form written to results.jsonl (``llmbatch.cost``)."""
        return {
            "usd": round(self.usd, 10),
            "input_usd": round(self.input_usd, 10),
            "cached_input_usd": round(self.cached_input_usd, 10),
            "cache_write_usd": round(self.cache_write_usd, 10),
            "output_usd": round(self.output_usd, 10),
            "reasoning_usd": round(self.reasoning_usd, 10),
            "source": self.source,
            "estimated": self.estimated,
        }


@dataclass(slots=True)
class Outcome:
    """How one request ended: the assembled body or an error, plus its history."""

    record_id: str
    status_code: int | None
    request_id: str | None
    body: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    attempts: list[Attempt]
    metrics: RequestMetrics
    partial_kept: bool = False
    line_no: int | None = None
    text_file: str | None = None
    # --text-layout log: (offset, length) of the answer's bytes in text_file.
    text_span: tuple[int, int] | None = None
    # rundir.identity.request_hash of the request answered (resume notices a change).
    request_hash: str | None = None
    # The reasoning streamed beside the answer, when there was any (same conventions).
    reasoning_file: str | None = None
    reasoning_span: tuple[int, int] | None = None
    # None: the model has no known price (the record says so; no figure is made up).
    cost: Cost | None = None

    @property
    def ok(self) -> bool:
        """True when the request produced a complete answer."""
        return self.error_code is None
