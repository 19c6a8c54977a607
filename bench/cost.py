"""What pricing costs the client: CPU per streamed token with and without prices.

    python -m bench.cost --concurrency 300 --requests 2000 --repeat 3

Starts ``llmbatch mock-server`` (64 tokens at once), then, interleaved ``--repeat`` times,
each as its own child process: the bare aiohttp loop, and ``llmbatch run --client aiohttp
--no-text`` three ways: the model unpriced (no cost computed), priced by a ``[prices]``
table (each record's cost from its usage), and priced with ``--max-cost`` far above the
run's cost (each request's worst case reserved before it is sent and settled after).
Prints one markdown table: work-phase CPU per token and its ratio to the bare loop of the
same invocation (medians of the repeats).

Then, in this process and without sockets, what pricing one record costs: the usage read
from a chat.completion body, the price looked up and the cost computed (``Engine.price``),
and the budget's worst case (``token_bounds`` + ``worst_case_usd``), per record and per
token of a 64-token answer.

    python -m bench.cost --instructions [--sizes 200 600]

counts instead of timing, immune to the host's load: each way (unpriced, priced, budget)
runs a whole batch in one process (the mock server in-process too, concurrency 50, no text
files) under valgrind's callgrind at two sizes; the difference divided by the difference
in requests is the instructions per request, start-up cancelled out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import (
    Measure,
    machine_line,
    markdown_table,
    median_measure,
    mock_server,
    ratio,
    run_bare,
    run_llmbatch,
    work_tmpdir,
    write_prompts,
)

TOKENS = 64
PRICES = "[prices.mock-model]\ninput = 0.15\noutput = 0.6\n"


def in_process_us(records: int = 20000) -> tuple[float, float]:
    """(µs to price one record, µs of the budget's worst case per record), no sockets."""
    from llmbatch.config.load import load_config
    from llmbatch.engine.core import Engine, token_bounds
    from llmbatch.pricing import worst_case_usd
    from llmbatch.records import PromptRecord

    cfg = load_config(
        None,
        flags={"provider": "vllm", "model": "mock-model"},
        data={"prices": {"mock-model": {"input": 0.15, "output": 0.6}}},
        environ={},
    )
    eng = Engine.__new__(Engine)  # only the pricing half: no pool, no governor
    eng.cfg = cfg
    from llmbatch.pricing import PriceBook

    eng.prices = PriceBook(cfg)
    rec = PromptRecord("q1", 1, "prompt", {"messages": [{"role": "user", "content": "x" * 80}]})
    body = {
        "object": "chat.completion",
        "model": "mock-model",
        "choices": [],
        "usage": {"prompt_tokens": 24, "completion_tokens": TOKENS, "total_tokens": 88},
    }
    rates = eng.prices.rates("mock-model")
    assert rates is not None
    t0 = time.perf_counter()
    for _ in range(records):
        eng.price(rec, body, 24, TOKENS, [])
    price_us = (time.perf_counter() - t0) / records * 1e6
    t0 = time.perf_counter()
    for _ in range(records):
        worst_case_usd(*token_bounds(rec, rates, cfg.provider), rates)
    worst_us = (time.perf_counter() - t0) / records * 1e6
    return price_us, worst_us


MODES = ("unpriced", "priced", "budget")


async def _batch_in_process(mode: str, requests: int) -> None:
    """One whole batch with the mock in this process (the instruction counts' workload)."""
    from llmbatch.cli.job import execute_run
    from llmbatch.config.load import load_config
    from llmbatch.mockserver import MockConfig, start_mock_server

    server = await start_mock_server(MockConfig(tokens=TOKENS, ttft_s=0.0, itl_s=0.0))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prompts = write_prompts(Path(tmp) / "p.jsonl", requests)
            data = {"prices": {"mock-model": {"input": 0.15, "output": 0.6}}}
            flags = {
                "provider": "vllm",
                "base_url": server.url,
                "model": "mock-model",
                "run_dir": Path(tmp) / "run",
                "progress": False,
                "concurrency": "50",
                "text_files": False,
            }
            if mode == "budget":
                flags["max_cost"] = "1000000"
            cfg = load_config(
                None, flags=flags, data=data if mode != "unpriced" else {}, environ={}
            )
            out = await execute_run(cfg, prompts, install_signal_handlers=False)
            assert out.result.metrics.succeeded == requests
    finally:
        await server.close()


def instructions(sizes: list[int]) -> None:
    """Instructions per request of each way, from callgrind at two batch sizes."""
    counts: dict[tuple[str, int], int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            for mode in MODES:
                argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out"]
                argv += [sys.executable, "-m", "bench.cost", "--child", mode, str(n)]
                res = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
                found = re.search(r"Collected : (\d+)", res.stderr)
                assert res.returncode == 0 and found, res.stderr[-2000:]
                counts[(mode, n)] = int(found.group(1))
                print(f"  {mode} {n} requests: {counts[(mode, n)]:,} instructions", flush=True)
    lo, hi = sizes
    per = {m: (counts[(m, hi)] - counts[(m, lo)]) / (hi - lo) for m in MODES}
    rows = [
        [
            m,
            f"{per[m]:,.0f}",
            f"{per[m] - per['unpriced']:+,.0f}",
            f"{per[m] / per['unpriced']:.3f}x",
        ]
        for m in MODES
    ]
    print(markdown_table(["way", "instructions/request", "vs unpriced", "ratio"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[300])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--instructions", action="store_true", help="count with callgrind instead")
    ap.add_argument("--sizes", type=int, nargs=2, default=[200, 600])
    ap.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        asyncio.run(_batch_in_process(args.child[0], int(args.child[1])))
        return
    print(machine_line())
    if args.instructions:
        os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts each run
        instructions(args.sizes)
        return
    with work_tmpdir() as tmp:
        prompts = write_prompts(Path(tmp) / "prompts.jsonl", args.requests)
        cfg = Path(tmp) / "prices.toml"
        cfg.write_text(PRICES)
        rows_by = {
            "llmbatch --no-text, model unpriced": ("--no-text",),
            "llmbatch --no-text, [prices]": ("--no-text", "--config", str(cfg)),
            "llmbatch --no-text, [prices] + --max-cost": (
                "--no-text",
                "--config",
                str(cfg),
                "--max-cost",
                "1000000",
            ),
        }
        table_rows = []
        with mock_server(tokens=TOKENS, ttft_ms=0.0, itl_ms=0.0) as server:
            for c in args.concurrency:
                runs: dict[str, list[Measure]] = {}
                for rep in range(args.repeat):
                    runs.setdefault("bare", []).append(run_bare(server, c, args.requests))
                    for label, extra in rows_by.items():
                        m = run_llmbatch(
                            server,
                            c,
                            prompts,
                            args.requests,
                            client="aiohttp",
                            extra_args=extra,
                            label=label,
                        )
                        runs.setdefault(label, []).append(m)
                    print(f"  C={c} repeat {rep + 1}/{args.repeat} done", flush=True)
                meds = {k: median_measure(v) for k, v in runs.items()}
                bare = meds["bare"]
                base = meds["llmbatch --no-text, model unpriced"]
                for label, m in meds.items():
                    table_rows.append(
                        [
                            str(c),
                            "bare aiohttp loop" if label == "bare" else label,
                            str(m.errors),
                            f"{m.work_us_per_token:.2f}",
                            ratio(m.work_us_per_token, bare.work_us_per_token),
                            "-"
                            if label == "bare"
                            else f"{m.work_us_per_token - base.work_us_per_token:+.2f}",
                        ]
                    )
    headers = ["C", "client", "errors", "CPU µs/token (work)", "ratio", "vs unpriced µs/token"]
    print(markdown_table(headers, table_rows))
    price_us, worst_us = in_process_us()
    print(
        f"\nin process: pricing a record {price_us:.2f} µs ({price_us / TOKENS:.3f} µs per token "
        f"of a {TOKENS}-token answer); the budget's worst case {worst_us:.2f} µs per request"
    )


if __name__ == "__main__":
    main()
