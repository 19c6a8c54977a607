"""Client adapters against a bare aiohttp loop, one command, one invocation.

    python -m bench.adapters --shape both --concurrency 30 300 1000 --requests 2000 --repeat 3
    python -m bench.adapters --transport tls ...   # HTTPS, HTTP/1.1 (aiohttp's server)
    python -m bench.adapters --transport h2 ...    # HTTPS, h2: httpx --http2 (h2) and
                                                   # the bare loop / httpx on HTTP/1.1 by ALPN

Starts ``llmbatch mock-server`` as its own process (64 tokens; fast: no delays,
realistic: 20 ms between tokens), then for each concurrency runs, each as its own
child process: the bare aiohttp loop, ``llmbatch run`` with ``--client aiohttp``,
``httpx``, ``httpx-aiohttp`` and ``native`` (and the OpenAI SDK when importable). Prints one
markdown table per shape with every figure and its ratio to the bare loop measured
in the same invocation, at the same shape and concurrency.

Figures: errors; work wall time (dispatch start to last record); client CPU per
streamed token, for the work phase (getrusage inside the child) and for the whole
process (user+sys from wait4, startup and imports included); peak RSS (wait4).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from .harness import (
    TRANSPORTS,
    Measure,
    file_create_cost_us,
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
CLIENTS = ("aiohttp", "httpx", "httpx-aiohttp", "native")


Variant = tuple[str, str, tuple[str, ...], dict[str, str]]


def variants(clients: list[str], transport: str, h2_streams: list[int]) -> list[Variant]:
    """(label, --client, extra llmbatch args, extra env) of each llmbatch row."""
    if transport == "h2":
        rows: list[Variant] = [("llmbatch --client httpx --http2", "httpx", ("--http2",), {})]
        for n in h2_streams:  # fewer streams per connection than the server allows
            env = {"BENCH_H2_STREAMS": str(n)}
            rows.append(
                (f"llmbatch --client httpx --http2, ≤{n} streams/conn", "httpx", ("--http2",), env)
            )
        return rows + [(f"llmbatch --client {c}", c, (), {}) for c in clients if c == "httpx"]
    rows = [(f"llmbatch --client {c}", c, (), {}) for c in clients]
    if transport == "plain":
        # For aiohttp (the default) and native (the leanest): without per-request text
        # files (results.jsonl only), the file system's share of the cost, which varies a
        # lot on this VM's ext4; and one append-only text.log instead of a file per
        # request (same outputs otherwise).
        for c in [c for c in clients if c in ("aiohttp", "native")] or ["aiohttp"]:
            rows.append((f"llmbatch --client {c} --no-text", c, ("--no-text",), {}))
            layout = ("--text-layout", "log")
            rows.append((f"llmbatch --client {c} --text-layout log", c, layout, {}))
    return rows


def _label(m: Measure) -> str:
    """The row's name, with the protocols its records came over when not all HTTP/1.1."""
    out = m.label + (f" ({m.note})" if m.note else "")
    if m.http_versions and set(m.http_versions) != {"HTTP/1.1"}:
        out += " [" + ", ".join(f"{k}: {v}" for k, v in sorted(m.http_versions.items())) + "]"
    return out


def table(results: list[Measure], bare: dict[int, Measure], transport: str = "plain") -> str:
    headers = [
        "C",
        "client",
        "errors",
        "wall s",
        "wall ratio",
        "CPU µs/token (work)",
        "ratio",
        "CPU µs/token (process)",
        "ratio",
        "peak RSS MB",
        "ratio",
    ]
    if transport != "plain":
        headers.append("TLS conns")
    rows = []
    for m in results:
        b = bare[m.concurrency]
        rows.append(
            [
                str(m.concurrency),
                _label(m),
                fmt_errors(m),
                f"{m.wall_s:.2f}",
                ratio(m.wall_s, b.wall_s),
                f"{m.work_us_per_token:.1f}",
                ratio(m.work_us_per_token, b.work_us_per_token),
                f"{m.us_per_token:.1f}",
                ratio(m.us_per_token, b.us_per_token),
                f"{m.maxrss_mb:.0f}",
                ratio(m.maxrss_mb, b.maxrss_mb),
            ]
            + ([str(m.connections)] if transport != "plain" else [])
        )
    return markdown_table(headers, rows)


