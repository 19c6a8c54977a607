"""Anthropic Messages streaming (``POST {base_url}/messages``).

The record body arrives in OpenAI chat shape (or, from an OpenAI Batch line with url
``/v1/messages``, already in Anthropic shape); ``to_messages_body`` maps it:
system messages become the top-level ``system``, ``stop`` becomes ``stop_sequences``,
``max_tokens`` is always set (record, then profile params, then ``DEFAULT_MAX_TOKENS``).
Other parameters pass through unchanged.

Stream grammar: ``message_start`` (id, model, input tokens), ``content_block_start``,
``content_block_delta`` (``text_delta`` carries text), ``content_block_stop``,
``message_delta`` (stop reason, output tokens), ``message_stop`` (the end marker);
``ping`` is ignored and ``event: error`` raises.
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
    """Accumulates Messages stream events into one Anthropic ``message`` body."""

    end_marker = "message_stop"

    __slots__ = ("finished", "_parts", "_id", "_model", "_stop", "_stop_seq", "_in", "_out")

    def __init__(self) -> None:
        super().__init__()
        self.finished = False
        self._parts: list[str] = []
        self._id = ""
        self._model = ""
        self._stop: str | None = None
        self._stop_seq: str | None = None
        self._in: int | None = None
        self._out: int | None = None

    def on_event(self, event: Event) -> str:
        data = event.data
        obj = json_event(data)
        etype = obj.get("type") or event.event
        try:
            return self._handle(etype, obj)
        except (AttributeError, KeyError, TypeError):
            raise MalformedResponse(f"unexpected {etype} event: {data[:120]!r}") from None

    def _handle(self, etype: Any, obj: dict[str, Any]) -> str:
        if etype == "content_block_delta":
            delta = obj["delta"]
            if delta.get("type") == "text_delta":
                text = delta["text"]
                if not isinstance(text, str):
                    raise MalformedResponse("text_delta.text is not a string")
                if text:
                    self._parts.append(text)
                return str(text)
            return ""  # thinking, signature or tool-input deltas carry no answer text
        if etype == "message_start":
            msg = obj["message"]
            self._id = str(msg.get("id") or "")
            self._model = str(msg.get("model") or "")
            self._take_usage(msg.get("usage"))
        elif etype == "message_delta":
            delta = obj.get("delta") or {}
            self._stop = delta.get("stop_reason") or self._stop
            self._stop_seq = delta.get("stop_sequence") or self._stop_seq
            self._take_usage(obj.get("usage"))
        elif etype == "message_stop":
            self.finished = True
        elif etype == "error":
            raise stream_error(obj.get("error"))
        return ""

    def accept_body(self, obj: Any) -> str:
        if not isinstance(obj, dict) or obj.get("type") != "message":
            if isinstance(obj, dict) and obj.get("type") == "error":
                raise stream_error(obj.get("error"))
            raise MalformedResponse("JSON answer is not an Anthropic message")
        content = obj.get("content")
        if not isinstance(content, list):
            raise MalformedResponse("JSON answer has no content list")
        text = content_text(content)
        self._id = str(obj.get("id") or "")
        self._model = str(obj.get("model") or "")
        self._stop = obj.get("stop_reason")
        self._stop_seq = obj.get("stop_sequence")
        self._take_usage(obj.get("usage"))
        self._parts = [text] if text else []
        self.finished = True
        return text

    def _take_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        inp, out = usage.get("input_tokens"), usage.get("output_tokens")
        if isinstance(inp, int):
            self._in = inp
        if isinstance(out, int):
            self._out = out

    def body(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [{"type": "text", "text": "".join(self._parts)}],
            "stop_reason": self._stop,
            "stop_sequence": self._stop_seq,
            "usage": {"input_tokens": self._in, "output_tokens": self._out},
        }

    def usage(self) -> Usage:
        return (self._in, self._out)
