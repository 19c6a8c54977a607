"""Shared fixtures: a real mock server on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch.config.load import MockSettings, RunConfig, load_config
from llmbatch.mockserver import MockConfig, MockServer, start_mock_server

ADAPTERS = ["aiohttp", "httpx", "httpx-aiohttp", "native"]


@pytest.fixture
async def mock_server() -> AsyncIterator[MockServer]:
    server = await start_mock_server(MockConfig(tokens=16, ttft_s=0.0, itl_s=0.0))
    try:
        yield server
    finally:
        await server.close()


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write rows (dicts, or raw bytes lines) as a JSONL file."""
    with open(path, "wb") as fh:
        for row in rows:
            fh.write(row if isinstance(row, bytes) else orjson.dumps(row))
            fh.write(b"\n")
    return path


def read_results(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's results.jsonl."""
    with open(run_dir / "results.jsonl", "rb") as fh:
        return [orjson.loads(line) for line in fh]


def config_for(server: MockServer, tmp_path: Path, **flags: Any) -> RunConfig:
    """A RunConfig that sends to ``server`` (an OpenAI-compatible profile with no key)."""
    base = {
        "provider": "vllm",
        "base_url": server.url,
        "model": "mock-model",
        "run_dir": tmp_path / "run",
        "progress": False,
    }
    base.update(flags)
    return load_config(tmp_path / "none.toml" if False else None, flags=base, environ={})


__all__ = ["ADAPTERS", "MockSettings", "config_for", "read_results", "write_jsonl"]
