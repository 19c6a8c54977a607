"""Endpoint routing: an OpenAI Batch line's ``url`` picks the wire format.

``/v1/chat/completions`` → OpenAI chat, ``/v1/completions`` → text completions,
``/v1/messages`` → Anthropic Messages, ``/v1/responses`` → the Responses API, all at the
profile's base URL with its key. Under an OpenAI-compatible profile a record that gives
``input`` (and no ``messages``) goes to the Responses API too. Other records use the
profile's kind (whose provider converts what it can).
"""

from __future__ import annotations

from llmbatch.http.base import HTTPRequest
from llmbatch.providers.anthropic import AnthropicProvider
from llmbatch.providers.base import Provider, StreamAssembler
from llmbatch.providers.completions import CompletionsProvider
from llmbatch.providers.openai import OpenAIChatProvider
from llmbatch.providers.responses import ResponsesProvider
from llmbatch.records import PromptRecord

__all__ = ["ENDPOINT_KINDS", "RoutingProvider"]

ENDPOINT_KINDS: dict[str, type[Provider]] = {
    "/v1/chat/completions": OpenAIChatProvider,
    "/v1/completions": CompletionsProvider,
    "/v1/messages": AnthropicProvider,
    "/v1/responses": ResponsesProvider,
}
# Kinds whose servers speak OpenAI's API family, where an ``input`` line means Responses.
_OPENAI_FAMILY = (OpenAIChatProvider, CompletionsProvider, ResponsesProvider)


class RoutingProvider(Provider):
    """Wraps the profile's provider; sends records to the format their url names."""

    def __init__(self, native: Provider) -> None:
        super().__init__(native.profile, native.api_key, native.base_url)
        self.native = native
        self.kind = native.kind
        self._delegates: dict[type[Provider], Provider] = {type(native): native}

    def provider_for(self, record: PromptRecord) -> Provider:
        """The provider that speaks the format of ``record.endpoint`` (or its ``input``)."""
        cls = ENDPOINT_KINDS.get(record.endpoint or "")
        if cls is None:
            body = record.body
            if not (
                record.endpoint is None
                and isinstance(self.native, _OPENAI_FAMILY)
                and "input" in body
                and "messages" not in body
            ):
                return self.native
            cls = ResponsesProvider
        prov = self._delegates.get(cls)
        if prov is None:
            prov = cls(self.profile, self.api_key, self.base_url)
            self._delegates[cls] = prov
        return prov

    def build_request(self, record: PromptRecord) -> HTTPRequest:
        return self.provider_for(record).build_request(record)

    def new_assembler(self, record: PromptRecord) -> StreamAssembler:
        return self.provider_for(record).new_assembler(record)