def run_shape(
    shape: str,
    concurrencies: list[int],
    requests: int,
    repeat: int,
    clients: list[str],
    loop: str,
    prompts: Path,
    transport: str = "plain",
    trees: dict[str, Path] | None = None,
    h2_streams: list[int] | None = None,
    plain_h2: bool = True,
    tree_clients: tuple[str, ...] = ("aiohttp",),
    layout_rows: bool = True,
) -> tuple[list[Measure], dict[int, Measure]]:
    with_sdk = importlib.util.find_spec("openai") is not None and transport == "plain"
    out: list[Measure] = []
    bare: dict[int, Measure] = {}
    with mock_server(**SHAPES[shape], transport=transport) as server:
        for c in concurrencies:
            runs: dict[str, list[Measure]] = {}
            for rep in range(repeat):
                # Interleaved so that noise on the shared machine spreads over all clients.
                m = run_bare(server, c, requests, loop=loop)
                runs.setdefault("bare", []).append(m)
                _progress(shape, rep, m)
                rows = variants(clients, transport, h2_streams or [])
                if not layout_rows:
                    rows = [r for r in rows if not r[2] or transport == "h2"]
                for label, client, extra, env in rows:
                    m = run_llmbatch(
                        server,
                        c,
                        prompts,
                        requests,
                        client=client,
                        loop=loop,
                        extra_args=extra,
                        extra_env=env,
                        label=label,
                    )
                    runs.setdefault(label, []).append(m)
                    _progress(shape, rep, m)
                # The same clients from other checkouts (before/after a change), same bare.
                for name, tree in (trees or {}).items():
                    for tree_client in tree_clients:
                        m = run_llmbatch(
                            server,
                            c,
                            prompts,
                            requests,
                            client=tree_client,
                            loop=loop,
                            extra_env={"PYTHONPATH": str(tree)},
                            label=f"llmbatch --client {tree_client} [{name}]",
                        )
                        runs.setdefault(f"tree:{name}:{tree_client}", []).append(m)
                        _progress(shape, rep, m)
                if transport == "h2" and plain_h2:
                    # httpcore alone, for its h2 stall: one AsyncClient(http2=True).
                    label = "plain httpx.AsyncClient(http2=True)"
                    m = run_bare(
                        server, c, requests, loop=loop, module="bench.httpx_h2", label=label
                    )
                    runs.setdefault("plain-h2", []).append(m)
                    _progress(shape, rep, m)
                if with_sdk:
                    sdk = "bench.openai_sdk"
                    m = run_bare(server, c, requests, loop=loop, module=sdk, label="OpenAI SDK")
                    runs.setdefault("sdk", []).append(m)
                    _progress(shape, rep, m)
            meds = {k: median_measure(v) for k, v in runs.items()}
            bare[c] = meds["bare"]
            out += list(meds.values())
    if not with_sdk:
        print("OpenAI SDK not importable: skipped", file=sys.stderr)
    return out, bare


def _progress(shape: str, rep: int, m: Measure) -> None:
    print(
        f"[{shape} C={m.concurrency} #{rep + 1}] {m.label}: errors {m.errors}, "
        f"wall {m.wall_s:.2f}s, {m.work_us_per_token:.1f} µs/token work, "
        f"{m.us_per_token:.1f} process, RSS {m.maxrss_mb:.0f} MB {m.note}",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shape", choices=("fast", "realistic", "both"), default="both")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[30, 300, 1000])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1, help="runs per figure; the median is kept")
    ap.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=CLIENTS)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="plain",
        help="plain: cleartext HTTP/1.1; tls: HTTPS HTTP/1.1; h2: HTTPS with h2 (mock's h2 server)",
    )
    ap.add_argument(
        "--h2-streams",
        type=int,
        nargs="*",
        default=[],
        help="h2: also run --http2 with at most N streams per connection (BENCH_H2_STREAMS)",
    )
    ap.add_argument(
        "--no-plain-h2", action="store_true", help="h2: skip the plain httpx.AsyncClient row"
    )
    ap.add_argument("--json", type=Path, help="also write every median figure here")
    ap.add_argument(
        "--out-root",
        type=Path,
        help="where run directories go (default bench/out); e.g. a fast or a slow disk",
    )
    ap.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run --client aiohttp (see --tree-client) from another checkout (repeatable)",
    )
    ap.add_argument(
        "--tree-client",
        nargs="+",
        default=["aiohttp"],
        choices=CLIENTS,
        help="the --client(s) of the --tree rows (default aiohttp)",
    )
    ap.add_argument(
        "--no-layout-rows",
        action="store_true",
        help="plain: skip the --no-text and --text-layout log rows (aiohttp, native)",
    )
    args = ap.parse_args(argv)
    shapes = ["fast", "realistic"] if args.shape == "both" else [args.shape]
    trees = {k: Path(v).resolve() for k, _, v in (t.partition("=") for t in args.tree)}
    if args.out_root:
        os.environ["BENCH_OUT_DIR"] = str(args.out_root.resolve())
    print(f"# bench.adapters — {machine_line()}")
    where = os.environ.get("BENCH_OUT_DIR") or "bench/out"
    print(f"run directories in {where}: {file_create_cost_us():.0f} µs CPU per file created")
    print(
        f"requests {args.requests}, repeat {args.repeat} (median), loop {args.loop}, "
        f"transport {args.transport}\n"
    )
    dump: dict[str, list[dict[str, object]]] = {}
    with work_tmpdir() as tmp:
        prompts = write_prompts(Path(tmp) / "prompts.jsonl", args.requests)
        for shape in shapes:
            results, bare = run_shape(
                shape,
                args.concurrency,
                args.requests,
                args.repeat,
                args.clients,
                args.loop,
                prompts,
                args.transport,
                trees,
                args.h2_streams,
                not args.no_plain_h2,
                tuple(args.tree_client),
                not args.no_layout_rows,
            )
            s = SHAPES[shape]
            print(
                f"## {shape}: {s['tokens']:g} tokens, ttft {s['ttft_ms']:g} ms, "
                f"itl {s['itl_ms']:g} ms\n"
            )
            print(table(results, bare, args.transport))
            print(flush=True)
            dump[shape] = [asdict(m) for m in results]
    if args.json:
        args.json.write_text(json.dumps(dump, indent=2))


if __name__ == "__main__":
    main()
