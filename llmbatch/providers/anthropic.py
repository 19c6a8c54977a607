"""Anthropic Messages streaming (``POST {base_url}/messages``).

The record body arrives in OpenAI chat shape (or, from an OpenAI Batch line with url
``/v1/messages``, already in Anthropic shape); ``to_messages_body`` maps it:
system messages become the top-level ``system``, ``stop`` becomes ``stop_sequences``,
``max_tokens`` is always set (record, then profile params, then ``DEFAULT_MAX_TOKENS``).
Other parameters pass through unchanged.

Stream grammar: ``message_start`` (id, model, input tokens), ``content_block_start``,
``content_block_delta`` (text, thinking, signature, tool input JSON, citations),
``content_block_stop``, ``message_delta`` (stop reason, cumulative usage),
``message_stop`` (the end marker); ``ping`` is ignored and ``event: error`` raises.
The answer text is the text blocks' text; thinking blocks are the reasoning.
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
from llmbatch.providers.deltas import merge_delta
from llmbatch.providers.sse import Event
from llmbatch.records import PromptRecord

__all__ = [
    "ANTHROPIC_EVENTS",
    "DEFAULT_ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "AnthropicProvider",
    "MessagesAssembler",
    "content_text",
    "to_messages_body",
]

DEFAULT_MAX_TOKENS = 1024
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_EVENTS = frozenset(
    {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    }
)
_SYSTEM_ROLES = ("system", "developer")
# OpenAI parameters that have an Anthropic equivalent (mapped) or no meaning here.
_MAPPED = ("messages", "stop", "max_completion_tokens", "stream_options", "user")


def to_messages_body(body: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    """Map an OpenAI-chat-shaped body (profile params merged in) to a Messages body."""
    out = {k: v for k, v in body.items() if k not in _MAPPED}
    system_parts: list[str] = []
    given = body.get("system")
    if isinstance(given, str) and given:
        system_parts.append(given)
    messages: list[Any] = []
    for m in body.get("messages") or []:
        if isinstance(m, dict) and m.get("role") in _SYSTEM_ROLES:
            text = content_text(m.get("content"))
            if text:
                system_parts.append(text)
        else:
            messages.append(m)
    out["messages"] = messages
    if isinstance(given, list):
        out["system"] = [*given, *({"type": "text", "text": t} for t in system_parts)]
    elif system_parts:
        out["system"] = "\n\n".join(system_parts)
    else:
        out.pop("system", None)
    cap = body.get("max_tokens") or body.get("max_completion_tokens")
    out["max_tokens"] = cap if isinstance(cap, int) and cap > 0 else default_max_tokens
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    user = body.get("user")
    if isinstance(user, str) and "metadata" not in out:
        out["metadata"] = {"user_id": user}
    out["stream"] = True
    return out


def content_text(content: Any) -> str:
    """The text of a message ``content``: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "")
            for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text")
        )
    return ""


class AnthropicProvider(Provider):
    """``POST {base_url}/messages`` with ``stream: true``; key in ``x-api-key``."""

    kind = "anthropic"

    def build_request(self, record: PromptRecord) -> HTTPRequest:
        body = to_messages_body(self._merged_body(record), DEFAULT_MAX_TOKENS)
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "anthropic-version": DEFAULT_ANTHROPIC_VERSION,
        }
        headers.update(self.profile.headers)
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return HTTPRequest(
            url=f"{self.base_url}/messages", headers=headers, body=orjson.dumps(body)
        )

    def new_assembler(self, record: PromptRecord) -> StreamAssembler:
        return MessagesAssembler()


