"""``--client native``: llmbatch's own streaming HTTP/1.1 client on asyncio Protocols.

Neither aiohttp nor httpx is imported; responses are parsed by llhttp (``httptools``).
Per socket read the work is the protocol's ``data_received``, llhttp, and the caller's
``on_chunk`` (push) or one future (chunks); with 20 ms between tokens each token is its
own read, and aiohttp's StreamReader, payload parser and timers were most of that cost
(bench/RESULTS.md).

- adapter.py: the ClientAdapter (requests, the stale keep-alive retry, connecting);
- pool.py: the connections, at most the run's concurrency, idle ones kept KEEPALIVE_S;
- connection.py: one socket and the exchange it carries;
- exchange.py: one response: llhttp's callbacks, the head limit, the body's delivery;
- wire.py: URLs, the request's bytes, gzip / deflate.

What it does: HTTP/1.1 keep-alive per origin; TLS through tls.py's context (CA bundle,
--insecure, SNI, ALPN "http/1.1"); Content-Length, chunked and close-delimited bodies;
gzip and deflate content encodings (zlib). What it does not: HTTP/2 (a ConfigError
points to --client httpx), proxies (HTTP(S)_PROXY and friends are ignored, as the
aiohttp adapter's ``trust_env=False`` and the httpx adapter's own transport do),
Expect: 100-continue, redirects, cookies.

Errors are llmbatch's own, as the other adapters raise them: PoolTimeout (no pooled
connection came free within connect_s), ConnectError (refused, DNS, TLS handshake,
connect timeout; CertificateError for a rejected certificate), ReadTimeout (no response
head within first_byte_s, no data for idle_s), StreamInterrupted (closed or invalid
response).
"""

from llmbatch.http.native.adapter import NativeAdapter
from llmbatch.http.native.pool import KEEPALIVE_S

__all__ = ["KEEPALIVE_S", "NativeAdapter"]
