"""TLS for every adapter: one SSLContext per run, and certificate failures made plain.

Every adapter gets the same context, so which CAs are trusted never depends on the
client library (httpx alone would use certifi and its own reading of SSL_CERT_FILE,
aiohttp the system store). Trust comes from, first match wins:

1. ``ca_bundle`` (``--ca-bundle``, ``LLMBATCH_CA_BUNDLE``, ``ca_bundle`` in config.toml,
   or ``SSL_CERT_FILE``, resolved in config.py): exactly the CAs in that PEM file,
   as with ``curl --cacert``;
2. otherwise the system store (OpenSSL's default paths, which also honour
   ``SSL_CERT_DIR``), or certifi's bundle when the system has none.

``verify=False`` (``--insecure``) checks nothing; it exists for tests.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from llmbatch.errors import CertificateError, ConfigError

__all__ = ["ALPN_HTTP1", "ALPN_HTTP2", "certificate_error_from", "make_ssl_context"]

ALPN_HTTP1 = ["http/1.1"]
ALPN_HTTP2 = ["h2", "http/1.1"]


def make_ssl_context(
    *, ca_bundle: Path | None = None, verify: bool = True, http2: bool = False
) -> ssl.SSLContext:
    """The client SSLContext of a run; ALPN offers h2 first when ``http2``."""
    if not verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CAs: nothing is checked
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca_bundle is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # only this file's CAs
        try:
            ctx.load_verify_locations(cafile=str(ca_bundle))
        except FileNotFoundError:
            raise ConfigError(f"CA bundle not found: {ca_bundle}") from None
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise ConfigError(
                f"CA bundle {ca_bundle}: not a PEM certificate file ({reason})"
            ) from None
    else:
        # The system store (~30-60 ms of CPU to load), built only on this path: a
        # context that is replaced at once would load it for nothing.
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if ctx.cert_store_stats().get("x509_ca", 0) == 0:
            # No system store (slim containers): fall back to certifi, as httpx does.
            import certifi

            ctx.load_verify_locations(cafile=certifi.where())
    ctx.set_alpn_protocols(ALPN_HTTP2 if http2 else ALPN_HTTP1)
    return ctx


def certificate_error_from(exc: BaseException, url: str) -> CertificateError | None:
    """A CertificateError when ``exc`` (or what it wraps) is a failed certificate check.

    Libraries wrap ssl's error differently: aiohttp keeps it as ``certificate_error``,
    httpx and httpx-aiohttp chain it as the cause of their ConnectError.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        # aiohttp's error is itself an ssl.CertificateError, but without ssl's fields.
        inner = getattr(cur, "certificate_error", None)
        if isinstance(inner, ssl.SSLCertVerificationError):
            return _certificate_error(inner, url)
        if isinstance(cur, ssl.SSLCertVerificationError):
            return _certificate_error(cur, url)
        cur = cur.__cause__ or cur.__context__
    return None


def _certificate_error(err: ssl.SSLCertVerificationError, url: str) -> CertificateError:
    problem = getattr(err, "verify_message", None) or getattr(err, "reason", None) or str(err)
    return CertificateError(
        f"TLS certificate of {_origin(url)} not accepted: {problem} "
        "(to trust a private CA, pass --ca-bundle PATH or set SSL_CERT_FILE)"
    )


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else url
