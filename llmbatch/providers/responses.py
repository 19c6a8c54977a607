"""OpenAI Responses API streaming (``POST {base_url}/responses``), kind ``openai-responses``.

Also used under any OpenAI-compatible profile for lines that give ``input`` (a string
or a list of items) and for OpenAI Batch lines whose url is ``/v1/responses``. A
chat-shaped record (``prompt`` or ``messages``) is converted by ``to_responses_body``.

Stream grammar: typed events, each JSON object naming its ``type`` (RESEARCH.md 10):
``response.created`` / ``queued`` / ``in_progress`` (a snapshot of the response),
``response.output_item.added`` / ``.done`` (one output item at ``output_index``),
content parts, and deltas: ``output_text`` (the answer text, streamed to the text
file), ``reasoning_summary_text`` and ``reasoning_text`` (reasoning), function-call,
custom-tool, MCP and code-interpreter arguments. The answer ends with exactly one of
``response.completed`` / ``response.incomplete`` / ``response.failed``, carrying the
whole final ``response`` object: there is no ``[DONE]``. An ``error`` event (or
``response.failed``) raises.

The body is that final object as sent. When a gateway leaves its ``output`` out, the
output is assembled from the stream, keyed by ``output_index`` (item ids can change
between events on some gateways): each item as ``output_item.done`` gave it, else as
its deltas built it.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmbatch.errors import MalformedResponse
from llmbatch.http.base import HTTPRequest
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
    "RESPONSES_PATH",
    "ResponsesAssembler",
    "ResponsesProvider",
    "output_text",
    "to_responses_body",
]

RESPONSES_PATH = "/responses"
_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
_SNAPSHOTS = ("response.created", "response.queued", "response.in_progress")
# Chat parameters that have a Responses equivalent (mapped) or none (dropped).
_CHAT_ONLY = (
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stream_options",
    "response_format",
    "reasoning_effort",
)


def to_responses_body(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request from a merged record body.

    A body with ``input`` is sent as given. A chat-shaped body (``messages``) becomes
    ``input`` items: messages keep their role (``system`` and ``developer`` too), text
    parts become ``input_text`` (``output_text`` for the assistant), ``image_url``
    parts ``input_image``, assistant ``tool_calls`` ``function_call`` items and
    ``tool`` messages ``function_call_output`` items. ``max_tokens`` /
    ``max_completion_tokens`` become ``max_output_tokens``, chat ``tools`` and
    ``tool_choice`` lose their ``function`` wrapper, ``response_format`` becomes
    ``text.format`` and ``reasoning_effort`` ``reasoning.effort``.
    """
    if "input" in body:
        out = dict(body)
        # Chat's caps (a profile's params, say) mean max_output_tokens here.
        cap = out.pop("max_completion_tokens", None) or out.pop("max_tokens", None)
        out.pop("max_tokens", None)
        if cap is not None:
            out.setdefault("max_output_tokens", cap)
    else:
        out = {k: v for k, v in body.items() if k not in _CHAT_ONLY}
        out["input"] = _input_items(body.get("messages") or [])
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        if cap is not None and "max_output_tokens" not in out:
            out["max_output_tokens"] = cap
        if isinstance(body.get("tools"), list):
            out["tools"] = [_tool(t) for t in body["tools"]]
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            out["tool_choice"] = {"type": "function", "name": choice["function"].get("name")}
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and "text" not in out:
            schema = fmt.get("json_schema")
            spec = {"type": fmt.get("type"), **(schema if isinstance(schema, dict) else {})}
            out["text"] = {"format": spec}
        effort = body.get("reasoning_effort")
        if effort is not None and "reasoning" not in out:
            out["reasoning"] = {"effort": effort}
    out["stream"] = True
    return out


def _tool(tool: Any) -> Any:
    if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
        return {"type": "function", **tool["function"]}
    return tool


def _input_items(messages: list[Any]) -> list[Any]:
    items: list[Any] = []
    for m in messages:
        if not isinstance(m, dict):
            items.append(m)
            continue
        role = m.get("role")
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": m.get("tool_call_id"),
                    "output": _text_of(m.get("content")),
                }
            )
            continue
        content = m.get("content")
        if content or not m.get("tool_calls"):
            items.append({"role": role, "content": _parts(content, role)})
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "call_id": tc.get("id"),
                    "name": fn.get("name"),
                    "arguments": fn.get("arguments") or "",
                }
            )
    return items


def _parts(content: Any, role: Any) -> Any:
    if not isinstance(content, list):
        return content
    text_type = "output_text" if role == "assistant" else "input_text"
    out: list[Any] = []
    for p in content:
        ptype = p.get("type") if isinstance(p, dict) else None
        if ptype == "text":
            out.append({"type": text_type, "text": p.get("text")})
        elif ptype == "image_url":
            image = p.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            detail = image.get("detail") if isinstance(image, dict) else None
            out.append({"type": "input_image", "image_url": url, "detail": detail or "auto"})
        else:
            out.append(p)
    return out


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and "text" in p
        )
    return content if isinstance(content, str) else ""


