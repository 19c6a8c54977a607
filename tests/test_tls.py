"""HTTPS over loopback, every adapter: trusted CA, untrusted CA, --insecure, SSL_CERT_FILE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

import llmbatch
from llmbatch.cli.job import execute_run
from llmbatch.cli.report import load_report
from llmbatch.config.load import load_config
from llmbatch.config.model import Timeouts
from llmbatch.errors import CertificateError, ConfigError
from llmbatch.http import ClientAdapter, ClientOptions, HTTPRequest, make_client
from llmbatch.mockserver import MockConfig, MockServer, expected_text, start_mock_server
from llmbatch.mockserver.tls import MockTLS, make_mock_tls
from llmbatch.providers.sse import SSEDecoder

from .conftest import ADAPTERS, config_for, read_results, write_jsonl

MESSAGES = [{"role": "user", "content": "over tls"}]
FAST = Timeouts(connect_s=5.0, first_byte_s=5.0, idle_s=5.0, total_s=20.0)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> MockTLS:
    return make_mock_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def tls_server(certs: MockTLS) -> AsyncIterator[MockServer]:
    s = await start_mock_server(MockConfig(tokens=12, ttft_s=0.0, itl_s=0.0), tls=certs)
    try:
        yield s
    finally:
        await s.close()


def chat_request(url: str) -> HTTPRequest:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    return HTTPRequest(
        url=f"{url}/chat/completions",
        headers={"content-type": "application/json"},
        body=orjson.dumps(body),
    )


async def streamed_text(client: ClientAdapter, url: str) -> tuple[str, str]:
    """(the answer's text, the protocol it came over)."""
    decoder = SSEDecoder()
    text = []
    async with client.stream(chat_request(url)) as resp:
        version = resp.http_version
        async for chunk in resp.chunks:
            for ev in decoder.feed(chunk):
                if ev.data != b"[DONE]":
                    for choice in orjson.loads(ev.data)["choices"]:
                        text.append(choice["delta"].get("content") or "")
    return "".join(text), version


@pytest.mark.parametrize("name", ADAPTERS)
async def test_trusted_ca_streams_exact_answer(
    name: str, tls_server: MockServer, certs: MockTLS
) -> None:
    assert tls_server.url.startswith("https://127.0.0.1:")
    async with make_client(
        name, ClientOptions(max_connections=4, timeouts=FAST, ca_bundle=certs.ca_file)
    ) as client:
        text, version = await streamed_text(client, tls_server.url)
    assert text == expected_text(MESSAGES, 12)
    assert version == "HTTP/1.1"
    assert tls_server.stats.connections == 1  # the server saw one TLS handshake


@pytest.mark.parametrize("name", ADAPTERS)
async def test_untrusted_ca_is_a_certificate_error(name: str, tls_server: MockServer) -> None:
    async with make_client(name, ClientOptions(max_connections=4, timeouts=FAST)) as client:
        with pytest.raises(CertificateError) as info:
            await streamed_text(client, tls_server.url)
    msg = str(info.value)
    assert f"TLS certificate of https://127.0.0.1:{tls_server.port} not accepted" in msg
    assert "unable to get local issuer certificate" in msg  # the problem, named
    assert "--ca-bundle" in msg
    assert tls_server.stats.requests == 0


@pytest.mark.parametrize("name", ADAPTERS)
async def test_wrong_host_name_is_named(name: str, tmp_path: Path) -> None:
    import trustme

    # A server certificate from our CA, but for another name than 127.0.0.1.
    ca = trustme.CA()
    other = ca.issue_cert("elsewhere.test")
    wrong = MockTLS(
        ca_file=tmp_path / "ca.pem", cert_file=tmp_path / "c.pem", key_file=tmp_path / "k.pem"
    )
    ca.cert_pem.write_to_path(str(wrong.ca_file))
    other.cert_chain_pems[0].write_to_path(str(wrong.cert_file))
    other.private_key_pem.write_to_path(str(wrong.key_file))
    server = await start_mock_server(MockConfig(tokens=3, ttft_s=0, itl_s=0), tls=wrong)
    try:
        async with make_client(
            name, ClientOptions(max_connections=2, timeouts=FAST, ca_bundle=wrong.ca_file)
        ) as client:
            problem = "mismatch, certificate is not valid for '127.0.0.1'"
            with pytest.raises(CertificateError, match=problem):
                await streamed_text(client, server.url)
    finally:
        await server.close()


@pytest.mark.parametrize("name", ADAPTERS)
async def test_insecure_passes(name: str, tls_server: MockServer) -> None:
    async with make_client(
        name, ClientOptions(max_connections=2, timeouts=FAST, verify_tls=False)
    ) as client:
        text, _ = await streamed_text(client, tls_server.url)
    assert text == expected_text(MESSAGES, 12)


@pytest.mark.parametrize("client", ADAPTERS)
async def test_run_over_tls_records_protocol(
    client: str, tmp_path: Path, tls_server: MockServer, certs: MockTLS
) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(20)])
    cfg = config_for(tls_server, tmp_path, client=client, concurrency=5, ca_bundle=certs.ca_file)
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    assert out.result.metrics.succeeded == 20
    records = read_results(out.run_dir)
    assert {r["llmbatch"]["metrics"]["http_version"] for r in records} == {"HTTP/1.1"}
    summary = orjson.loads((out.run_dir / "summary.json").read_bytes())
    assert summary["http_versions"] == {"HTTP/1.1": 20}
    assert load_report(out.run_dir, recompute=True)["http_versions"] == {"HTTP/1.1": 20}
    assert tls_server.stats.connections <= 5


