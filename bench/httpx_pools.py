"""httpx scaling: connections per AsyncClient in the adapter's rotation.

    python -m bench.httpx_pools --concurrency 300 1000 --pools 16 32 64 128 0 --repeat 3

httpcore rescans every connection of a pool on each request add/release
(RESEARCH.md §2), so llmbatch's httpx adapter splits its connections over several
clients used in rotation. This measures the split (``0`` = one pool of all C
connections), plus ``--client httpx-aiohttp`` and ``--client httpx --http2``, on the
fast shape (``--shape realistic``: 20 ms between tokens), against the bare aiohttp loop
of the same invocation. The pool size is set through ``BENCH_HTTPX_POOL_SIZE``
(see bench.llmbatch_child).
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
    median_measure,
    mock_server,
    ratio,
    run_bare,
    run_llmbatch,
    work_tmpdir,
    write_prompts,
)

SHAPES = {
    "fast": {"tokens": 64, "ttft_ms": 0.0, "itl_ms": 0.0},
    "realistic": {"tokens": 64, "ttft_ms": 0.0, "itl_ms": 20.0},
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[300, 1000])
    ap.add_argument("--pools", type=int, nargs="+", default=[16, 32, 64, 128, 0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--shape", choices=tuple(SHAPES), default="fast")
    ap.add_argument("--no-extras", action="store_true", help="skip httpx-aiohttp and --http2")
    args = ap.parse_args(argv)
    print(f"# bench.httpx_pools — {machine_line()}")
    print(f"{args.shape} shape, requests {args.requests}, repeat {args.repeat} (median)\n")
    variants: list[tuple[str, str, list[str], dict[str, str]]] = []
    for p in args.pools:
        label = f"httpx, {p} conns/client" if p else "httpx, single pool"
        variants.append((label, "httpx", [], {"BENCH_HTTPX_POOL_SIZE": str(p)}))
    if not args.no_extras:
        variants.append(("httpx --http2 (default split)", "httpx", ["--http2"], {}))
        variants.append(("httpx-aiohttp", "httpx-aiohttp", [], {}))
    rows: list[list[str]] = []
    with work_tmpdir() as tmp:
        prompts = write_prompts(Path(tmp) / "prompts.jsonl", args.requests)
        with mock_server(**SHAPES[args.shape]) as server:
            for c in args.concurrency:
                runs: dict[str, list[Measure]] = {}
                for _ in range(args.repeat):
                    b = run_bare(server, c, args.requests)
                    runs.setdefault("bare aiohttp loop", []).append(b)
                    for label, client, extra, env in variants:
                        m = run_llmbatch(
                            server,
                            c,
                            prompts,
                            args.requests,
                            client=client,
                            label=label,
                            extra_args=extra,
                            extra_env=env,
                        )
                        runs.setdefault(label, []).append(m)
                        print(
                            f"[C={c}] {label}: errors {m.errors}, wall {m.wall_s:.2f}s, "
                            f"{m.work_us_per_token:.1f} µs/token ({b.work_us_per_token:.1f} bare)"
                            f" {m.note}",
                            file=sys.stderr,
                            flush=True,
                        )
                meds = {k: median_measure(v) for k, v in runs.items()}
                base = meds["bare aiohttp loop"]
                for m in meds.values():
                    rows.append(
                        [
                            str(c),
                            m.label + (f" ({m.note})" if m.note else ""),
                            fmt_errors(m),
                            f"{m.wall_s:.2f}",
                            f"{m.work_us_per_token:.1f}",
                            ratio(m.work_us_per_token, base.work_us_per_token),
                            f"{m.us_per_token:.1f}",
                            ratio(m.us_per_token, base.us_per_token),
                            f"{m.maxrss_mb:.0f}",
                        ]
                    )
    headers = ["C", "variant", "errors", "wall s", "CPU µs/token (work)", "ratio"]
    headers += ["CPU µs/token (process)", "ratio", "peak RSS MB"]
    print(markdown_table(headers, rows), flush=True)


if __name__ == "__main__":
    main()