def output_text(body: Any) -> str:
    """The answer text of a ``response`` object: its messages' ``output_text`` parts."""
    if not isinstance(body, dict):
        return ""
    texts: list[str] = []
    for item in body.get("output") or []:
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    text = part.get("text")
                    if isinstance(text, str):
                        texts.append(text)
    return "".join(texts)


class ResponsesProvider(Provider):
    """``POST {base_url}/responses`` with ``stream: true``; bearer key."""

    kind = "openai-responses"

    def build_request(self, record: PromptRecord) -> HTTPRequest:
        body = to_responses_body(self._merged_body(record))
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        headers.update(self.profile.headers)
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return HTTPRequest(
            url=f"{self.base_url}{RESPONSES_PATH}", headers=headers, body=orjson.dumps(body)
        )

    def new_assembler(self, record: PromptRecord) -> StreamAssembler:
        return ResponsesAssembler()


# Deltas that append to a string field of an output item (item-level arguments/code).
_ITEM_DELTAS = {
    "response.function_call_arguments.delta": ("function_call", "arguments"),
    "response.custom_tool_call_input.delta": ("custom_tool_call", "input"),
    "response.mcp_call_arguments.delta": ("mcp_call", "arguments"),
    "response.code_interpreter_call_code.delta": ("code_interpreter_call", "code"),
}
_ITEM_DONES = {
    "response.function_call_arguments.done": ("function_call", "arguments"),
    "response.custom_tool_call_input.done": ("custom_tool_call", "input"),
    "response.mcp_call_arguments.done": ("mcp_call", "arguments"),
    "response.code_interpreter_call_code.done": ("code_interpreter_call", "code"),
}


