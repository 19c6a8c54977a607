"""Mock servers at the ports the documentation's examples expect, for
tests/test_doc_examples.py: ``python tests/doc_mocks.py READY_FILE PORT...``.

It runs inside the test's own network namespace (``unshare -n``), where these fixed ports
are free: the local profiles' defaults (vLLM 8000, llama.cpp 8080, Ollama 11434) and the
address the hosted profiles are pointed at. READY_FILE appears once every port listens;
the test ends the process by its process group.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from llmbatch.mockserver import MockConfig, start_mock_server


async def serve(ready: Path, ports: list[int]) -> None:
    """Listen on every port, say so, and serve until killed."""
    cfg = MockConfig(tokens=8, ttft_s=0.0, itl_s=0.0)
    servers = [await start_mock_server(cfg, port=port) for port in ports]
    ready.write_text(" ".join(s.url for s in servers))
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), [int(p) for p in sys.argv[2:]]))
