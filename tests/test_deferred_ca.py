"""aiohttp imported with its CA loading deferred: its default contexts still verify.

Each case runs in a fresh interpreter (aiohttp must not be imported yet there), with
SSL_CERT_FILE choosing which CA the process trusts, and connects through aiohttp's own
default context (``ssl=True``) to a TLS server whose certificate comes from our CA.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmbatch.mockserver.tls import MockTLS, make_mock_tls

pytestmark = pytest.mark.timeout(120)

SCRIPT = r"""
import asyncio, ssl, sys
from llmbatch.cli.deferred_ca import import_aiohttp, pending_contexts

import_aiohttp()
assert pending_contexts() == 2, pending_contexts()  # nothing loaded at import
import aiohttp
from aiohttp import web

cert_file, key_file, loop_name = sys.argv[1:4]


async def hello(request):
    return web.Response(text="hello")


async def main():
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:  # aiohttp's default context
            try:
                async with session.get(f"https://127.0.0.1:{port}/") as resp:
                    print("ok", await resp.text(), pending_contexts())
            except aiohttp.ClientConnectorCertificateError as exc:
                print("rejected", pending_contexts(), exc.certificate_error.verify_message)
    finally:
        await runner.cleanup()


if loop_name == "uvloop":
    import uvloop
    factory = uvloop.new_event_loop
else:
    factory = None
with asyncio.Runner(loop_factory=factory) as r:
    r.run(main())
"""

LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


def _run(tmp_path: Path, server: MockTLS, trusted_ca: Path, loop: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_DIR"}
    env["SSL_CERT_FILE"] = str(trusted_ca)
    env["SSL_CERT_DIR"] = str(tmp_path / "no-such-dir")  # only the file above
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(server.cert_file), str(server.key_file), loop],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("loop", LOOPS)
def test_default_context_trusts_the_system_ca_on_first_use(tmp_path: Path, loop: str) -> None:
    server = make_mock_tls(tmp_path / "server")
    out = _run(tmp_path, server, server.ca_file, loop)
    # The verified context loaded its CAs when used; the unverified one still waits.
    assert out == "ok hello 1"


@pytest.mark.parametrize("loop", LOOPS)
def test_default_context_rejects_an_unknown_ca(tmp_path: Path, loop: str) -> None:
    server = make_mock_tls(tmp_path / "server")
    other = make_mock_tls(tmp_path / "other")  # the process trusts another CA only
    out = _run(tmp_path, server, other.ca_file, loop)
    assert out == "rejected 1 unable to get local issuer certificate"
