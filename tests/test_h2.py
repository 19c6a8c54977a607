"""HTTP/2 over loopback TLS: the hypercorn front-end, stream limits, many streams."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from llmbatch.cli.job import execute_run
from llmbatch.config.model import Timeouts
from llmbatch.errors import (
    AuthError,
    BadRequest,
    CertificateError,
    ConfigError,
    ConnectError,
    QuotaExhausted,
    RateLimited,
    ReadTimeout,
    ServerError,
    StatusError,
    StreamInterrupted,
)
from llmbatch.http import ClientAdapter, ClientOptions, HTTPRequest, make_client
from llmbatch.mockserver import MockConfig, MockServer, expected_text, start_mock_server
from llmbatch.mockserver.tls import MockTLS, make_mock_tls

from . import test_clients_contract as contract
from .conftest import ADAPTERS, assert_no_answer_twice, config_for, read_results, write_jsonl
from .test_tls import MESSAGES, chat_request, streamed_text

pytestmark = pytest.mark.h2

FAST = Timeouts(connect_s=10.0, first_byte_s=30.0, idle_s=30.0, total_s=60.0)
H2_CLIENTS = ["httpx", "native"]  # the adapters that speak HTTP/2


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> MockTLS:
    return make_mock_tls(tmp_path_factory.mktemp("h2"))


@pytest.fixture
async def h2_server(certs: MockTLS) -> AsyncIterator[MockServer]:
    s = await start_mock_server(
        MockConfig(tokens=12, ttft_s=0.0, itl_s=0.0), tls=certs, http2=True, max_streams=100
    )
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.parametrize("name", ADAPTERS)
async def test_every_adapter_gets_exact_answers(
    name: str, h2_server: MockServer, certs: MockTLS
) -> None:
    # httpx and native with --http2 speak h2; the aiohttp-based adapters get HTTP/1.1
    # through ALPN.
    h2 = name in H2_CLIENTS
    async with make_client(
        name, ClientOptions(max_connections=4, timeouts=FAST, ca_bundle=certs.ca_file, http2=h2)
    ) as client:
        text, version = await streamed_text(client, h2_server.url)
    assert text == expected_text(MESSAGES, 12)
    assert version == ("HTTP/2" if h2 else "HTTP/1.1")


async def test_faults_through_the_asgi_front_end(h2_server: MockServer, certs: MockTLS) -> None:
    async with make_client(
        "httpx",
        ClientOptions(max_connections=4, timeouts=FAST, ca_bundle=certs.ca_file, http2=True),
    ) as client:
        req = chat_request(h2_server.url)
        with pytest.raises(RateLimited) as info:
            async with client.stream(
                type(req)(req.url, {**req.headers, "x-mock-fault": "429"}, req.body)
            ):
                pass
        assert info.value.retry_after_s == pytest.approx(0.05)
        # A drop mid-stream ends that stream early: half the answer, no [DONE].
        async with client.stream(
            type(req)(req.url, {**req.headers, "x-mock-fault": "disconnect"}, req.body)
        ) as resp:
            body = b"".join([c async for c in resp.chunks])
        assert body.count(b'"content":') == 1 + 6 and b"[DONE]" not in body
        with pytest.raises(ServerError, match="HTTP 502"):
            async with client.stream(
                type(req)(req.url, {**req.headers, "x-mock-fault": "reset"}, req.body)
            ):
                pass
        text, version = await streamed_text(client, h2_server.url)  # the connection lives on
    assert text == expected_text(MESSAGES, 12) and version == "HTTP/2"
    assert h2_server.stats.connections == 1
    assert h2_server.stats.faults == {"429": 1, "disconnect": 1, "reset": 1}


async def _h2_run(
    tmp_path: Path,
    server: MockServer,
    certs: MockTLS,
    n: int,
    concurrency: int,
    client: str = "httpx",
) -> tuple[list[dict[str, object]], dict[str, object]]:
    rows = [{"id": i, "prompt": f"question {i}"} for i in range(n)]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = config_for(
        server,
        tmp_path,
        client=client,
        http2=True,
        concurrency=concurrency,
        ca_bundle=certs.ca_file,
        text_files=False,
    )
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    summary = orjson.loads((out.run_dir / "summary.json").read_bytes())
    return read_results(out.run_dir), summary


@pytest.mark.timeout(180)
async def test_thousand_streams_over_stream_limited_connections(
    tmp_path: Path, certs: MockTLS
) -> None:
    server = await start_mock_server(
        MockConfig(tokens=4, ttft_s=0.0, itl_s=0.0), tls=certs, http2=True, max_streams=100
    )
    try:
        records, summary = await _h2_run(tmp_path, server, certs, 1000, 1000)
    finally:
        await server.close()
    assert summary["requests"]["succeeded"] == 1000  # type: ignore[index]
    assert summary["errors_by_class"] == {} and summary["attempt_errors_by_class"] == {}
    assert summary["http_versions"] == {"HTTP/2": 1000}
    assert len(records) == 1000
    assert all(r["llmbatch"]["metrics"]["http_version"] == "HTTP/2" for r in records)  # type: ignore[index]
    for r in records:
        text = r["response"]["body"]["choices"][0]["message"]["content"]  # type: ignore[index]
        assert text == expected_text([{"role": "user", "content": f"question {r['custom_id']}"}], 4)
    # 1,000 streams at 100 per connection: 10 connections, at most 10% more.
    assert server.stats.connections <= 11
    assert server.stats.requests == 1000


@pytest.mark.virtualtime
async def test_full_connection_sends_requests_to_another(tmp_path: Path, certs: MockTLS) -> None:
    # A server allowing 25 streams, 200 requests in flight, each held for 2 s: the
    # server sees all 200 at once (no stall on one connection), over exactly 200 / 25
    # connections. On virtual time: the admission ramp's round trips take no wall time.
    server = await start_mock_server(
        MockConfig(tokens=2, ttft_s=2.0, itl_s=0.0), tls=certs, http2=True, max_streams=25
    )
    try:
        records, summary = await _h2_run(tmp_path, server, certs, 200, 200)
    finally:
        await server.close()
    assert summary["http_versions"] == {"HTTP/2": 200}
    assert server.stats.max_in_flight == 200
    assert server.stats.connections == 200 // 25


async def test_streams_per_connection_can_be_capped(h2_server: MockServer, certs: MockTLS) -> None:
    from llmbatch.http.httpx import HttpxAdapter

    gate = asyncio.Event()
    async with HttpxAdapter(
        ClientOptions(max_connections=40, timeouts=FAST, ca_bundle=certs.ca_file, http2=True),
        h2_max_streams=10,
    ) as client:
        req = chat_request(h2_server.url)
        held = type(req)(req.url, {**req.headers, "x-mock-ttft-ms": "60000"}, req.body)

        async def one() -> None:
            async with client.stream(held):
                await gate.wait()

        first = asyncio.create_task(one())  # the first request goes alone, sizing the lanes
        await h2_server.wait_in_flight(1)
        rest = [asyncio.create_task(one()) for _ in range(39)]
        await h2_server.wait_in_flight(40)
        gate.set()
        await asyncio.gather(first, *rest)
    assert h2_server.stats.connections == 4  # 40 streams, at most 10 per connection


@pytest.mark.parametrize("name", ["aiohttp", "httpx-aiohttp"])
def test_http2_needs_native_or_httpx(name: str) -> None:
    with pytest.raises(ConfigError, match="--http2 needs --client native or httpx"):
        make_client(name, ClientOptions(max_connections=1, timeouts=FAST, http2=True))


@pytest.mark.subprocess
def test_cli_mock_server_tls_http2_prints_ca(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", "mock-server", "--port", "0", "--tls", "--http2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        second = proc.stderr.readline()
        url = re.search(r"listening on (https://127\.0\.0\.1:\d+/v1)", first)
        ca = re.search(r"--ca-bundle (\S+)", second)
        assert url and ca, (first, second)
        assert "HTTP/2 (max 100 streams per connection)" in second
        prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": "x"} for i in range(3)])
        base = [sys.executable, "-m", "llmbatch", "run", str(prompts), "-p", "vllm"]
        base += ["--base-url", url.group(1), "--client", "httpx", "--http2", "--no-progress"]
        ok = subprocess.run(
            [*base, "--ca-bundle", ca.group(1), "-o", str(tmp_path / "a")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
        assert {r["llmbatch"]["metrics"]["http_version"] for r in read_results(tmp_path / "a")} == {
            "HTTP/2"
        }
        bad = subprocess.run(
            [*base, "-o", str(tmp_path / "b")], capture_output=True, text=True, timeout=60
        )
        assert bad.returncode == 3, bad.stderr
        assert "CertificateError" in bad.stderr and "--ca-bundle" in bad.stderr
        insecure = subprocess.run(
            [*base, "--insecure", "-o", str(tmp_path / "c")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert insecure.returncode == 0, insecure.stderr
        assert "warning: insecure: TLS certificates are NOT verified" in insecure.stderr
        assert "InsecureTLSWarning" not in insecure.stderr  # said once, by the CLI
        # compare takes the same TLS and HTTP/2 flags as run
        (tmp_path / "c.toml").write_text(f'[providers.vllm]\nbase_url = "{url.group(1)}"\n')
        cmp = subprocess.run(
            [sys.executable, "-m", "llmbatch", "compare", str(prompts), "-p", "vllm"]
            + ["--client", "httpx", "--http2", "--ca-bundle", ca.group(1), "--no-progress"]
            + ["-c", str(tmp_path / "c.toml"), "-o", str(tmp_path / "cmp")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cmp.returncode == 0, cmp.stderr
        (row,) = orjson.loads((tmp_path / "cmp" / "compare.json").read_bytes())["runs"]
        assert row["completed"] == 3 and row["failed"] == 0
        assert row["http_versions"] == {"HTTP/2": 3}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 0
    assert not Path(ca.group(1)).parent.exists()  # its temporary certificates are removed


def _assert_exact_once(records: list[dict[str, object]], n: int, tokens: int) -> None:
    """Every prompt answered once in results.jsonl, with the mock's exact text."""
    assert sorted(int(str(r["custom_id"])) for r in records) == list(range(n))
    for r in records:
        assert r["error"] is None, r["error"]
        text = r["response"]["body"]["choices"][0]["message"]["content"]  # type: ignore[index]
        want = [{"role": "user", "content": f"question {r['custom_id']}"}]
        assert text == expected_text(want, tokens)


