"""Smoke test of the bench machinery (tiny, no timing assertions; the benches themselves
are run by hand: see bench/README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest

from bench.bare import _run as bare_run
from bench.harness import count_result_errors, markdown_table, run_child, write_prompts
from bench.native_wire import _measure as native_wire_measure
from llmbatch.mockserver import MockServer


async def test_bare_loop_streams_every_token(mock_server: MockServer) -> None:
    out = await bare_run(mock_server.url, 4, 10, "mock-model")
    assert out["ok"] == 10 and out["errors"] == {} and out["tokens"] == 10 * 16


async def test_native_wire_drives_whole_answers() -> None:
    figures = await native_wire_measure(answers=3, repeat=1)  # asserts every body ended
    assert figures["realistic_reads"] == 69 and figures["fast_reads"] == 2
    assert all(v > 0 for v in figures.values())


@pytest.mark.subprocess
def test_child_is_reaped_with_its_own_usage() -> None:
    res = run_child([sys.executable, "-c", "print('hi')"], timeout_s=30.0)
    assert res.returncode == 0 and res.stdout.strip() == "hi" and not res.timed_out
    assert res.cpu_s >= 0 and res.maxrss_mb > 0


def test_result_errors_count_failures_missing_and_retries(tmp_path: Path) -> None:
    rows = [
        {"custom_id": "a", "error": None, "llmbatch": {"attempts": [{}, {}]}},
        {"custom_id": "b", "error": {"code": "timeout"}, "llmbatch": {"attempts": [{}]}},
    ]
    (tmp_path / "results.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    errors, kinds, retries = count_result_errors(tmp_path, expected=3)
    assert (errors, kinds, retries) == (2, {"timeout": 1, "no_record": 1}, 1)
    assert write_prompts(tmp_path / "p.jsonl", 3).read_bytes().count(b"\n") == 3
    assert markdown_table(["a", "b"], [["1", "2"]]).splitlines()[1] == "|---|---|"


@pytest.mark.subprocess
@pytest.mark.h2
@pytest.mark.timeout(120)
def test_tls_and_h2_transports(tmp_path: Path) -> None:
    from bench.harness import mock_server, run_bare, run_llmbatch

    prompts = write_prompts(tmp_path / "p.jsonl", 20)
    with mock_server(tokens=4, ttft_ms=0, itl_ms=0, transport="h2") as server:
        assert server.base_url.startswith("https://") and server.ca_file is not None
        bare = run_bare(server, 4, 20, loop="asyncio")  # uvloop is not in .[dev]
        h2 = run_llmbatch(server, 4, prompts, 20, client="httpx", extra_args=("--http2",))
    assert bare.errors == 0 and bare.tokens == 20 * 4 and bare.connections >= 1
    assert h2.errors == 0 and h2.http_versions == {"HTTP/2": 20}
    assert h2.connections == 1  # four streams in flight fit one connection


def test_cost_bench_prices_in_process() -> None:
    from bench.cost import in_process_us

    price_us, worst_us = in_process_us(records=50)
    assert price_us > 0 and worst_us > 0
