"""Gemini's native API: ``POST {base}/models/{model}:streamGenerateContent?alt=sse``.

Kind ``gemini`` (the built-in ``gemini`` profile: base URL ending in ``/v1beta``, key from
``GEMINI_API_KEY`` sent as ``x-goog-api-key``). A line with ``contents`` is sent as given
(without ``model``, which goes in the path); a chat-shaped record is converted by
``to_gemini_body``.

Stream: each ``data:`` event is a whole ``GenerateContentResponse``; there is no end
marker. The stream is whole when it ends after every candidate has a ``finishReason``
(or the prompt was blocked: ``promptFeedback.blockReason``). The events are merged into
one ``GenerateContentResponse`` (the merge rule, also in docs/providers.md):

- top level: each key as the last event gave it (``usageMetadata`` is cumulative, so
  the last event's is the answer's; ``modelVersion``, ``responseId``, ...);
- candidates by ``index`` (position when absent); in each, ``content.parts`` merged as
  below, other keys as the last event gave them, except objects (``groundingMetadata``,
  ``citationMetadata``, ...), which are merged key by key so an empty one adds nothing;
- parts: a text part continues the text part before it when both are answer text or
  both thought (``thought: true``), unless both carry a ``thoughtSignature``; a
  signature that arrives on a following (often empty) part is put on the part it
  continues. A ``functionCall`` with ``willContinue`` stays open: the
  parts after it carrying ``partialArgs`` (``jsonPath`` plus ``stringValue`` /
  ``numberValue`` / ``boolValue`` / ``nullValue``; a string whose earlier piece had
  ``willContinue`` is continued) build its ``args``, and a part without
  ``willContinue`` (often ``{"functionCall": {}}``) closes it; ``partialArgs`` and
  ``willContinue`` are left out of the merged part. Empty text parts that carry
  nothing else are dropped; every other part is kept as sent, in order.

Answer text (streamed to the text file) is the non-thought text; thought text is
reasoning. Errors: an ``error`` object in the stream raises; HTTP errors follow Google's
``{"error": {"code", "message", "status", "details"}}`` (a 429's ``RetryInfo.retryDelay``
is read as its Retry-After in errors.py).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

import orjson

from llmbatch.errors import MalformedResponse, TruncatedStream
from llmbatch.http.base import HTTPRequest
from llmbatch.providers.anthropic import content_text
from llmbatch.providers.base import (
    Provider,
    StreamAssembler,
    Usage,
    json_event,
    stream_error,
)
from llmbatch.providers.sse import Event
from llmbatch.records import PromptRecord

__all__ = [
    "GeminiAssembler",
    "GeminiProvider",
    "gemini_text",
    "set_json_path",
    "to_gemini_body",
]

_ROLES = {"assistant": "model", "user": "user", "model": "model"}
_SYSTEM_ROLES = ("system", "developer")
# Chat parameters and their generationConfig names.
_GENERATION = {
    "max_tokens": "maxOutputTokens",
    "max_completion_tokens": "maxOutputTokens",
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
    "n": "candidateCount",
}
# Chat-only keys with no meaning for Gemini (it refuses unknown fields).
_DROPPED = ("messages", "model", "stream", "stream_options", "user", "stop", "response_format")
_TEXT_KEYS = frozenset({"text", "thought", "thoughtSignature"})


def to_gemini_body(body: dict[str, Any]) -> dict[str, Any]:
    """A GenerateContentRequest from a merged record body (``model`` goes in the URL).

    With ``contents`` the body is sent as given. Otherwise ``messages`` (or a Responses
    ``input`` string with ``instructions``) become ``contents``: ``assistant`` turns
    ``model``, system and developer messages ``systemInstruction``, text parts
    ``{"text"}``, ``data:`` image URLs ``inlineData`` (other URLs ``fileData``);
    sampling parameters move into ``generationConfig`` (``max_tokens`` ->
    ``maxOutputTokens``, ``stop`` -> ``stopSequences``, ...), a JSON ``response_format``
    into ``responseMimeType`` / ``responseJsonSchema``. Other keys pass through.
    """
    if "contents" in body:
        return {k: v for k, v in body.items() if k not in ("model", "stream")}
    out = {
        k: v
        for k, v in body.items()
        if k not in _DROPPED and k not in _GENERATION and k not in ("input", "instructions")
    }
    messages = body.get("messages")
    if messages is None:
        messages = _messages_of_input(body)
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role in _SYSTEM_ROLES:
            text = content_text(m.get("content"))
            if text:
                system.append(text)
            continue
        contents.append({"role": _ROLES.get(str(role), "user"), "parts": _parts_of(m)})
    out["contents"] = contents
    if system and "systemInstruction" not in out:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    gen = dict(out.get("generationConfig") or {})
    for key, name in _GENERATION.items():
        if body.get(key) is not None:
            gen.setdefault(name, body[key])
    stop = body.get("stop")
    if stop:
        gen.setdefault("stopSequences", [stop] if isinstance(stop, str) else stop)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        gen.setdefault("responseMimeType", "application/json")
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema is not None:
            gen.setdefault("responseJsonSchema", schema)
    if gen:
        out["generationConfig"] = gen
    return out


def _messages_of_input(body: dict[str, Any]) -> list[Any]:
    """Chat messages from a Responses-shaped line (``input`` and ``instructions``)."""
    messages: list[Any] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        messages.extend(i for i in given if isinstance(i, dict) and "role" in i)
    return messages


def _parts_of(message: dict[str, Any]) -> list[Any]:
    content = message.get("content")
    parts: list[Any] = []
    if isinstance(content, str):
        parts.append({"text": content})
    elif isinstance(content, list):
        for p in content:
            ptype = p.get("type") if isinstance(p, dict) else None
            if ptype in ("text", "input_text", "output_text"):
                parts.append({"text": p.get("text")})
            elif ptype in ("image_url", "input_image"):
                image = p.get("image_url")
                url = str(image.get("url") if isinstance(image, dict) else image)
                parts.append(_media_part(url))
            else:
                parts.append(p)
    for tc in message.get("tool_calls") or []:
        fn = tc.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {}
        parts.append({"functionCall": {"name": fn.get("name"), "args": args}})
    if message.get("role") == "tool":
        name = message.get("name") or message.get("tool_call_id")
        return [{"functionResponse": {"name": name, "response": {"content": content}}}]
    return parts


def _media_part(url: str) -> dict[str, Any]:
    match = re.match(r"data:([^;,]+);base64,(.*)", url, re.S)
    if match:
        return {"inlineData": {"mimeType": match.group(1), "data": match.group(2)}}
    return {"fileData": {"fileUri": url}}


def gemini_text(body: Any, *, thought: bool = False) -> str:
    """The answer text (or, with ``thought``, the thought text) of the first candidate."""
    if not isinstance(body, dict):
        return ""
    candidates = body.get("candidates")
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        return ""
    content = candidates[0].get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return "".join(
        p["text"]
        for p in parts or []
        if isinstance(p, dict)
        and isinstance(p.get("text"), str)
        and bool(p.get("thought")) == thought
    )


class GeminiProvider(Provider):
    """``POST {base_url}/models/{model}:streamGenerateContent?alt=sse``; key in x-goog-api-key."""

    kind = "gemini"

    def build_request(self, record: PromptRecord) -> HTTPRequest:
        merged = self._merged_body(record)
        model = str(merged.get("model") or "").removeprefix("models/")
        body = to_gemini_body(merged)
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        headers.update(self.profile.headers)
        if self.api_key:
            headers["x-goog-api-key"] = self.api_key
        path = urllib.parse.quote(model, safe="-._~/")
        return HTTPRequest(
            url=f"{self.base_url}/models/{path}:streamGenerateContent?alt=sse",
            headers=headers,
            body=orjson.dumps(body),
        )

    def new_assembler(self, record: PromptRecord) -> StreamAssembler:
        return GeminiAssembler()


class GeminiAssembler(StreamAssembler):
    """Merges streamed GenerateContentResponse events into one (module docstring)."""

    end_marker = "a finishReason"

    def __init__(self) -> None:
        super().__init__()
        self.finished = False
        self._top: dict[str, Any] = {}
        self._candidates: dict[int, dict[str, Any]] = {}
        self._open_call: dict[int, dict[str, Any]] = {}  # candidate -> functionCall open
        self._continued: dict[int, set[str]] = {}  # candidate -> paths whose string goes on

    def on_event(self, event: Event) -> str:
        data = event.data
        obj = json_event(data)
        if obj.get("error") is not None:
            raise gemini_error(obj["error"])
        try:
            return self._merge(obj)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise MalformedResponse(f"unexpected event shape: {data[:120]!r}") from None

    def _merge(self, obj: dict[str, Any]) -> str:
        texts: list[str] = []
        for key, value in obj.items():
            if key != "candidates":
                self._top[key] = value
                continue
            for pos, cand in enumerate(value or []):
                index = cand.get("index", pos)
                texts.append(self._merge_candidate(int(index), cand))
        return "".join(texts)

    def _merge_candidate(self, index: int, cand: dict[str, Any]) -> str:
        """Merge one candidate's event; the answer text it adds to candidate 0 (the text
        file holds one answer; other candidates are in the body only)."""
        merged = self._candidates.setdefault(index, {})
        text = ""
        for key, value in cand.items():
            if key == "content" and isinstance(value, dict):
                content = merged.setdefault("content", {})
                for ckey, cvalue in value.items():
                    if ckey == "parts":
                        parts = content.setdefault("parts", [])
                        for part in cvalue or []:
                            added = self._merge_part(index, parts, part)
                            if index == 0:
                                text += added
                    else:
                        content[ckey] = cvalue
            elif isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return text

    def _merge_part(self, cand: int, parts: list[dict[str, Any]], part: dict[str, Any]) -> str:
        """Add one streamed part; return the answer text it adds."""
        call = part.get("functionCall")
        if isinstance(call, dict):
            self._merge_call(cand, parts, part, call)
            return ""
        self._open_call.pop(cand, None)
        text = part.get("text")
        if not isinstance(text, str) or not _TEXT_KEYS.issuperset(part):
            parts.append(part)
            return ""
        thought = bool(part.get("thought"))
        if thought and cand == 0:
            self.reasoning.append(text)
        last = parts[-1] if parts else None
        if (
            last is not None
            and isinstance(last.get("text"), str)
            and _TEXT_KEYS.issuperset(last)
            and bool(last.get("thought")) == thought
            and not ("thoughtSignature" in last and "thoughtSignature" in part)
        ):
            last["text"] += text
            if "thoughtSignature" in part:
                last["thoughtSignature"] = part["thoughtSignature"]
        else:
            parts.append(dict(part))
        return "" if thought else text

    def _merge_call(
        self, cand: int, parts: list[dict[str, Any]], part: dict[str, Any], call: dict[str, Any]
    ) -> None:
        open_part = self._open_call.get(cand)
        if open_part is None or "name" in call:
            if not call:  # a closing {} with no call open: nothing to add
                return
            open_part = {**part, "functionCall": _plain_call(call)}
            parts.append(open_part)
            self._continued[cand] = set()
        else:
            for key, value in part.items():
                if key != "functionCall":
                    open_part[key] = value
        args_given = call.get("partialArgs")
        if args_given:
            target = open_part["functionCall"].setdefault("args", {})
            continued = self._continued.setdefault(cand, set())
            for arg in args_given:
                _apply_partial_arg(target, arg, continued)
        if call.get("willContinue"):
            self._open_call[cand] = open_part
        else:
            self._open_call.pop(cand, None)

    def end_of_body(self) -> None:
        cands = self._candidates.values()
        feedback = self._top.get("promptFeedback")
        blocked = isinstance(feedback, dict) and feedback.get("blockReason")
        if (cands and all(c.get("finishReason") for c in cands)) or blocked:
            self.finished = True
            return
        raise TruncatedStream("stream ended before a finishReason (Gemini has no end marker)")

    def accept_body(self, obj: Any) -> str:
        # Without alt=sse Gemini answers one JSON array of the same events.
        events = obj if isinstance(obj, list) else [obj]
        if not events or not all(isinstance(e, dict) for e in events):
            raise MalformedResponse("JSON answer is not a GenerateContentResponse")
        if any("error" in e for e in events):
            raise gemini_error(next(e["error"] for e in events if "error" in e))
        if not any("candidates" in e or "promptFeedback" in e for e in events):
            raise MalformedResponse("JSON answer is not a GenerateContentResponse")
        text = "".join(self._merge(e) for e in events)
        self.end_of_body()
        return text

    def body(self) -> dict[str, Any]:
        out = dict(self._top)
        if self._candidates:
            candidates = []
            for index in sorted(self._candidates):
                cand = dict(self._candidates[index])
                content = cand.get("content")
                if isinstance(content, dict) and "parts" in content:
                    kept = [p for p in content["parts"] if p != {"text": ""}]
                    cand["content"] = {**content, "parts": kept}
                candidates.append(cand)
            out["candidates"] = candidates
        return out

    def usage(self) -> Usage:
        u = self._top.get("usageMetadata")
        if not isinstance(u, dict):
            return (None, None)
        prompt = u.get("promptTokenCount")
        answer, thoughts = u.get("candidatesTokenCount"), u.get("thoughtsTokenCount")
        out = None
        if isinstance(answer, int) or isinstance(thoughts, int):
            # Thinking tokens are output tokens (billed as such), as in OpenAI's counts.
            out = (answer if isinstance(answer, int) else 0) + (
                thoughts if isinstance(thoughts, int) else 0
            )
        return (prompt if isinstance(prompt, int) else None, out)

    def reasoning_tokens(self) -> int | None:
        u = self._top.get("usageMetadata")
        n = u.get("thoughtsTokenCount") if isinstance(u, dict) else None
        return n if isinstance(n, int) else None


def _plain_call(call: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in call.items() if k not in ("partialArgs", "willContinue")}


_PATH_TOKEN = re.compile(r"\.([A-Za-z_$][\w$-]*)|\[(\d+)\]|\[['\"]([^'\"]*)['\"]\]")


def _apply_partial_arg(args: dict[str, Any], arg: dict[str, Any], continued: set[str]) -> None:
    path = str(arg.get("jsonPath") or "$")
    if "stringValue" in arg:
        set_json_path(args, path, str(arg["stringValue"]), append=path in continued)
        if arg.get("willContinue"):
            continued.add(path)
        else:
            continued.discard(path)
        return
    for key in ("numberValue", "boolValue"):
        if key in arg:
            set_json_path(args, path, arg[key])
            return
    if "nullValue" in arg:
        set_json_path(args, path, None)


def set_json_path(root: dict[str, Any], path: str, value: Any, *, append: bool = False) -> None:
    """Set the value at a simple JSONPath (``$.a.b[0]['c']``) in ``root``, creating the
    objects and lists on the way; ``append`` adds a string to the string already there."""
    keys: list[str | int] = []
    pos = 1 if path.startswith("$") else 0
    for match in _PATH_TOKEN.finditer(path, pos):
        name, index, quoted = match.groups()
        keys.append(int(index) if index is not None else (name if name is not None else quoted))
    if not keys:
        raise ValueError(f"unsupported jsonPath {path!r}")
    node: Any = root
    for key, nxt in zip(keys, keys[1:], strict=False):
        node = _child(node, key, [] if isinstance(nxt, int) else {})
    last = keys[-1]
    if isinstance(last, int):
        while len(node) <= last:
            node.append(None)
    old = node[last] if isinstance(last, int) else node.get(last)
    node[last] = old + value if append and isinstance(old, str) else value


def _child(node: Any, key: str | int, empty: Any) -> Any:
    if isinstance(key, int):
        while len(node) <= key:
            node.append(None)
        if node[key] is None:
            node[key] = empty
        return node[key]
    if node.get(key) is None:
        node[key] = empty
    return node[key]


# google.rpc.Code names -> the HTTP status they stand for (for errors inside a stream).
_STATUS_CODES = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def gemini_error(err: Any) -> Exception:
    """The exception for Google's error object ``{"code", "message", "status"}`` in a stream."""
    if not isinstance(err, dict):
        return stream_error(err)
    status = err.get("status")
    code = err.get("code")
    if not isinstance(code, int):
        code = _STATUS_CODES.get(str(status))
    return stream_error({"type": status or "error", "code": code, "message": err.get("message")})