@pytest.mark.timeout(120)
def test_goaway_loses_no_answer_with_httpx(tmp_path: Path, certs: MockTLS) -> None:
    # nginx's keepalive_requests: GOAWAY on every connection's 5th stream, 10 in flight.
    # httpcore fails every stream of a connection that got GOAWAY (also those the server
    # promised to finish); each such failure must be a retried transport error, never
    # an unexpected one, and the run must end with every answer (some answers may be
    # streamed twice by the server: docs/http2.md).
    async def run() -> tuple[list[dict[str, object]], dict[str, object], int]:
        server = await start_mock_server(
            MockConfig(tokens=6, ttft_s=0.01, itl_s=0.001),
            tls=certs,
            http2=True,
            max_streams=100,
            goaway_after=5,
        )
        try:
            records, summary = await _h2_run(tmp_path, server, certs, 60, 10)
        finally:
            await server.close()
        return records, summary, server.stats.connections

    records, summary, connections = asyncio.run(run())
    assert summary["requests"]["succeeded"] == 60  # type: ignore[index]
    assert summary["errors_by_class"] == {}
    assert "unexpected_error" not in summary["attempt_errors_by_class"]  # type: ignore[operator]
    _assert_exact_once(records, 60, 6)
    # 60 streams at most 5 per connection: GOAWAY was sent, at least 12 connections.
    assert connections >= 12


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("goaway_after", "concurrency", "max_streams", "n"),
    [
        (1, 10, 100, 60),
        (1, 100, 100, 200),
        (5, 10, 100, 150),
        (5, 100, 25, 300),
        (100, 100, 25, 500),
    ],
    ids=[
        "goaway1-c10",
        "goaway1-c100",
        "goaway5-c10",
        "goaway5-c100-cap25",
        "goaway100-c100-cap25",
    ],
)
async def test_goaway_native_answers_exactly_once(
    tmp_path: Path,
    certs: MockTLS,
    goaway_after: int,
    concurrency: int,
    max_streams: int,
    n: int,
) -> None:
    # GOAWAY after every connection's Nth stream, as nginx's keepalive_requests does:
    # native finishes the streams at or below last_stream_id on the old connection and
    # sends the ones above it again on a new one, without counting an attempt, so the
    # server streams every answer exactly once and no record shows a retry.
    server = await start_mock_server(
        MockConfig(tokens=6, ttft_s=0.02, itl_s=0.002),
        tls=certs,
        http2=True,
        max_streams=max_streams,
        goaway_after=goaway_after,
    )
    try:
        records, summary = await _h2_run(tmp_path, server, certs, n, concurrency, "native")
    finally:
        await server.close()
    _assert_exact_once(records, n, 6)
    assert_no_answer_twice(server.stats)
    assert server.stats.completed == n
    assert summary["errors_by_class"] == {} and summary["attempt_errors_by_class"] == {}
    assert summary["http_versions"] == {"HTTP/2": n}
    assert all(len(r["llmbatch"]["attempts"]) == 1 for r in records)  # type: ignore[index]
    assert server.stats.connections >= n // goaway_after  # GOAWAY came, and was obeyed
    assert server.stats.max_in_flight <= concurrency
    if goaway_after == 1:  # streams were opened past a GOAWAY, refused, and sent again
        # (after the 5th stream whether any crossed the GOAWAY depends on timing: the
        # admission ramp opens streams a few per round trip at first)
        assert server.stats.streams_refused > 0


