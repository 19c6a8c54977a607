"""HTTP/2 through real nginx (issue 24): GOAWAY after keepalive_requests, stream limits.

nginx terminates TLS with HTTP/2 and proxies to the mock over HTTP/1.1, as in front of an
OpenAI-compatible server. Skipped, saying so, where nginx is not installed (``apt-get
install nginx-light``; .ci/run installs it when it can).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from llmbatch.cli.job import RunOutput, execute_run
from llmbatch.mockserver import MockConfig, MockServer, expected_text, start_mock_server
from llmbatch.mockserver.tls import MockTLS, make_mock_tls

from .conftest import assert_no_answer_twice, config_for, read_results, write_jsonl
from .nginx import NGINX, run_nginx

pytestmark = [
    pytest.mark.skipif(
        NGINX is None, reason="nginx is not installed (apt-get install nginx-light)"
    ),
    pytest.mark.h2,
    pytest.mark.subprocess,
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> MockTLS:
    return make_mock_tls(tmp_path_factory.mktemp("nginx-tls"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("keepalive_requests", "concurrency", "extra"),
    [(100, 100, ""), (100, 10, ""), (10, 50, "http2_max_concurrent_streams 16;")],
    ids=["keepalive100-c100", "keepalive100-c10", "keepalive10-c50-streams16"],
)
async def test_native_http2_through_nginx_answers_each_prompt_once(
    tmp_path: Path, certs: MockTLS, keepalive_requests: int, concurrency: int, extra: str
) -> None:
    n, tokens = 400, 8
    mock = await start_mock_server(MockConfig(tokens=tokens, ttft_s=0.02, itl_s=0.002))
    try:
        async with run_nginx(
            tmp_path / "nginx",
            f"127.0.0.1:{mock.port}",
            certs,
            keepalive_requests=keepalive_requests,
            extra=extra,
        ) as nginx:
            out = await _native_h2_run(mock, nginx.url, certs, tmp_path, n, concurrency)
        logged = nginx.requests()  # complete: nginx has exited
    finally:
        await mock.close()
    records = read_results(out.run_dir)
    summary = orjson.loads((out.run_dir / "summary.json").read_bytes())
    assert sorted(int(r["custom_id"]) for r in records) == list(range(n))
    for r in records:
        assert r["error"] is None, r["error"]
        assert len(r["llmbatch"]["attempts"]) == 1
        text = r["response"]["body"]["choices"][0]["message"]["content"]
        want = [{"role": "user", "content": f"question {r['custom_id']}"}]
        assert text == expected_text(want, tokens)
    assert summary["errors_by_class"] == {} and summary["attempt_errors_by_class"] == {}
    assert summary["http_versions"] == {"HTTP/2": n}
    # nginx's own log: every prompt's request exactly once, with status 200.
    per_prompt = Counter(orjson.loads(str(req["body"]))["messages"][0]["content"] for req in logged)
    assert per_prompt == Counter(f"question {i}" for i in range(n))
    assert {req["status"] for req in logged} == {200}
    # GOAWAY came: no connection carried more than keepalive_requests streams.
    assert max(int(str(req["conn_requests"])) for req in logged) <= keepalive_requests
    assert len({req["conn"] for req in logged}) >= n // keepalive_requests
    # and the mock behind it streamed no answer twice
    assert_no_answer_twice(mock.stats)
    assert mock.stats.completed == n


@pytest.mark.timeout(120)
async def test_native_http2_through_nginx_with_upstream_stalls(
    tmp_path: Path, certs: MockTLS
) -> None:
    # nginx's proxy_read_timeout cuts streams whose upstream stalls (one in ten prompts,
    # on their first attempt): each cut is a transport error, retried, and never an
    # unexpected one; every prompt ends with its exact answer, once.
    n, tokens = 200, 8
    cfg = MockConfig(tokens=tokens, ttft_s=0.01, itl_s=0.002, faults={"stall": 0.1}, stall_s=3.0)
    mock = await start_mock_server(cfg)
    try:
        async with run_nginx(
            tmp_path / "nginx",
            f"127.0.0.1:{mock.port}",
            certs,
            extra="proxy_read_timeout 1s;",
        ) as nginx:
            out = await _native_h2_run(mock, nginx.url, certs, tmp_path, n, 50)
    finally:
        await mock.close()
    records = read_results(out.run_dir)
    summary = orjson.loads((out.run_dir / "summary.json").read_bytes())
    assert sorted(int(r["custom_id"]) for r in records) == list(range(n))
    for r in records:
        assert r["error"] is None, r["error"]
        text = r["response"]["body"]["choices"][0]["message"]["content"]
        want = [{"role": "user", "content": f"question {r['custom_id']}"}]
        assert text == expected_text(want, tokens)
    assert summary["errors_by_class"] == {}
    failed = summary["attempt_errors_by_class"]
    assert failed and "unexpected_error" not in failed  # the stalls were cut, and retried
    assert sum(failed.values()) == mock.stats.faults["stall"]


async def _native_h2_run(
    mock: MockServer, url: str, certs: MockTLS, tmp_path: Path, n: int, concurrency: int
) -> RunOutput:
    """``n`` prompts ("question i") through ``url`` with --client native --http2."""
    rows = [{"id": i, "prompt": f"question {i}"} for i in range(n)]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = config_for(
        mock,
        tmp_path,
        base_url=url,
        client="native",
        http2=True,
        concurrency=concurrency,
        ca_bundle=certs.ca_file,
        text_files=False,
    )
    return await execute_run(cfg, prompts, install_signal_handlers=False)
