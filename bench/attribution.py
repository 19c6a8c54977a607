"""Where llmbatch's CPU goes: one in-process run with parts of the pipeline stubbed out.

    .venv/bin/python -m llmbatch mock-server --port 8766 --tokens 64 --ttft-ms 0 --itl-ms 0 &
    for v in base notext nometrics noresults nothing; do
        .venv/bin/python -m bench.attribution $v 8766 --requests 4000
    done
    kill %1

Variants: ``base`` (everything), ``notext`` (no per-request text files), ``nometrics`` (no
run aggregates), ``noresults`` (no results.jsonl lines), ``nothing`` (all three off).
Prints user and system CPU and CPU µs per streamed token. Run directories go to
bench/out/ (never /tmp: see RESULTS.md) and are left for the caller to delete.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from .harness import WORK_DIR

TOKENS = 64


def _stub(variant: str) -> None:
    from llmbatch import metrics
    from llmbatch.rundir import text, writer

    if variant in ("notext", "nothing"):
        text.TextWriter.append = lambda self, sink, text: None  # type: ignore[method-assign]
        text.TextWriter.finish = (  # type: ignore[method-assign]
            lambda self, sink, complete, keep_partial: None
        )
    if variant in ("nometrics", "nothing"):
        metrics.RunMetrics.add = lambda self, o, finished_at=None: None  # type: ignore[method-assign]
    if variant in ("noresults", "nothing"):
        writer.RunDir.add_result = lambda self, line: None  # type: ignore[method-assign]


async def _run(port: int, requests: int, concurrency: int) -> Any:
    from llmbatch.cli.job import execute_run
    from llmbatch.config.load import load_config

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="attribution-", dir=WORK_DIR))
    prompts = work / "prompts.jsonl"
    with open(prompts, "wb") as fh:
        for i in range(requests):
            fh.write(orjson.dumps({"id": f"q{i}", "prompt": f"benchmark prompt {i}"}) + b"\n")
    cfg = load_config(
        None,
        flags={
            "provider": "vllm",
            "base_url": f"http://127.0.0.1:{port}/v1",
            "model": "mock-model",
            "run_dir": work / "run",
            "progress": False,
            "concurrency": concurrency,
        },
        environ={},
    )
    return await execute_run(cfg, prompts, install_signal_handlers=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("variant", choices=("base", "notext", "nometrics", "noresults", "nothing"))
    ap.add_argument("port", type=int)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=300)
    args = ap.parse_args()
    _stub(args.variant)
    import uvloop

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    out = uvloop.run(_run(args.port, args.requests, args.concurrency))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user, sys_ = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    tokens = args.requests * TOKENS
    print(
        f"{args.variant:10s} user {user:.2f}s sys {sys_:.2f}s "
        f"cpu {(user + sys_) / tokens * 1e6:.1f} µs/token wall {time.perf_counter() - t0:.2f}s "
        f"succeeded {out.result.metrics.succeeded}"
    )


if __name__ == "__main__":
    main()