@pytest.mark.timeout(60)
async def test_graceful_shutdown_mid_run_loses_and_repeats_nothing(
    tmp_path: Path, certs: MockTLS
) -> None:
    # The server is stopped mid-run (GOAWAY on every connection, as on a reload): the
    # streams in flight finish on their connections; the run goes on against the server
    # started again on the same port. No answer is lost, none is streamed twice (by
    # either server), and the only failed attempts are the connections refused while
    # no server listened.
    cfg = MockConfig(tokens=6, ttft_s=0.05, itl_s=0.005)
    first = await start_mock_server(cfg, tls=certs, http2=True)
    run = asyncio.create_task(_h2_run(tmp_path, first, certs, 200, 50, "native"))
    await first.wait_completed(60)
    await first.close(grace_s=10.0)
    second = await start_mock_server(cfg, tls=certs, http2=True, port=first.port)
    try:
        records, summary = await run
    finally:
        await second.close()
    _assert_exact_once(records, 200, 6)
    a, b = first.stats, second.stats
    assert a.requests >= 80  # streams were in flight when it stopped (60 answered, C=50)
    assert a.completed == a.requests  # every stream the first server took, it finished
    assert a.completed + b.completed == 200
    assert_no_answer_twice(a)
    assert_no_answer_twice(b)
    assert not set(a.answered_by_prompt) & set(b.answered_by_prompt)
    assert summary["errors_by_class"] == {}
    assert set(summary["attempt_errors_by_class"]) <= {"connect_error"}  # type: ignore[arg-type]


