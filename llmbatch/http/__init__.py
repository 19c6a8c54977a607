"""Client adapters, chosen by name (``--client``)."""

from __future__ import annotations

from pathlib import Path

from llmbatch.config.load import Timeouts
from llmbatch.errors import ConfigError
from llmbatch.http.base import ClientAdapter, HTTPRequest, StreamingResponse

__all__ = ["ClientAdapter", "HTTPRequest", "StreamingResponse", "make_client"]


def make_client(
    name: str,
    *,
    max_connections: int,
    timeouts: Timeouts,
    verify_tls: bool = True,
    http2: bool = False,
    ca_bundle: Path | None = None,
    tls_up_front: bool = True,
) -> ClientAdapter:
    """Build the adapter called ``name``; heavy libraries are imported only when chosen.

    ``ca_bundle``: a PEM file of the CAs to trust instead of the system store.
    ``tls_up_front=False`` (the target is plain HTTP): the aiohttp and native adapters
    build their SSLContext only if an https request comes, saving the CA loading (~30 ms
    of CPU).
    """
    if name in ("aiohttp", "native"):
        if http2:
            lib = "aiohttp" if name == "aiohttp" else "--client native"
            raise ConfigError(f"--http2 needs --client httpx ({lib} speaks HTTP/1.1 only)")
        cls: type[ClientAdapter]
        if name == "aiohttp":
            from llmbatch.http.aiohttp import AiohttpAdapter as cls
        else:
            from llmbatch.http.native import NativeAdapter as cls
        return cls(
            max_connections=max_connections,
            timeouts=timeouts,
            verify_tls=verify_tls,
            ca_bundle=ca_bundle,
            tls_up_front=tls_up_front,
        )
    if name in ("httpx", "httpx-aiohttp"):
        if http2 and name == "httpx-aiohttp":
            raise ConfigError("--http2 needs --client httpx (aiohttp's transport is HTTP/1.1 only)")
        try:
            from llmbatch.http.httpx import HttpxAdapter
        except ImportError as exc:  # the adapter module is optional until it lands
            raise ConfigError(f"client {name!r} is not available: {exc}") from None
        return HttpxAdapter(
            max_connections=max_connections,
            timeouts=timeouts,
            verify_tls=verify_tls,
            ca_bundle=ca_bundle,
            http2=http2,
            aiohttp_transport=(name == "httpx-aiohttp"),
        )
    raise ConfigError(f"unknown client {name!r}")
