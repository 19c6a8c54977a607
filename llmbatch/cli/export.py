"""``llmbatch export``: a run's results.jsonl in another format, streamed.

Formats:
  openai-batch     the results lines without the ``llmbatch`` key (OpenAI Batch output)
  anthropic-batch  ``{"custom_id", "result": {"type": "succeeded", "message"} |
                   {"type": "errored", "error": {"type": "error", "error": {...}}}}``
  gemini-batch     Gemini batch mode's result lines: ``{"key", "response"}`` (the body as
                   assembled; a Gemini run's is a GenerateContentResponse) or
                   ``{"key", "error": {"code", "message"}}`` (a google.rpc.Status)
  csv              custom_id, status, error_code, text, output_tokens, ttft_s, e2el_s

Records are streamed one at a time. ``ordered`` puts them in input order (by the
prompt-file line each record carries); it keeps one (line, offset) pair per record
and reads the records again in that order.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from llmbatch.errors import LLMBatchError, RunDirError
from llmbatch.rundir.layout import RESULTS, is_own_text_path
from llmbatch.rundir.nofollow import create_file
from llmbatch.rundir.resultline import ResultLine, answer_text
from llmbatch.rundir.results import iter_result_lines, parse_result_line
from llmbatch.rundir.textlog import read_span

__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "ExportError",
    "anthropic_batch_line",
    "csv_row",
    "export_run",
    "gemini_batch_line",
    "iter_results",
    "openai_batch_line",
    "response_text",
    "to_anthropic_message",
    "write_export",
]

FORMATS = ("openai-batch", "anthropic-batch", "gemini-batch", "csv")
CSV_COLUMNS = ("custom_id", "status", "error_code", "text", "output_tokens", "ttft_s", "e2el_s")

_NO_LINE = 1 << 62  # records without a line number go last, in file order

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


class ExportError(LLMBatchError):
    """The export cannot be made (unknown format, output not writable)."""


# -- reading -------------------------------------------------------------------------
def iter_results(
    run_dir: Path, *, ordered: bool = False, damaged: list[int] | None = None
) -> Iterator[dict[str, Any]]:
    """The records of ``run_dir``'s results.jsonl, in file order or input order.

    Damaged lines are skipped, their line numbers put in ``damaged`` (a torn tail is
    not counted). Raises RunDirError at once when there is no results file (and on
    first use when it cannot be read).
    """
    path = run_dir / RESULTS
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {RESULTS} (not a run directory?)")
    return _ordered(path, damaged) if ordered else _in_file_order(path, damaged)


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read: {exc.strerror}") from None


def _in_file_order(path: Path, damaged: list[int] | None) -> Iterator[dict[str, Any]]:
    for _, rec in iter_result_lines(path, damaged=damaged):
        yield rec


def _ordered(path: Path, damaged: list[int] | None) -> Iterator[dict[str, Any]]:
    with _open(path) as fh:
        index: list[tuple[int, int]] = []  # (line number, offset), one per record
        offset = 0
        for line_no, raw in enumerate(fh, start=1):
            rec = parse_result_line(raw)
            if rec is None and damaged is not None and raw.endswith(b"\n") and raw.strip():
                damaged.append(line_no)
            if rec is not None:
                parsed = ResultLine.parse(rec)
                line = parsed.line_no if parsed is not None else None
                key = line if line is not None else _NO_LINE
                index.append((key, offset))
            offset += len(raw)
        index.sort()
        for _, off in index:
            fh.seek(off)
            rec = parse_result_line(fh.readline())
            if rec is not None:
                yield rec


# -- formats ---------------------------------------------------------------------------
def openai_batch_line(rec: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI Batch output line: the record without llmbatch's own key."""
    return {k: v for k, v in rec.items() if k != "llmbatch"}


def response_text(body: Any) -> str:
    """The answer text of a chat.completion, text_completion or Anthropic message body."""
    return answer_text(body) or ""


def to_anthropic_message(body: Any) -> dict[str, Any]:
    """An Anthropic ``message`` for any assembled body (returned as is if it is one)."""
    if isinstance(body, dict) and body.get("type") == "message":
        return body
    b = _obj(body)
    choices = b.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else {}
    finish = first.get("finish_reason") if isinstance(first, dict) else None
    usage = _obj(b.get("usage"))
    return {
        "id": b.get("id") or "",
        "type": "message",
        "role": "assistant",
        "model": b.get("model") or "",
        "content": [{"type": "text", "text": response_text(b)}],
        "stop_reason": _STOP_REASONS.get(finish, finish) if isinstance(finish, str) else None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("prompt_tokens"),
            "output_tokens": usage.get("completion_tokens"),
        },
    }


def _anthropic_error_type(code: Any, status: Any) -> str:
    if code in ("input_error", "bad_request"):
        return {404: "not_found_error", 413: "request_too_large"}.get(
            status, "invalid_request_error"
        )
    if code == "auth_error":
        return "permission_error" if status == 403 else "authentication_error"
    if code in ("rate_limited", "quota_exhausted"):
        return "rate_limit_error"
    if code == "provider_overloaded" or status == 529:
        return "overloaded_error"
    return "api_error"