async def test_mock_counts_answers_per_prompt() -> None:
    # The mock's own per-prompt counters (GET /mock/stats), which the GOAWAY tests read:
    # a prompt answered in full twice is named with its count; a prompt whose stream was
    # cut is started but not answered; /mock/reset clears them.
    import aiohttp

    server = await start_mock_server(MockConfig(tokens=3, ttft_s=0.0, itl_s=0.0))
    try:
        async with aiohttp.ClientSession() as http:

            async def ask(prompt: str, **headers: str) -> None:
                body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
                body["stream"] = True
                url = f"{server.url}/chat/completions"
                try:
                    async with http.post(url, json=body, headers=headers) as resp:
                        await resp.read()
                except aiohttp.ClientError:
                    pass  # the "disconnect" fault

            async def stats() -> dict[str, object]:
                async with http.get(server.url.removesuffix("/v1") + "/mock/stats") as resp:
                    return orjson.loads(await resp.read())  # type: ignore[no-any-return]

            await ask("once")
            assert_no_answer_twice(await stats())
            await ask("twice")
            await ask("twice")
            await ask("cut", **{"x-mock-fault": "disconnect"})
            got = await stats()
            label = orjson.dumps([{"content": "twice", "role": "user"}]).decode()
            assert got["answered_twice"] == {label: 2}
            assert (got["prompts_started"], got["prompts_answered"]) == (3, 2)
            assert got["prompts_started_twice"] == 1
            with pytest.raises(AssertionError, match="more than once"):
                assert_no_answer_twice(server.stats)
            async with http.post(server.url.removesuffix("/v1") + "/mock/reset") as resp:
                await resp.read()
            assert_no_answer_twice(await stats())
            assert (await stats())["prompts_started"] == 0
    finally:
        await server.close()


