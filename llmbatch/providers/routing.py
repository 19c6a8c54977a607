"""Endpoint routing: an OpenAI Batch line's ``url`` picks the wire format.

``/v1/chat/completions`` → OpenAI chat, ``/v1/completions`` → text completions,
``/v1/messages`` → Anthropic Messages, all at the profile's base URL with its key.
Records without a url (or with the profile's own) use the profile's kind.

The dispatcher asks for an assembler without saying which request it is for, so once
any record was routed elsewhere, assemblers recognise the grammar from the first
event of the stream: named Anthropic events (or a ``type`` among them), a
``text_completion`` chunk (or ``choices[0].text`` without ``delta``), else chat. Until
then — every run whose records all use the profile's format — the profile's own
assembler is returned directly.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..clients.base import HTTPRequest
from ..records import PromptRecord
from ..sse import Event
from .anthropic import ANTHROPIC_EVENTS, AnthropicProvider, MessagesAssembler
from .base import Provider, StreamAssembler, Usage
from .completions import CompletionsAssembler, CompletionsProvider
from .openai import ChatAssembler, OpenAIChatProvider

__all__ = ["ENDPOINT_KINDS", "RoutingProvider", "SniffingAssembler"]

ENDPOINT_KINDS: dict[str, type[Provider]] = {
    "/v1/chat/completions": OpenAIChatProvider,
    "/v1/completions": CompletionsProvider,
    "/v1/messages": AnthropicProvider,
}


class RoutingProvider(Provider):
    """Wraps the profile's provider; sends records to the format their url names."""

    def __init__(self, native: Provider) -> None:
        super().__init__(native.profile, native.api_key, native.base_url)
        self.native = native
        self.kind = native.kind
        self._delegates: dict[type[Provider], Provider] = {type(native): native}
        self._routed = False

    def provider_for(self, record: PromptRecord) -> Provider:
        """The provider that speaks the format of ``record.endpoint``."""
        cls = ENDPOINT_KINDS.get(record.endpoint or "")
        if cls is None:
            return self.native
        prov = self._delegates.get(cls)
        if prov is None:
            prov = cls(self.profile, self.api_key, self.base_url)
            self._delegates[cls] = prov
        if prov is not self.native:
            self._routed = True
        return prov

    def build_request(self, record: PromptRecord) -> HTTPRequest:
        return self.provider_for(record).build_request(record)

    def new_assembler(self) -> StreamAssembler:
        if not self._routed:
            return self.native.new_assembler()
        return SniffingAssembler(self.native)


class SniffingAssembler(StreamAssembler):
    """Picks the assembler for the stream's grammar on its first event, then delegates."""

    __slots__ = ("finished", "_native", "_inner")

    def __init__(self, native: Provider) -> None:
        self.finished = False
        self._native = native
        self._inner: StreamAssembler | None = None

    def on_event(self, event: Event) -> str:
        inner = self._inner
        if inner is None:
            inner = self._inner = _assembler_for(event) or self._native.new_assembler()
        text = inner.on_event(event)
        self.finished = inner.finished
        return text

    def _current(self) -> StreamAssembler:
        if self._inner is None:
            self._inner = self._native.new_assembler()
        return self._inner

    def body(self) -> dict[str, Any]:
        return self._current().body()

    def usage(self) -> Usage:
        return self._current().usage()


def _assembler_for(event: Event) -> StreamAssembler | None:
    """The assembler whose grammar ``event`` belongs to; None when it cannot tell."""
    if event.event in ANTHROPIC_EVENTS:
        return MessagesAssembler()
    try:
        obj = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    if obj.get("type") in ANTHROPIC_EVENTS:
        return MessagesAssembler()
    if "error" in obj:  # an OpenAI-style error payload: both OpenAI grammars raise alike
        return ChatAssembler()
    if obj.get("object") == "text_completion":
        return CompletionsAssembler()
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first = choices[0]
        if "text" in first and "delta" not in first:
            return CompletionsAssembler()
        return ChatAssembler()
    return None
