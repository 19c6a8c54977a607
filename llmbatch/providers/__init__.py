"""Provider registry: a profile's ``kind`` picks the wire format.

``make_provider`` wraps it in a RoutingProvider, so an OpenAI Batch line's ``url``
(``/v1/chat/completions``, ``/v1/completions``, ``/v1/messages``, ``/v1/responses``), or a
line that gives ``input``, can pick another format per record at the same base URL.
"""

from __future__ import annotations

from llmbatch.config.model import ProviderConfig
from llmbatch.errors import ConfigError
from llmbatch.providers.anthropic import AnthropicProvider
from llmbatch.providers.base import Provider, StreamAssembler
from llmbatch.providers.completions import CompletionsProvider
from llmbatch.providers.gemini import GeminiProvider
from llmbatch.providers.openai import OpenAIChatProvider
from llmbatch.providers.responses import ResponsesProvider
from llmbatch.providers.routing import RoutingProvider

__all__ = ["PROVIDER_CLASSES", "Provider", "StreamAssembler", "make_provider"]

PROVIDER_CLASSES: dict[str, type[Provider]] = {
    OpenAIChatProvider.kind: OpenAIChatProvider,
    CompletionsProvider.kind: CompletionsProvider,
    AnthropicProvider.kind: AnthropicProvider,
    ResponsesProvider.kind: ResponsesProvider,
    GeminiProvider.kind: GeminiProvider,
}


def make_provider(profile: ProviderConfig, api_key: str | None, base_url: str) -> Provider:
    """The provider registered for ``profile.kind``, routing records by endpoint."""
    cls = PROVIDER_CLASSES.get(profile.kind)
    if cls is None:
        raise ConfigError(f"provider kind {profile.kind!r} is not supported yet")
    return RoutingProvider(cls(profile, api_key, base_url))