# -- the adapter contract over HTTP/2 (tests/test_clients_contract.py's, where it applies) --


@pytest.fixture(params=[f"{name}+{mode}" for name in H2_CLIENTS for mode in ("chunks", "push")])
async def h2_client(request: pytest.FixtureRequest, certs: MockTLS) -> AsyncIterator[ClientAdapter]:
    name, _, mode = request.param.partition("+")
    timeouts = Timeouts(connect_s=2.0, first_byte_s=0.5, idle_s=0.5, total_s=10.0)
    client = make_client(
        name,
        ClientOptions(max_connections=8, timeouts=timeouts, ca_bundle=certs.ca_file, http2=True),
    )
    contract._READ_MODE[client] = mode
    async with client:
        yield client


@pytest.fixture
async def h2_contract_server(certs: MockTLS) -> AsyncIterator[MockServer]:
    s = await start_mock_server(
        MockConfig(tokens=12, ttft_s=0.0, itl_s=0.0, stall_s=5.0), tls=certs, http2=True
    )
    try:
        yield s
    finally:
        await s.close()


async def test_h2_contract_stream_and_reuse(
    h2_client: ClientAdapter, h2_contract_server: MockServer
) -> None:
    url = h2_contract_server.url
    for _ in range(5):
        raw, headers = await contract.collect(h2_client, contract.chat_request(url))
        assert headers["content-type"].startswith("text/event-stream")
        assert contract.stream_text(raw) == expected_text(contract.MESSAGES, 12)
        assert raw.endswith(b"data: [DONE]\n\n")
    raw, headers = await contract.collect(h2_client, contract.chat_request(url, stream=False))
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == expected_text(
        contract.MESSAGES, 12
    )
    assert h2_contract_server.stats.completed == 6
    assert h2_contract_server.stats.connections == 1  # one connection, six streams


@pytest.mark.parametrize(
    ("fault", "exc_type", "status"),
    [
        ("429", RateLimited, 429),
        ("quota", QuotaExhausted, 429),
        ("401", AuthError, 401),
        ("400", BadRequest, 400),
        ("503", ServerError, 503),
        ("reset", ServerError, 502),  # the h2 front answers a "reset" with 502 (docs/mock.md)
    ],
)
async def test_h2_contract_http_errors(
    h2_client: ClientAdapter,
    h2_contract_server: MockServer,
    fault: str,
    exc_type: type[StatusError],
    status: int,
) -> None:
    req = contract.chat_request(h2_contract_server.url, **{"x-mock-fault": fault})
    with pytest.raises(exc_type) as info:
        await contract.collect(h2_client, req)
    assert info.value.status == status
    if fault == "429":
        assert info.value.retry_after_s == pytest.approx(0.05)
        assert "retry-after-ms" in info.value.headers


@pytest.mark.parametrize("fault", ["stall", "slow_first_byte"])
async def test_h2_contract_timeouts(
    h2_client: ClientAdapter, h2_contract_server: MockServer, fault: str
) -> None:
    req = contract.chat_request(h2_contract_server.url, **{"x-mock-fault": fault})
    with pytest.raises(ReadTimeout):
        await contract.collect(h2_client, req)
    # The stream timed out, not the connection: the next request is answered on it.
    raw, _ = await contract.collect(h2_client, contract.chat_request(h2_contract_server.url))
    assert contract.stream_text(raw) == expected_text(contract.MESSAGES, 12)


