"""Issue 3, the public report: slow first byte at high concurrency, and 1,000 in flight.

    python -m bench.public_report

Scenario A: 1,000 requests, 300 in flight, the server waits 3 s before the first
token (mock ``--ttft-ms 3000``), per-attempt timeout 30 s (``[timeouts] total_s``
in a generated ``--config``). Scenario B: 2,000 streaming requests, 1,000 in flight,
once with the fast shape and once with 20 ms between tokens. Every adapter must
finish with zero errors; retried attempts are shown too (a retry can hide an error).
The bare aiohttp loop runs the same load for reference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .harness import (
    Measure,
    fmt_errors,
    machine_line,
    markdown_table,
    mock_server,
    ratio,
    run_bare,
    run_llmbatch,
    work_tmpdir,
    write_prompts,
)

CLIENTS = ("aiohttp", "httpx", "httpx-aiohttp")
SCENARIOS = {
    # name: (requests, concurrency, mock shape, per-attempt total timeout)
    "A: 3 s to first token, 300 in flight, timeout 30 s": (
        1000,
        300,
        {"tokens": 64, "ttft_ms": 3000.0, "itl_ms": 0.0},
        30.0,
    ),
    "B1: 1,000 in flight, fast stream": (
        2000,
        1000,
        {"tokens": 64, "ttft_ms": 0.0, "itl_ms": 0.0},
        30.0,
    ),
    "B2: 1,000 in flight, 20 ms between tokens": (
        2000,
        1000,
        {"tokens": 64, "ttft_ms": 0.0, "itl_ms": 20.0},
        30.0,
    ),
}


def run_scenario(
    name: str, requests: int, conc: int, shape: dict[str, float], total_s: float, tmp: Path
) -> str:
    prompts = write_prompts(tmp / f"prompts-{requests}.jsonl", requests)
    config = tmp / "config.toml"
    config.write_text(f"[timeouts]\ntotal_s = {total_s}\n")
    results: list[Measure] = []
    with mock_server(**shape) as server:
        bare = run_bare(server, conc, requests)
        results.append(bare)
        _log(name, bare)
        for client in CLIENTS:
            m = run_llmbatch(
                server,
                conc,
                prompts,
                requests,
                client=client,
                extra_args=["--config", str(config)],
                timeout_s=600.0,
            )
            results.append(m)
            _log(name, m)
    waves = -(-requests // conc)
    ideal = waves * (shape["ttft_ms"] + shape["itl_ms"] * (shape["tokens"] - 1)) / 1000.0
    rows = [
        [
            m.label + (f" ({m.note})" if m.note else ""),
            fmt_errors(m),
            f"{m.wall_s:.2f}",
            ratio(m.wall_s, bare.wall_s),
            f"{m.cpu_s:.2f}",
            f"{m.maxrss_mb:.0f}",
        ]
        for m in results
    ]
    head = (
        f"### {name}\n\n{requests} requests, {conc} in flight, mock tokens "
        f"{shape['tokens']:g} ttft {shape['ttft_ms']:g} ms itl {shape['itl_ms']:g} ms, "
        f"total_s = {total_s:g}; ideal wall ≈ {ideal:.1f} s ({waves} waves)\n\n"
    )
    table = markdown_table(
        ["client", "errors", "wall s", "vs bare", "process CPU s", "peak RSS MB"], rows
    )
    return head + table


def _log(name: str, m: Measure) -> None:
    print(
        f"[{name[:2]}] {m.label}: errors {m.errors} {m.error_kinds} retries {m.retries}, "
        f"wall {m.wall_s:.2f}s {m.note}",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=("A", "B1", "B2"), nargs="+", help="run these scenarios")
    args = ap.parse_args(argv)
    print(f"# bench.public_report — {machine_line()}\n")
    with work_tmpdir() as tmp:
        for name, (n, c, shape, total_s) in SCENARIOS.items():
            if args.only and name.split(":")[0] not in args.only:
                continue
            print(run_scenario(name, n, c, shape, total_s, Path(tmp)))
            print(flush=True)


if __name__ == "__main__":
    main()