async def test_library_client_trusts_ca_bundle(tls_server: MockServer, certs: MockTLS) -> None:
    async with llmbatch.Client(
        "vllm", base_url=tls_server.url, model="m", ca_bundle=str(certs.ca_file)
    ) as llm:
        result = await llm.complete("over tls")
    assert result.ok and result.text == expected_text(MESSAGES, 12)
    assert result.timings.http_version == "HTTP/1.1"


async def test_library_client_insecure_warns_and_passes(tls_server: MockServer) -> None:
    with pytest.warns(llmbatch.InsecureTLSWarning, match="NOT verified"):
        async with llmbatch.Client(
            "vllm", base_url=tls_server.url, model="m", insecure=True
        ) as llm:
            result = await llm.complete("over tls")
    assert result.ok and result.text == expected_text(MESSAGES, 12)


@pytest.mark.parametrize("client", ADAPTERS)
async def test_untrusted_server_stops_the_run_at_once(
    client: str, tmp_path: Path, tls_server: MockServer
) -> None:
    # 200 prompts and generous retries: a certificate error must not be retried.
    (tmp_path / "c.toml").write_text("[retry]\nmax_attempts = 6\nbackoff_base_s = 1.0\n")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(200)])
    cfg = load_config(
        tmp_path / "c.toml",
        flags={
            "provider": "vllm",
            "base_url": tls_server.url,
            "client": client,
            "concurrency": 4,
            "run_dir": tmp_path / "run",
            "progress": False,
        },
        environ={},
    )
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    assert out.result.stop_reason == "aborted"
    assert "CertificateError" in (out.result.abort_message or "")
    assert "unable to get local issuer certificate" in (out.result.abort_message or "")
    assert out.result.metrics.succeeded == 0
    assert tls_server.stats.requests == 0
    # Stopped after the first handshakes, not after 200 prompts x 6 attempts.
    assert tls_server.stats.connections <= 20


def test_ca_bundle_sources(tmp_path: Path, certs: MockTLS) -> None:
    flags = {"provider": "vllm"}
    # SSL_CERT_FILE is the default; llmbatch's own settings win over it.
    env = {"SSL_CERT_FILE": str(certs.ca_file)}
    assert load_config(None, flags=flags, environ=env).ca_bundle == certs.ca_file
    other = tmp_path / "other.pem"
    other.write_bytes(certs.ca_file.read_bytes())
    env2 = {**env, "LLMBATCH_CA_BUNDLE": str(other)}
    assert load_config(None, flags=flags, environ=env2).ca_bundle == other
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f"[run]\nca_bundle = '{other}'\n")
    assert load_config(cfg_file, flags=flags, environ=env).ca_bundle == other
    assert load_config(None, flags=flags, environ={}).ca_bundle is None
    with pytest.raises(ConfigError, match="--ca-bundle: CA bundle not found: .*missing.pem"):
        load_config(None, flags={**flags, "ca_bundle": tmp_path / "missing.pem"}, environ={})
    cfg_file.write_text(f"[run]\nca_bundle = '{tmp_path / 'gone.pem'}'\n")
    with pytest.raises(ConfigError, match=r"c.toml: run.ca_bundle: CA bundle not found"):
        load_config(cfg_file, flags=flags, environ={})
    with pytest.raises(ConfigError, match="SSL_CERT_FILE names no file"):
        load_config(None, flags=flags, environ={"SSL_CERT_FILE": str(tmp_path / "nope")})


def test_ca_bundle_that_is_not_pem(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="junk.pem: not a PEM certificate file"):
        make_client("aiohttp", ClientOptions(max_connections=1, timeouts=FAST, ca_bundle=junk))