async def test_h2_contract_connect_refused(h2_client: ClientAdapter) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError):
        await contract.collect(h2_client, contract.chat_request(f"https://127.0.0.1:{port}/v1"))


async def test_h2_untrusted_certificate_is_a_certificate_error(
    h2_contract_server: MockServer, tmp_path: Path
) -> None:
    other = make_mock_tls(tmp_path / "other")  # a CA that did not sign the server's
    for name in H2_CLIENTS:
        client = make_client(
            name,
            ClientOptions(max_connections=2, timeouts=FAST, ca_bundle=other.ca_file, http2=True),
        )
        async with client:
            with pytest.raises(CertificateError):
                await contract.collect(client, contract.chat_request(h2_contract_server.url))


# -- HTTP/2 errors the mock does not make: a scripted h2 server ------------------------------


class _ScriptedH2:
    """A TLS h2 server answering each stream by its path: ``/ok`` a small SSE answer,
    ``/refuse-once`` REFUSED_STREAM the first time then ``/ok``, ``/reset`` headers, part of
    the body, then RST_STREAM INTERNAL_ERROR, ``/garbage`` bytes that are no HTTP/2 frame."""

    BODY = b'data: {"n": 1}\n\ndata: [DONE]\n\n'

    def __init__(self, certs: MockTLS) -> None:
        self.certs = certs
        self.refused = 0
        self.streams = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> _ScriptedH2:
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.certs.cert_file), str(self.certs.key_file))
        ctx.set_alpn_protocols(["h2"])
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import h2.config
        import h2.connection
        import h2.errors
        import h2.events

        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while data := await reader.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if not isinstance(ev, h2.events.RequestReceived):
                        continue
                    self.streams += 1
                    sid = ev.stream_id
                    path = dict(ev.headers)[b":path"].decode()
                    head = [(b":status", b"200"), (b"content-type", b"text/event-stream")]
                    if path.endswith("/refuse-once") and not self.refused:
                        self.refused += 1
                        conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                    elif path.endswith("/reset"):
                        conn.send_headers(sid, head)
                        conn.send_data(sid, self.BODY[:10])
                        conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    elif path.endswith("/garbage"):
                        writer.write(conn.data_to_send() + b"\x00\x00\x05\xff" + b"\x00" * 20)
                    else:
                        conn.send_headers(sid, head)
                        conn.send_data(sid, self.BODY, end_stream=True)
                writer.write(conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("mode", ["chunks", "push"])
async def test_native_h2_stream_errors_are_transport_errors(certs: MockTLS, mode: str) -> None:
    # REFUSED_STREAM is sent again at once, for free; RST_STREAM mid-body and a protocol
    # error are StreamInterrupted (retried by the run), never anything of h2's own.
    server = await _ScriptedH2(certs).start()
    client = make_client(
        "native",
        ClientOptions(max_connections=4, timeouts=FAST, ca_bundle=certs.ca_file, http2=True),
    )
    contract._READ_MODE[client] = mode
    base = f"https://127.0.0.1:{server.port}"

    def req(path: str) -> HTTPRequest:
        return HTTPRequest(f"{base}{path}", {"content-type": "application/json"}, b"{}")

    try:
        async with client:
            raw, _ = await contract.collect(client, req("/refuse-once"))
            assert raw == _ScriptedH2.BODY and server.refused == 1
            with pytest.raises(StreamInterrupted, match="reset by the server: INTERNAL_ERROR"):
                await contract.collect(client, req("/reset"))
            raw, _ = await contract.collect(client, req("/ok"))  # the connection lives on
            assert raw == _ScriptedH2.BODY
            with pytest.raises(StreamInterrupted, match="HTTP/2"):
                await contract.collect(client, req("/garbage"))
            raw, _ = await contract.collect(client, req("/ok"))  # on a new connection
            assert raw == _ScriptedH2.BODY
    finally:
        await server.close()
