"""What the native client writes and decodes around the parser: where a URL's requests
go, the request's bytes, and gzip / deflate content decoding."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from llmbatch.errors import ConnectError

__all__ = ["Inflate", "Origin", "h2_request_headers", "inflater", "parse_url", "request_bytes"]

_DEFAULT_HEADERS = (("accept", "*/*"), ("accept-encoding", "gzip, deflate"))


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a URL's requests go: the pool key, and the Host header to send."""

    tls: bool
    host: str
    port: int
    host_header: str
    display: str  # scheme://host:port, for messages


def parse_url(url: str) -> tuple[Origin, str]:
    """``url``'s origin and request target (path and query)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConnectError(f"cannot connect to {url}: --client native speaks http:// and https://")
    tls = scheme == "https"
    default = 443 if tls else 80
    try:
        port = parts.port or default
    except ValueError:
        raise ConnectError(f"cannot connect to {url}: bad port") from None
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    origin = Origin(tls, host, port, host_header, f"{scheme}://{shown}:{port}")
    return origin, target


def request_bytes(origin: Origin, target: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """The POST's head and body, ready to write; the framing headers are ours."""
    lines = [f"POST {target} HTTP/1.1", f"Host: {origin.host_header}"]
    given = set()
    for name, value in headers.items():
        key = name.lower()
        if key in ("host", "content-length", "transfer-encoding", "connection"):
            continue
        _check_field(name, value)
        given.add(key)
        lines.append(f"{name}: {value}")
    for key, value in _DEFAULT_HEADERS:
        if key not in given:
            lines.append(f"{key}: {value}")
    lines.append(f"content-length: {len(body)}\r\n\r\n")
    return "\r\n".join(lines).encode("utf-8") + body


# Connection-specific fields, which HTTP/2 forbids (RFC 9113 8.2.2); the framing is h2's.
_NOT_IN_H2 = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te"}
    | {"proxy-connection"}
)


def h2_request_headers(
    origin: Origin, target: str, headers: Mapping[str, str], body: bytes
) -> list[tuple[bytes, bytes]]:
    """The POST's HTTP/2 header list: pseudo-headers first, names in lower case."""
    out = [
        (b":method", b"POST"),
        (b":scheme", b"https" if origin.tls else b"http"),
        (b":authority", origin.host_header.encode("ascii")),
        (b":path", target.encode("utf-8")),
    ]
    given = set()
    for name, value in headers.items():
        key = name.lower()
        if key in _NOT_IN_H2:
            continue
        _check_field(name, value)
        given.add(key)
        out.append((key.encode("utf-8"), value.encode("utf-8")))
    for key, value in _DEFAULT_HEADERS:
        if key not in given:
            out.append((key.encode(), value.encode()))
    out.append((b"content-length", str(len(body)).encode()))
    return out


def _check_field(name: str, value: str) -> None:
    """No line break in a field, no colon in a name (header injection)."""
    if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
        raise ValueError(f"invalid character in HTTP header {name!r}")


class Inflate:
    """gzip or deflate content decoding. "deflate" is meant to be zlib-wrapped, but
    some servers send raw deflate: the first bytes decide, as browsers and httpx do."""

    __slots__ = ("_z", "_sniff")

    def __init__(self, gzip: bool) -> None:
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
        self._sniff = not gzip

    def decompress(self, data: bytes) -> bytes:
        """The decoded bytes of ``data``; zlib.error when they are not compressed."""
        if self._sniff:
            self._sniff = False
            try:
                return self._z.decompress(data)
            except zlib.error:
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._z.decompress(data)

    def flush(self) -> bytes:
        """What the decoder still holds at the end of the body."""
        return self._z.flush()


def inflater(encoding: str) -> Inflate | None | str:
    """The decoder of a content-encoding: None for none, the name when unsupported."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return Inflate(gzip=True)
    if enc == "deflate":
        return Inflate(gzip=False)
    return enc
