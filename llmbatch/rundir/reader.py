"""Stream a JSONL prompt file into PromptRecords, one line at a time.

Memory is constant in the file size: lines are read one by one, and duplicate
detection keeps a 64-bit hash per id in a flat table (idset.py), not the ids.

Accepted shapes, detected per line:
  1. {"id": ..., "prompt": "...", "system": "..."?, ...extra body params}
  2. {"id": ..., "messages": [...], ...extra body params}
  3. OpenAI Batch: {"custom_id": ..., "method": "POST", "url": "/v1/...", "body": {...}}
  4. Responses API: {"id": ..., "input": "..." | [items], "instructions": "..."?, ...}
  5. Gemini: {"id": ..., "contents": [...], ...} or a Gemini batch line {"key", "request"}

A line that cannot become a request is yielded as an InputError (with the file and
line number); the caller records it and goes on. A line longer than MAX_LINE_BYTES is
one of them: it is skipped without being held in memory, so memory stays bounded
whatever the file holds. The last line, when it has no newline and is not complete JSON,
is a line a producer is still appending: it is yielded as UnfinishedLine, which the
caller leaves for the next run instead of recording.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from llmbatch.errors import InputError, UnfinishedLine
from llmbatch.records import PromptRecord
from llmbatch.rundir.idset import IdSet

__all__ = [
    "open_prompts",
    "MAX_ID_CHARS",
    "MAX_LINE_BYTES",
    "MESSAGE_ROLES",
    "aiter_items",
    "error_record_id",
    "iter_items",
    "iter_records",
    "open_records",
    "parse_item",
    "parse_line",
    "parse_object",
]

MAX_ID_CHARS = 256
# One prompt line at most (16 MiB: a long document, or a few images inline as base64).
# Parsing a line costs ~20x its size in memory; a longer line becomes an error record.
MAX_LINE_BYTES = 16 * 1024 * 1024
_SKIP_BLOCK = 1 << 20
# The chat roles the supported APIs know (OpenAI chat, Anthropic messages via system).
MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_BOM = b"\xef\xbb\xbf"
_BATCH_URLS = {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"}


def error_record_id(line_no: int) -> str:
    """The id given to a line that has no usable id of its own."""
    return f"#line-{line_no}"


def open_records(path: str | Path) -> Iterator[PromptRecord | InputError]:
    """``iter_records`` with the file opened now: InputError here, before a caller
    creates anything (a run directory pinned to a file that cannot be read)."""
    items = iter_records(path)
    first = next(items, None)
    return items if first is None else itertools.chain([first], items)


def iter_records(path: str | Path) -> Iterator[PromptRecord | InputError]:
    """Yield a PromptRecord or an InputError for every non-blank line of ``path``.

    Raises InputError (with no line number) when the file cannot be opened.
    """
    path_s = str(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed in finally; generator keeps it open
    except FileNotFoundError:
        raise InputError("no such file", path=path_s) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a JSONL file", path=path_s) from None
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", path=path_s) from None
    ids = _IdChecker(path_s)
    try:
        line_no = 0
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            line_no += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raw = b""  # dropped before the rest of the line is read
                _skip_rest_of_line(fh)
                yield InputError(
                    f"line longer than {MAX_LINE_BYTES >> 20} MiB (the limit for one prompt)",
                    path=path_s,
                    line_no=line_no,
                )
                continue
            if line_no == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]  # editors on Windows like to add one
            if not raw.strip():
                continue
            item = ids.check(raw, line_no)
            if isinstance(item, InputError) and not raw.endswith(b"\n") and _unfinished(raw):
                item = UnfinishedLine(
                    "the last line has no newline and is not complete JSON (the file is "
                    "still being written?): left for the next run",
                    path=path_s,
                    line_no=line_no,
                )
            yield item
    finally:
        fh.close()


def _unfinished(raw: bytes) -> bool:
    """True when ``raw`` is not valid JSON (a line cut short), not merely a bad prompt."""
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return True
    return False


def _skip_rest_of_line(fh: Any) -> None:
    while block := fh.readline(_SKIP_BLOCK):
        if block.endswith(b"\n"):
            return


class _IdChecker:
    """Parses items in input order and refuses an id seen before (64-bit hashes only)."""

    __slots__ = ("path", "seen", "auto_counts")

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen = IdSet()
        self.auto_counts: dict[str, int] = {}

    def check(self, item: Any, line_no: int) -> PromptRecord | InputError:
        try:
            if isinstance(item, bytes):
                rec = parse_line(
                    item, line_no=line_no, path=self.path, auto_counts=self.auto_counts
                )
            else:
                rec = parse_item(
                    item, line_no=line_no, path=self.path, auto_counts=self.auto_counts
                )
        except InputError as exc:
            return exc
        if not self.seen.add(rec.id):
            return InputError(f"duplicate id {rec.id!r}", path=self.path, line_no=line_no)
        return rec


def iter_items(
    items: Iterable[Any], source: str = "<prompts>"
) -> Iterator[PromptRecord | InputError]:
    """Yield a PromptRecord or an InputError for every item of ``items``, in order.

    An item is a prompt string, an input-line dict (any of the three shapes) or the
    encoded bytes of one JSONL line; "line" numbers count items from 1. Items that are
    already a PromptRecord or an InputError (a file read by ``iter_records``) pass as is.
    """
    ids = _IdChecker(source)
    for n, item in enumerate(items, start=1):
        if isinstance(item, PromptRecord | InputError):
            yield item
        else:
            yield ids.check(item, n)


async def aiter_items(
    items: AsyncIterable[Any], source: str = "<prompts>"
) -> AsyncIterator[PromptRecord | InputError]:
    """``iter_items`` for an async iterable (parsed records pass as is here too)."""
    ids = _IdChecker(source)
    n = 0
    async for item in items:
        n += 1
        if isinstance(item, PromptRecord | InputError):
            yield item
        else:
            yield ids.check(item, n)


def parse_item(
    item: Any, *, line_no: int, path: str, auto_counts: dict[str, int] | None = None
) -> PromptRecord:
    """Turn a prompt string or an input-line dict into a PromptRecord (or InputError)."""
    if isinstance(item, str):
        obj: Any = {"prompt": item}
    elif isinstance(item, dict):
        obj = dict(item)  # parse_object takes keys out: never change the caller's dict
    else:
        raise InputError(
            f"expected a prompt string or an input-line dict, got {type(item).__name__}",
            path=path,
            line_no=line_no,
        )
    try:
        raw = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise InputError(f"not JSON-serialisable: {exc}", path=path, line_no=line_no) from None
    return parse_object(obj, raw, line_no=line_no, path=path, auto_counts=auto_counts)


def parse_line(
    raw: bytes, *, line_no: int, path: str, auto_counts: dict[str, int] | None = None
) -> PromptRecord:
    """Turn one JSONL line into a PromptRecord, or raise InputError saying why."""

    def bad(msg: str) -> InputError:
        return InputError(msg, path=path, line_no=line_no)

    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "utf-8" in str(exc).lower() or "surrogates" in str(exc).lower():
            raise bad("invalid UTF-8") from None
        raise bad(f"invalid JSON ({exc})") from None
    return parse_object(obj, raw, line_no=line_no, path=path, auto_counts=auto_counts)


def parse_object(
    obj: Any,
    raw: bytes,
    *,
    line_no: int,
    path: str,
    auto_counts: dict[str, int] | None = None,
) -> PromptRecord:
    """Validate one decoded line (``raw``, its bytes, seeds an automatic id)."""

    def bad(msg: str) -> InputError:
        return InputError(msg, path=path, line_no=line_no)

    if not isinstance(obj, dict):
        raise bad(f"expected a JSON object, got {type(obj).__name__}")

    if "custom_id" in obj or "body" in obj:
        return _batch_line(obj, bad, line_no)
    if "request" in obj and "key" in obj:
        return _gemini_batch_line(obj, bad, line_no)

    rid = _take_id(obj.pop("id", None), bad)
    shape: Any
    given = [k for k in ("prompt", "messages", "input", "contents") if k in obj]
    if len(given) > 1:
        raise bad(f"give one of {', '.join(given)}, not both")
    if "input" in obj:
        _check_input(obj, bad)
        shape, body = "input", obj
    elif "contents" in obj:
        _check_contents(obj.get("contents"), bad)
        shape, body = "contents", obj
    elif "messages" in obj:
        messages = obj["messages"]
        _check_messages(messages, bad)
        shape = "messages"
        if "system" in obj:
            raise bad('"system" goes with "prompt"; with "messages" add a system message')
        body = obj
    elif "prompt" in obj:
        prompt = obj.pop("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise bad('"prompt" must be a non-empty string')
        system = obj.pop("system", None)
        if system is not None and not isinstance(system, str):
            raise bad('"system" must be a string')
        messages = [{"role": "user", "content": prompt}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        shape = "prompt"
        body = {"messages": messages, **obj}
    else:
        raise bad('missing "prompt", "messages", "input" or "contents"')
    _check_params(body, bad)
    if rid is None:
        rid = _auto_id(raw, auto_counts)
    return PromptRecord(id=rid, line_no=line_no, shape=shape, body=body)


def _batch_line(obj: dict[str, Any], bad: Any, line_no: int) -> PromptRecord:
    rid = _take_id(obj.get("custom_id"), bad)
    if rid is None:
        raise bad('OpenAI Batch line needs a "custom_id"')
    method = obj.get("method", "POST")
    if method != "POST":
        raise bad(f'"method" must be "POST", got {method!r}')
    # Without a url the line uses the profile's own format (not OpenAI chat by default).
    url = obj.get("url")
    if url is not None and url not in _BATCH_URLS:
        raise bad(f'unsupported "url" {url!r} (one of {", ".join(sorted(_BATCH_URLS))})')
    body = obj.get("body")
    if not isinstance(body, dict):
        raise bad('"body" must be a JSON object')
    if url == "/v1/completions":
        if not isinstance(body.get("prompt"), str):
            raise bad('completions "body.prompt" must be a string')
    elif url == "/v1/responses" or (url is None and "input" in body and "messages" not in body):
        _check_input(body, bad)
    elif url is None and "contents" in body and "messages" not in body:
        _check_contents(body.get("contents"), bad)
    else:
        _check_messages(body.get("messages"), bad)
    _check_params(body, bad)
    return PromptRecord(id=rid, line_no=line_no, shape="batch", body=dict(body), endpoint=url)


def _gemini_batch_line(obj: dict[str, Any], bad: Any, line_no: int) -> PromptRecord:
    """A line of a Gemini batch file: ``{"key": ..., "request": GenerateContentRequest}``."""
    rid = _take_id(obj.get("key"), bad)
    if rid is None:
        raise bad('Gemini batch line needs a "key"')
    body = obj.get("request")
    if not isinstance(body, dict):
        raise bad('"request" must be a JSON object')
    _check_contents(body.get("contents"), bad)
    return PromptRecord(id=rid, line_no=line_no, shape="contents", body=dict(body))


def _check_input(body: dict[str, Any], bad: Any) -> None:
    """A Responses API request: ``input`` a non-empty string or list of items."""
    value = body.get("input")
    if isinstance(value, str):
        if not value:
            raise bad('"input" must not be empty')
    elif isinstance(value, list):
        if not value:
            raise bad('"input" must not be empty')
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise bad(f"input[{i}] must be an object")
    else:
        raise bad('"input" must be a string or a list of items')
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad('"instructions" must be a string')


def _check_contents(contents: Any, bad: Any) -> None:
    """A Gemini request: ``contents`` a non-empty list of ``{"role"?, "parts": [...]}``."""
    if not isinstance(contents, list) or not contents:
        raise bad('"contents" must be a non-empty list')
    for i, c in enumerate(contents):
        if not isinstance(c, dict) or not isinstance(c.get("parts"), list):
            raise bad(f'contents[{i}] must be an object with a "parts" list')


def _take_id(value: Any, bad: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise bad(f"id must be a string or integer, got {type(value).__name__}")
    rid = str(value)
    if not rid:
        raise bad("id must not be empty")
    if len(rid) > MAX_ID_CHARS:
        raise bad(f"id longer than {MAX_ID_CHARS} characters")
    if any(ord(c) < 32 for c in rid):
        raise bad("id contains control characters")
    if rid.startswith("#"):
        # "#line-N" names the error record of a bad line; user ids must not collide.
        raise bad('ids starting with "#" are reserved')
    return rid


def _check_messages(messages: Any, bad: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise bad('"messages" must be a non-empty list')
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object")
        role = m.get("role")
        if not isinstance(role, str):
            raise bad(f'messages[{i}] needs a string "role"')
        if role not in MESSAGE_ROLES:
            raise bad(
                f"messages[{i}] has unknown role {role!r} (one of {', '.join(MESSAGE_ROLES)})"
            )
        content = m.get("content")
        if not isinstance(content, (str, list)):
            raise bad(f'messages[{i}] needs "content" (string or list of parts)')


def _check_params(body: dict[str, Any], bad: Any) -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        mt = body.get(key)
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
            raise bad(f'"{key}" must be a positive integer')
    n = body.get("n")
    if n is not None and n != 1:
        raise bad('"n" other than 1 is not supported (one answer per prompt)')
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad('"model" must be a string')


def _auto_id(raw: bytes, counts: dict[str, int] | None) -> str:
    """A stable id from the line's content; repeats get -2, -3, ... in file order."""
    base = "auto-" + hashlib.blake2b(raw.strip(), digest_size=6).hexdigest()
    if counts is None:
        return base
    n = counts.get(base, 0) + 1
    counts[base] = n
    return base if n == 1 else f"{base}-{n}"


def open_prompts(prompts: Path) -> Iterator[PromptRecord | InputError]:
    """The prompt iterator, with an empty or unreadable file reported before anything starts."""
    items = iter_records(prompts)
    first = next(items, None)
    if first is None:
        raise InputError("contains no prompts", path=str(prompts))
    return itertools.chain([first], items)