def anthropic_batch_line(rec: dict[str, Any]) -> dict[str, Any]:
    """The Anthropic Message Batches result line for one record."""
    error = rec.get("error")
    response = _obj(rec.get("response"))
    if error is None:
        result: dict[str, Any] = {
            "type": "succeeded",
            "message": to_anthropic_message(response.get("body")),
        }
    else:
        err = _obj(error)
        code = err.get("code")
        etype = _anthropic_error_type(code, response.get("status_code"))
        message = f"{code}: {err.get('message') or ''}" if code else str(err.get("message"))
        result = {
            "type": "errored",
            "error": {"type": "error", "error": {"type": etype, "message": message}},
        }
    return {"custom_id": rec.get("custom_id"), "result": result}


# llmbatch error codes -> google.rpc.Code (the ``code`` of a Status).
_GRPC_CODES = {
    "input_error": 3,
    "bad_request": 3,
    "rejected_in_stream": 3,
    "auth_error": 16,
    "rate_limited": 8,
    "quota_exhausted": 8,
    "deadline_exceeded": 4,
    "read_timeout": 4,
    "provider_overloaded": 14,
    "connect_error": 14,
}


def gemini_batch_line(rec: dict[str, Any]) -> dict[str, Any]:
    """The Gemini batch mode result line for one record."""
    key = rec.get("custom_id")
    error = rec.get("error")
    if error is None:
        return {"key": key, "response": _obj(rec.get("response")).get("body")}
    err = _obj(error)
    code = err.get("code")
    message = f"{code}: {err.get('message') or ''}" if code else str(err.get("message"))
    return {"key": key, "error": {"code": _GRPC_CODES.get(str(code), 13), "message": message}}


def csv_row(rec: dict[str, Any], run_dir: Path) -> list[Any]:
    """One CSV row (CSV_COLUMNS); a failed request's kept partial text is included."""
    line = ResultLine.parse(rec)
    if line is None:
        return [rec.get("custom_id"), "errored", "unknown", "", "", "", ""]
    metrics = line.metrics
    text = (
        response_text(line.body) if line.ok else _kept_text(run_dir, line.text_file, line.text_span)
    )
    return [
        line.custom_id,
        "succeeded" if line.ok else "errored",
        line.error_code or "",
        text,
        metrics.get("output_tokens", "") if line.ok else "",
        _blank_none(metrics.get("ttft_s")),
        _blank_none(metrics.get("e2el_s")),
    ]


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _blank_none(value: Any) -> Any:
    return "" if value is None else value


def _kept_text(run_dir: Path, text_file: Any, span: tuple[int, int] | None) -> str:
    if not is_own_text_path(text_file):  # a record must not make export read elsewhere
        return ""
    try:
        if span is not None:  # one answer inside text.log (--text-layout log)
            return read_span(run_dir / text_file, *span).decode("utf-8", errors="replace")
        return (run_dir / text_file).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# -- writing ---------------------------------------------------------------------------
def write_export(records: Iterator[dict[str, Any]], fmt: str, out: IO[bytes], run_dir: Path) -> int:
    """Write ``records`` to ``out`` in ``fmt``; return how many were written."""
    n = 0
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for rec in records:
            writer.writerow(csv_row(rec, run_dir))
            out.write(buf.getvalue().encode("utf-8"))
            buf.seek(0)
            buf.truncate()
            n += 1
        if n == 0:
            out.write(buf.getvalue().encode("utf-8"))
        return n
    convert: Callable[[dict[str, Any]], dict[str, Any]]
    if fmt == "openai-batch":
        convert = openai_batch_line
    elif fmt == "anthropic-batch":
        convert = anthropic_batch_line
    elif fmt == "gemini-batch":
        convert = gemini_batch_line
    else:
        raise ExportError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    for rec in records:
        out.write(orjson.dumps(convert(rec)) + b"\n")
        n += 1
    return n


def export_run(
    run_dir: Path,
    fmt: str,
    *,
    ordered: bool = False,
    output: Path | None = None,
    stdout: IO[bytes] | None = None,
    damaged: list[int] | None = None,
) -> int:
    """Export ``run_dir`` to ``output`` (written atomically) or to ``stdout``.

    Line numbers of damaged results lines (skipped) go to ``damaged``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    records = iter_results(run_dir, ordered=ordered, damaged=damaged)
    if output is None:
        if stdout is None:
            raise ExportError("no output given")
        return write_export(records, fmt, stdout, run_dir)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        # Created afresh (O_EXCL, no link followed): its name is easy to guess.
        with os.fdopen(create_file(tmp), "wb") as fh:
            n = write_export(records, fmt, fh, run_dir)
        os.replace(tmp, output)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ExportError(f"cannot write {output}: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return n
