"""``Result``: what one prompt came to, as the library hands it out (typed, frozen)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmbatch.rundir.resultline import ResultLine, answer_text, finish_reason

__all__ = ["ErrorInfo", "Result", "Timings", "Usage"]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why a request failed: a stable ``code`` (e.g. ``rate_limited``, ``input_error``)
    and a human-readable ``message`` (API keys redacted)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts; ``output_estimated`` when the server sent none (events counted)."""

    input_tokens: int | None
    output_tokens: int
    output_estimated: bool


@dataclass(frozen=True, slots=True)
class Timings:
    """The final attempt's timings, in seconds (vLLM's definitions; see docs/metrics.md)."""

    queue_s: float
    ttft_s: float | None
    e2el_s: float | None
    tpot_s: float | None
    itl_mean_s: float | None
    itl_p99_s: float | None
    chunks: int
    http_version: str | None = None  # the protocol the answer came over ("HTTP/2", ...)


def _f(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


@dataclass(frozen=True, slots=True)
class Result:
    """One prompt's result.

    ``text`` is the answer (None when the request failed); ``error`` says why it failed.
    ``line`` is the prompt's position in the input (file line, or 1-based item number).
    ``output_line`` is the record exactly as results.jsonl holds it: the OpenAI Batch
    output line plus an ``llmbatch`` object with metrics and the attempt history.
    ``cost_usd`` is what the request cost (None when its model has no known price; the
    parts and the price's source are in ``output_line["llmbatch"]["cost"]``).
    """

    id: str
    ok: bool
    text: str | None
    finish_reason: str | None
    error: ErrorInfo | None
    usage: Usage
    timings: Timings
    attempts: int
    line: int | None
    text_file: str | None
    output_line: Mapping[str, Any]
    cost_usd: float | None = None

    @classmethod
    def from_line(cls, line: dict[str, Any]) -> Result:
        """The Result of one results.jsonl line (a dict as written or read back)."""
        rl = ResultLine.parse(line)
        if rl is None:
            raise ValueError("not a result record (no custom_id)")
        m = rl.metrics
        itl = m.get("itl_s")
        itl = itl if isinstance(itl, dict) else {}
        err = None
        if not rl.ok:
            err = ErrorInfo(rl.error_code or "unknown", rl.error_message or "")
        out_tokens = m.get("output_tokens")
        in_tokens = m.get("input_tokens")
        return cls(
            id=rl.custom_id,
            ok=rl.ok,
            text=answer_text(rl.body) if rl.ok else None,
            finish_reason=finish_reason(rl.body) if rl.ok else None,
            error=err,
            usage=Usage(
                input_tokens=in_tokens if isinstance(in_tokens, int) else None,
                output_tokens=out_tokens if isinstance(out_tokens, int) else 0,
                output_estimated=bool(m.get("output_tokens_estimated", True)),
            ),
            timings=Timings(
                queue_s=_f(m.get("queue_s")) or 0.0,
                ttft_s=_f(m.get("ttft_s")),
                e2el_s=_f(m.get("e2el_s")),
                tpot_s=_f(m.get("tpot_s")),
                itl_mean_s=_f(itl.get("mean")),
                itl_p99_s=_f(itl.get("p99")),
                chunks=int(m.get("chunks") or 0),
                http_version=m.get("http_version")
                if isinstance(m.get("http_version"), str)
                else None,
            ),
            attempts=len(rl.attempts),
            line=rl.line_no,
            text_file=rl.text_file,
            output_line=line,
            cost_usd=rl.cost.usd if rl.cost is not None else None,
        )
