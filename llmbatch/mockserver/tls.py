"""HTTPS for the mock: a throw-away CA and server certificate, made on the fly.

``trustme`` (the ``mock-tls`` extra) makes a fresh CA and a certificate for 127.0.0.1,
::1 and localhost; nothing comes from the network and nothing outlives the directory
it is written to. Clients trust ``ca_file`` (``--ca-bundle``). The server's context
counts TLS handshakes: its SNI callback runs once per handshake, SNI sent or not,
so ``connections`` is the number of TLS connections clients opened.
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MockTLS", "make_mock_tls", "server_ssl_context"]

HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class MockTLS:
    """PEM files of a mock's certificates: the CA to trust, the server's chain and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_mock_tls(directory: Path | None = None) -> MockTLS:
    """A new CA and a server certificate for the loopback names, written to ``directory``
    (a new temporary directory when None)."""
    try:
        import trustme
    except ImportError:
        raise RuntimeError(
            "the mock's TLS needs trustme: pip install 'llmbatch[mock-tls]'"
        ) from None
    where = Path(directory or tempfile.mkdtemp(prefix="llmbatch-mock-tls-"))
    where.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="llmbatch mock CA")
    cert = ca.issue_cert(*HOSTS)
    tls = MockTLS(
        ca_file=where / "mock-ca.pem",
        cert_file=where / "mock-server.pem",
        key_file=where / "mock-server.key",
    )
    ca.cert_pem.write_to_path(str(tls.ca_file))
    cert.cert_chain_pems[0].write_to_path(str(tls.cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(tls.cert_file), append=True)
    cert.private_key_pem.write_to_path(str(tls.key_file))
    return tls


def server_ssl_context(
    tls: MockTLS, *, alpn: list[str], on_handshake: Callable[[], None]
) -> ssl.SSLContext:
    """The server side: TLS >= 1.2 (RFC 7540 for h2), ``alpn`` offered, handshakes counted."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION  # RFC 7540 section 9.2.1
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    ctx.set_alpn_protocols(alpn)

    def counted(_sock: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        on_handshake()

    ctx.sni_callback = counted
    return ctx