class ResponsesAssembler(StreamAssembler):
    """Accumulates Responses stream events into the final ``response`` object."""

    end_marker = "response.completed"

    def __init__(self) -> None:
        super().__init__()
        self.finished = False
        self._snapshot: dict[str, Any] = {}  # the latest response.created/in_progress
        self._final: dict[str, Any] | None = None
        self._items: dict[int, dict[str, Any]] = {}  # by output_index

    def on_event(self, event: Event) -> str:
        data = event.data
        obj = json_event(data)
        etype = obj.get("type") or event.event
        try:
            return self._handle(str(etype), obj)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            raise MalformedResponse(f"unexpected {etype} event: {data[:120]!r}") from None

    def _handle(self, etype: str, obj: dict[str, Any]) -> str:
        if etype == "response.output_text.delta":
            delta = obj["delta"]
            if not isinstance(delta, str):
                raise MalformedResponse("output_text.delta is not a string")
            part = self._part(obj, "output_text")
            part["text"] = part.get("text", "") + delta
            if obj.get("logprobs"):
                part.setdefault("logprobs", []).extend(obj["logprobs"])
            return delta
        spec = _ITEM_DELTAS.get(etype)
        if spec is not None:
            item = self._item(obj, spec[0])
            item[spec[1]] = (item.get(spec[1]) or "") + obj["delta"]
            return ""
        if etype == "response.reasoning_summary_text.delta":
            part = self._summary(obj)
            part["text"] = part.get("text", "") + obj["delta"]
            self.reasoning.append(obj["delta"])
            return ""
        if etype == "response.reasoning_text.delta":
            part = self._part(obj, "reasoning_text", item_type="reasoning")
            part["text"] = part.get("text", "") + obj["delta"]
            self.reasoning.append(obj["delta"])
            return ""
        if etype in _TERMINAL:
            return self._terminal(etype, obj)
        if etype in _SNAPSHOTS:
            response = obj.get("response")
            if isinstance(response, dict):
                self._snapshot = response
            return ""
        if etype == "error":
            err = obj.get("error")
            raise stream_error(err if isinstance(err, dict) else _top_level_error(obj))
        return self._structure(etype, obj)

    def _structure(self, etype: str, obj: dict[str, Any]) -> str:
        """Events that add or finish items, parts and annotations; returns text that a
        ``.done`` event holds beyond its deltas (a gateway that sent none)."""
        if etype == "response.output_item.added" or etype == "response.output_item.done":
            item = obj.get("item")
            if isinstance(item, dict):
                self._items[int(obj["output_index"])] = item
        elif etype == "response.content_part.added" or etype == "response.content_part.done":
            item = self._item(obj, "message")
            _place(item.setdefault("content", []), int(obj["content_index"]), obj["part"])
        elif etype == "response.output_text.done":
            part = self._part(obj, "output_text")
            before = part.get("text", "")
            text = obj["text"]
            part["text"] = text
            if isinstance(text, str) and text.startswith(before):
                return text[len(before) :]
        elif etype == "response.output_text.annotation.added":
            part = self._part(obj, "output_text")
            annotations = part.setdefault("annotations", [])
            index = int(obj.get("annotation_index", len(annotations)))
            _place(annotations, index, obj["annotation"])
        elif etype == "response.refusal.delta":
            part = self._part(obj, "refusal")
            part["refusal"] = part.get("refusal", "") + obj["delta"]
        elif etype == "response.refusal.done":
            self._part(obj, "refusal")["refusal"] = obj["refusal"]
        elif etype == "response.reasoning_summary_part.added" or (
            etype == "response.reasoning_summary_part.done"
        ):
            item = self._item(obj, "reasoning")
            _place(item.setdefault("summary", []), int(obj["summary_index"]), obj["part"])
        elif etype == "response.reasoning_summary_text.done":
            self._summary(obj)["text"] = obj["text"]
        elif etype == "response.reasoning_text.done":
            self._part(obj, "reasoning_text", item_type="reasoning")["text"] = obj["text"]
        elif etype in _ITEM_DONES:
            key = _ITEM_DONES[etype][1]
            if key in obj:
                self._item(obj, _ITEM_DONES[etype][0])[key] = obj[key]
        # Anything else (web_search_call.searching, mcp_call.completed, ...) reports
        # progress; the item's final state comes with output_item.done.
        return ""

    def _terminal(self, etype: str, obj: dict[str, Any]) -> str:
        response = obj.get("response")
        if not isinstance(response, dict):
            raise MalformedResponse(f"{etype} event without a response object")
        if etype == "response.failed":
            raise stream_error(response.get("error") or {"message": "response.failed"})
        if response.get("output") is None:
            response = {**response, "output": self.assembled_output()}
        self._final = response
        self.finished = True
        return ""

    def _item(self, obj: dict[str, Any], item_type: str) -> dict[str, Any]:
        index = int(obj["output_index"])
        item = self._items.get(index)
        if item is None:  # a delta before its output_item.added: build the item from it
            item = self._items[index] = {"type": item_type}
            if obj.get("item_id"):
                item["id"] = obj["item_id"]
        return item

    def _part(self, obj: dict[str, Any], part_type: str, item_type: str = "message") -> Any:
        content = self._item(obj, item_type).setdefault("content", [])
        index = int(obj["content_index"])
        while len(content) <= index:
            content.append({"type": part_type})
        return content[index]

    def _summary(self, obj: dict[str, Any]) -> Any:
        summary = self._item(obj, "reasoning").setdefault("summary", [])
        index = int(obj["summary_index"])
        while len(summary) <= index:
            summary.append({"type": "summary_text", "text": ""})
        return summary[index]

    def assembled_output(self) -> list[dict[str, Any]]:
        """The output items built from the stream, in ``output_index`` order."""
        return [self._items[i] for i in sorted(self._items)]

    def accept_body(self, obj: Any) -> str:
        if not isinstance(obj, dict):
            raise MalformedResponse("JSON answer is not an object")
        if obj.get("error") is not None and obj.get("object") != "response":
            raise stream_error(obj["error"])
        if obj.get("object") != "response" or not isinstance(obj.get("output"), list):
            raise MalformedResponse("JSON answer is not a Responses API response")
        if obj.get("status") == "failed":
            raise stream_error(obj.get("error") or {"message": "response failed"})
        self._final = obj
        self.finished = True
        return output_text(obj)

    def body(self) -> dict[str, Any]:
        if self._final is not None:
            return self._final
        return {**self._snapshot, "output": self.assembled_output()}

    def usage(self) -> Usage:
        u = (self._final or self._snapshot).get("usage")
        if not isinstance(u, dict):
            return (None, None)
        inp, out = u.get("input_tokens"), u.get("output_tokens")
        return (inp if isinstance(inp, int) else None, out if isinstance(out, int) else None)

    def reasoning_tokens(self) -> int | None:
        u = (self._final or self._snapshot).get("usage")
        details = u.get("output_tokens_details") if isinstance(u, dict) else None
        n = details.get("reasoning_tokens") if isinstance(details, dict) else None
        return n if isinstance(n, int) else None


def _place(items: list[Any], index: int, value: Any) -> None:
    """Put ``value`` at ``index`` of ``items``, padding with empty objects."""
    while len(items) < index:
        items.append({})
    if index < len(items):
        items[index] = value
    else:
        items.append(value)


def _top_level_error(obj: dict[str, Any]) -> dict[str, Any]:
    """The documented ``error`` event keeps code and message at its top level."""
    code = obj.get("code")
    return {"type": code or "error", "code": code, "message": obj.get("message")}
