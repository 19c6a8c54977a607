"""The one owner of the results.jsonl line schema: written from an Outcome, read back typed.

A line is the OpenAI Batch output shape plus an ``llmbatch`` object::

    {"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
     "error": {"code", "message"} | null,
     "llmbatch": {"line", "text_file", "reasoning_file"?, "partial_text_kept", "metrics",
                  "attempts", "cost", "finished_at"}}

``cost`` is ``{"usd", "input_usd", "cached_input_usd", "cache_write_usd", "output_usd",
"reasoning_usd", "source", "estimated"}``, or null when the model has no known price.

``result_line`` builds it (the engine), ``ResultLine.parse`` reads it (resume, report,
export, compare, the public ``Result``), so no other module walks dict paths of it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from llmbatch.metrics import request_metrics_dict
from llmbatch.providers.anthropic import content_text
from llmbatch.providers.gemini import gemini_text
from llmbatch.providers.responses import output_text
from llmbatch.records import Attempt, Cost, Outcome, RequestMetrics

__all__ = ["ResultLine", "answer_text", "finish_reason", "record_cost_usd", "result_line"]


def result_line(o: Outcome) -> dict[str, Any]:
    """One results.jsonl line for ``o``."""
    response: dict[str, Any] | None = None
    if o.status_code is not None:
        response = {"status_code": o.status_code, "request_id": o.request_id, "body": o.body}
    return {
        "id": "req_" + hashlib.blake2b(o.record_id.encode(), digest_size=8).hexdigest(),
        "custom_id": o.record_id,
        "response": response,
        "error": None if o.ok else {"code": o.error_code, "message": o.error_message},
        "llmbatch": {
            "line": o.line_no,
            "text_file": o.text_file,
            **_span_fields(o.text_span),
            **_reasoning_fields(o),
            "partial_text_kept": o.partial_kept,
            **({} if o.request_hash is None else {"request_hash": o.request_hash}),
            "metrics": request_metrics_dict(o.metrics),
            "attempts": [a.as_dict() for a in o.attempts],
            "cost": o.cost.as_dict() if o.cost is not None else None,
            "finished_at": round(time.time(), 3),
        },
    }


def _span_fields(span: tuple[int, int] | None, part: str = "text") -> dict[str, int]:
    """Where the text is inside a shared text file (--text-layout log); none otherwise."""
    return {} if span is None else {f"{part}_offset": span[0], f"{part}_bytes": span[1]}


def _reasoning_fields(o: Outcome) -> dict[str, Any]:
    """Where the reasoning was written, for an answer that reasoned aloud; none otherwise."""
    if o.reasoning_file is None:
        return {}
    return {"reasoning_file": o.reasoning_file, **_span_fields(o.reasoning_span, "reasoning")}


def answer_text(body: Any) -> str | None:
    """The answer's text from an assembled body of any provider shape (None if none)."""
    if not isinstance(body, dict):
        return None
    if body.get("type") == "message":  # Anthropic Messages
        return content_text(body.get("content"))
    if body.get("object") == "response":  # the Responses API
        return output_text(body)
    if "candidates" in body:  # Gemini
        return gemini_text(body)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):  # chat.completion
        return content_text(message.get("content"))
    text = choice.get("text")  # text_completion
    return text if isinstance(text, str) else None


def finish_reason(body: Any) -> str | None:
    """Why the answer ended (``stop``, ``length``, ``end_turn``, ``completed``, ``STOP``,
    ...), from any body shape."""
    if not isinstance(body, dict):
        return None
    if body.get("type") == "message":
        reason = body.get("stop_reason")
        return reason if isinstance(reason, str) else None
    if body.get("object") == "response":  # "completed", or why it is incomplete
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else body.get("status")
        return reason if isinstance(reason, str) else None
    candidates = body.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        reason = candidates[0].get("finishReason")  # Gemini: STOP, MAX_TOKENS, ...
        return reason if isinstance(reason, str) else None
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    return None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def record_cost_usd(rec: dict[str, Any]) -> float:
    """What a decoded results line says its request cost (0 when unpriced or absent)."""
    lb = rec.get("llmbatch")
    cost = lb.get("cost") if isinstance(lb, dict) else None
    usd = _num(cost.get("usd")) if isinstance(cost, dict) else None
    return usd or 0.0


def _cost(raw: Any) -> Cost | None:
    if not isinstance(raw, dict) or _num(raw.get("usd")) is None:
        return None
    source = raw.get("source")
    return Cost(
        usd=_num(raw.get("usd")) or 0.0,
        input_usd=_num(raw.get("input_usd")) or 0.0,
        cached_input_usd=_num(raw.get("cached_input_usd")) or 0.0,
        cache_write_usd=_num(raw.get("cache_write_usd")) or 0.0,
        output_usd=_num(raw.get("output_usd")) or 0.0,
        reasoning_usd=_num(raw.get("reasoning_usd")) or 0.0,
        source=source if isinstance(source, str) else "",
        estimated=bool(raw.get("estimated")),
    )


