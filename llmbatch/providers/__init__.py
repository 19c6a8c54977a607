"""Provider registry: a profile's ``kind`` picks the wire format."""

from __future__ import annotations

from ..config import ProviderConfig
from ..errors import ConfigError
from .base import Provider, StreamAssembler
from .openai import OpenAIChatProvider

__all__ = ["PROVIDER_CLASSES", "Provider", "StreamAssembler", "make_provider"]

PROVIDER_CLASSES: dict[str, type[Provider]] = {
    OpenAIChatProvider.kind: OpenAIChatProvider,
}


def make_provider(profile: ProviderConfig, api_key: str | None, base_url: str) -> Provider:
    """Instantiate the provider class registered for ``profile.kind``."""
    cls = PROVIDER_CLASSES.get(profile.kind)
    if cls is None:
        raise ConfigError(f"provider kind {profile.kind!r} is not supported yet")
    return cls(profile, api_key, base_url)
