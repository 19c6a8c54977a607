"""Client adapters, chosen by name (``--client``)."""

from __future__ import annotations

from ..config import Timeouts
from ..errors import ConfigError
from .base import ClientAdapter, HTTPRequest, StreamingResponse

__all__ = ["ClientAdapter", "HTTPRequest", "StreamingResponse", "make_client"]


def make_client(
    name: str,
    *,
    max_connections: int,
    timeouts: Timeouts,
    verify_tls: bool = True,
    http2: bool = False,
) -> ClientAdapter:
    """Build the adapter called ``name``; heavy libraries are imported only when chosen."""
    if name == "aiohttp":
        from .aiohttp import AiohttpAdapter

        if http2:
            raise ConfigError("--http2 needs --client httpx (aiohttp speaks HTTP/1.1 only)")
        return AiohttpAdapter(
            max_connections=max_connections, timeouts=timeouts, verify_tls=verify_tls
        )
    if name in ("httpx", "httpx-aiohttp"):
        try:
            from .httpx import HttpxAdapter
        except ImportError as exc:  # the adapter module is optional until it lands
            raise ConfigError(f"client {name!r} is not available: {exc}") from None
        return HttpxAdapter(
            max_connections=max_connections,
            timeouts=timeouts,
            verify_tls=verify_tls,
            http2=http2,
            aiohttp_transport=(name == "httpx-aiohttp"),
        )
    raise ConfigError(f"unknown client {name!r}")