def _span(lb: dict[str, Any]) -> tuple[int, int] | None:
    offset, length = _int(lb.get("text_offset")), _int(lb.get("text_bytes"))
    return None if offset is None or length is None else (offset, length)


@dataclass(frozen=True, slots=True)
class ResultLine:
    """A results.jsonl line read back, every field typed and defaulted when missing."""

    custom_id: str
    status_code: int | None
    request_id: str | None
    body: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    line_no: int | None
    text_file: str | None
    text_span: tuple[int, int] | None  # (offset, length) in text_file (--text-layout log)
    partial_text_kept: bool
    metrics: dict[str, Any]
    attempts: list[dict[str, Any]]
    finished_at: float | None
    cost: Cost | None  # None: the model had no known price (or an older record)
    raw: dict[str, Any]

    @property
    def ok(self) -> bool:
        """True when the request produced a complete answer."""
        return self.error_code is None

    @classmethod
    def parse(cls, rec: dict[str, Any]) -> ResultLine | None:
        """Read one decoded line; None when it is not a result record at all."""
        cid = rec.get("custom_id")
        if not isinstance(cid, str):
            return None
        resp = rec.get("response")
        resp = resp if isinstance(resp, dict) else {}
        err = rec.get("error")
        lb = rec.get("llmbatch")
        lb = lb if isinstance(lb, dict) else {}
        body = resp.get("body")
        metrics = lb.get("metrics")
        attempts = lb.get("attempts")
        code: str | None = None
        message: str | None = None
        if isinstance(err, dict):
            code = str(err.get("code") or "unknown")
            msg = err.get("message")
            message = msg if isinstance(msg, str) else None
        elif err is not None:
            code, message = "unknown", str(err)
        rid = resp.get("request_id")
        text_file = lb.get("text_file")
        return cls(
            custom_id=cid,
            status_code=_int(resp.get("status_code")),
            request_id=rid if isinstance(rid, str) else None,
            body=body if isinstance(body, dict) else None,
            error_code=code,
            error_message=message,
            line_no=_int(lb.get("line")),
            text_file=text_file if isinstance(text_file, str) else None,
            text_span=_span(lb),
            partial_text_kept=bool(lb.get("partial_text_kept")),
            metrics=metrics if isinstance(metrics, dict) else {},
            attempts=[a for a in attempts if isinstance(a, dict)]
            if isinstance(attempts, list)
            else [],
            finished_at=_num(lb.get("finished_at")),
            cost=_cost(lb.get("cost")),
            raw=rec,
        )

    def request_metrics(self) -> RequestMetrics:
        """The record's timings as RequestMetrics (per-gap ITLs are not kept in the file)."""
        m = self.metrics
        return RequestMetrics(
            queue_s=_num(m.get("queue_s")) or 0.0,
            ttft_s=_num(m.get("ttft_s")),
            e2el_s=_num(m.get("e2el_s")),
            output_tokens=_int(m.get("output_tokens")) or 0,
            output_tokens_estimated=bool(m.get("output_tokens_estimated")),
            input_tokens=_int(m.get("input_tokens")),
            chunks=_int(m.get("chunks")) or 0,
            answer_ttft_s=_num(m.get("answer_ttft_s")),
            reasoning_chunks=_int(m.get("reasoning_chunks")) or 0,
            reasoning_tokens=_int(m.get("reasoning_tokens")),
            reasoning_tokens_estimated=bool(m.get("reasoning_tokens_estimated")),
            http_version=v if isinstance(v := m.get("http_version"), str) else None,
        )

    def outcome(self) -> Outcome:
        """The record as an Outcome (for re-aggregating metrics)."""
        return Outcome(
            record_id=self.custom_id,
            status_code=self.status_code,
            request_id=self.request_id,
            body=self.body,
            error_code=self.error_code,
            error_message=self.error_message,
            attempts=[
                Attempt(
                    _int(a.get("n")) or 0,
                    _int(a.get("status")),
                    a.get("error") if isinstance(a.get("error"), str) else None,
                    a.get("message") if isinstance(a.get("message"), str) else None,
                    a.get("request_id") if isinstance(a.get("request_id"), str) else None,
                    _num(a.get("wait_s")) or 0.0,
                )
                for a in self.attempts
            ],
            metrics=self.request_metrics(),
            partial_kept=self.partial_text_kept,
            line_no=self.line_no,
            text_file=self.text_file,
            text_span=self.text_span,
            cost=self.cost,
        )