class MessagesAssembler(StreamAssembler):
    """Accumulates Messages stream events into one Anthropic ``message`` body, as the
    official SDK's ``MessageStream`` does.

    The body starts as ``message_start``'s message (every key it has); each
    ``content_block_start`` appends its block as sent (``text``, ``thinking``,
    ``redacted_thinking``, ``tool_use``, ``server_tool_use``, ``*_tool_result``, ...),
    and the block's deltas grow it: ``text_delta`` the text, ``thinking_delta`` the
    thinking, ``signature_delta`` sets the signature, ``citations_delta`` appends to
    ``citations``, ``input_json_delta`` fragments become the block's ``input`` (parsed
    at ``content_block_stop``); a delta of a type not known here is merged field by
    field (deltas.py). ``message_delta`` sets ``stop_reason``, ``stop_sequence`` and
    whatever else its delta holds, and merges its ``usage`` (cumulative counts, cache
    fields, server tool use) into the message's.
    """

    __slots__ = ("finished", "reasoning", "_message", "_content", "_json", "_texts", "_whole")

    end_marker = "message_stop"

    def __init__(self) -> None:
        super().__init__()
        self.finished = False
        self._message: dict[str, Any] | None = None
        self._content: list[dict[str, Any]] = []
        self._json: dict[int, list[str]] = {}  # tool input JSON fragments, by block index
        # The text or thinking of a block as its pieces, joined once at the end.
        self._texts: dict[tuple[int, str], list[str]] = {}
        self._whole: dict[str, Any] | None = None

    def on_event(self, event: Event) -> str:
        data = event.data
        obj = json_event(data)
        etype = obj.get("type") or event.event
        try:
            return self._handle(etype, obj)
        except (AttributeError, IndexError, KeyError, TypeError):
            raise MalformedResponse(f"unexpected {etype} event: {data[:120]!r}") from None

    def _handle(self, etype: Any, obj: dict[str, Any]) -> str:
        if etype == "content_block_delta":
            delta = obj["delta"]
            dtype = delta["type"]
            index = obj["index"]
            block = self._content[index]
            if dtype == "text_delta":
                text = delta["text"]
                if text.__class__ is not str:
                    raise MalformedResponse("text_delta.text is not a string")
                if block.get("type") != "text":
                    return ""  # as the SDK: text grows text blocks only
                self._grow(index, "text", text)
                return text
            if dtype == "thinking_delta":
                thought = delta["thinking"]
                if thought.__class__ is not str:
                    raise MalformedResponse("thinking_delta.thinking is not a string")
                if block.get("type") == "thinking":
                    self._grow(index, "thinking", thought)
                if thought:
                    self.reasoning.append(thought)
            elif dtype == "input_json_delta":
                self._json.setdefault(obj["index"], []).append(delta["partial_json"])
            elif dtype == "signature_delta":
                block["signature"] = delta["signature"]
            elif dtype == "citations_delta":
                cites = block.get("citations")
                if cites:
                    cites.append(delta["citation"])
                else:
                    block["citations"] = [delta["citation"]]
            else:  # a delta type that came after this release: keep what it carries
                merge_delta(block, {k: v for k, v in delta.items() if k != "type"})
            return ""
        if etype == "content_block_start":
            self._content.append(obj["content_block"])
        elif etype == "content_block_stop":
            self._parse_input(obj["index"])
        elif etype == "message_start":
            self._message = obj["message"]
            content = self._message.get("content")
            self._content = content if content.__class__ is list else []
        elif etype == "message_delta":
            self._on_message_delta(obj)
        elif etype == "message_stop":
            self.finished = True
        elif etype == "error":
            raise stream_error(obj.get("error"))
        return ""  # ping, and event types that came after this release

    def _grow(self, index: int, key: str, text: str) -> None:
        pieces = self._texts.get((index, key))
        if pieces is None:
            start = self._content[index].get(key)
            pieces = self._texts[(index, key)] = [start] if start.__class__ is str else []
        pieces.append(text)

    def _on_message_delta(self, obj: dict[str, Any]) -> None:
        message = self._message
        if message is None:
            raise MalformedResponse("message_delta before message_start")
        delta = obj.get("delta")
        if delta.__class__ is dict:
            message.update(delta)
        usage = obj.get("usage")
        if usage.__class__ is dict:
            have = message.get("usage")
            if have.__class__ is not dict:
                message["usage"] = have = {}
            # Counts are cumulative totals: a value replaces; an absent or null one
            # leaves message_start's.
            have.update({k: v for k, v in usage.items() if v is not None})

    def _parse_input(self, index: int) -> None:
        """A tool block's input, from its JSON fragments (none sent: as it started)."""
        parts = self._json.pop(index, None)
        if not parts:
            return
        raw = "".join(parts)
        if not raw:
            return
        try:
            self._content[index]["input"] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise MalformedResponse(f"tool input is not valid JSON: {raw[:120]!r}") from None

    def accept_body(self, obj: Any) -> str:
        if obj.__class__ is not dict or obj.get("type") != "message":
            if obj.__class__ is dict and obj.get("type") == "error":
                raise stream_error(obj.get("error"))
            raise MalformedResponse("JSON answer is not an Anthropic message")
        content = obj.get("content")
        if content.__class__ is not list:
            raise MalformedResponse("JSON answer has no content list")
        self._whole = obj
        self.reasoning.extend(
            b["thinking"] for b in content if b.__class__ is dict and b.get("thinking")
        )
        self.finished = True
        return content_text(content)

    def body(self) -> dict[str, Any]:
        if self._whole is not None:
            return self._whole
        for index in list(self._json):  # a block whose content_block_stop never came
            self._parse_input(index)
        for (index, key), pieces in self._texts.items():
            self._content[index][key] = "".join(pieces)
        message = dict(self._message or {"type": "message", "role": "assistant"})
        message["content"] = self._content
        return message

    def _usage(self) -> dict[str, Any]:
        source = self._whole if self._whole is not None else self._message
        usage = source.get("usage") if source is not None else None
        return usage if usage.__class__ is dict else {}

    def usage(self) -> Usage:
        u = self._usage()
        inp, out = u.get("input_tokens"), u.get("output_tokens")
        return (inp if inp.__class__ is int else None, out if out.__class__ is int else None)

    def reasoning_tokens(self) -> int | None:
        details = self._usage().get("output_tokens_details")
        n = details.get("thinking_tokens") if details.__class__ is dict else None
        return n if n.__class__ is int else None
