"""Client adapters, chosen by name (``--client``)."""

from __future__ import annotations

from llmbatch.errors import ConfigError
from llmbatch.http.base import ClientAdapter, ClientOptions, HTTPRequest, StreamingResponse

__all__ = ["ClientAdapter", "ClientOptions", "HTTPRequest", "StreamingResponse", "make_client"]


def make_client(name: str, options: ClientOptions) -> ClientAdapter:
    """Build the adapter called ``name``; heavy libraries are imported only when chosen."""
    if options.http2 and name in ("aiohttp", "httpx-aiohttp"):
        what = "aiohttp" if name == "aiohttp" else "aiohttp's transport"
        raise ConfigError(f"--http2 needs --client native or httpx ({what} speaks HTTP/1.1 only)")
    if name == "aiohttp":
        from llmbatch.http.aiohttp import AiohttpAdapter

        return AiohttpAdapter(options)
    if name == "native":
        from llmbatch.http.native import NativeAdapter

        return NativeAdapter(options)
    if name in ("httpx", "httpx-aiohttp"):
        from llmbatch.http.httpx import HttpxAdapter

        return HttpxAdapter(options, aiohttp_transport=(name == "httpx-aiohttp"))
    raise ConfigError(f"unknown client {name!r}")
