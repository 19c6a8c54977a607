"""Issue 24: HTTP/2 against HTTP/1.1 through nginx (TLS terminated by nginx, which sends
GOAWAY after ``keepalive_requests`` streams and proxies to the mock over HTTP/1.1).

Rows, each a child process against the same nginx and mock, median of ``--repeat``:
the bare aiohttp loop (HTTP/1.1 through nginx: the reference of every ratio),
``--client native`` over HTTP/1.1 and with ``--http2``, ``--client aiohttp`` (HTTP/1.1),
and with ``--with-httpx`` ``--client httpx --http2``. Besides CPU per token and wall time
it reports what GOAWAY costs: failed attempts (retries) and the answers the mock streamed
in full more than once (its ``answered_twice``, reset before each row).

    python -m bench.h2_nginx --concurrency 300 --requests 2000 --repeat 3 [--with-httpx]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench import harness
from bench.harness import Measure, markdown_table, median_measure, ratio
from bench.nginx import NGINX, free_port, nginx_conf, nginx_process


@dataclass
class _Front:
    """nginx in front of the mock, as the harness's children see a server."""

    mock: harness.MockServer
    port: int
    ca_file: Path

    @property
    def shape(self) -> dict[str, float]:
        return self.mock.shape

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1"

    def env(self) -> dict[str, str]:
        return {"SSL_CERT_FILE": str(self.ca_file)}

    def connections(self) -> int:
        return 0  # the mock sees nginx's upstream connections, not the clients'

    def connections_since(self, before: int) -> int:
        return 0

    def mock_stats(self, reset: bool = False) -> dict[str, object]:
        """The mock's /mock/stats (cleartext, behind nginx); POST /mock/reset first."""
        base = self.mock.base_url[:-3]
        if reset:
            urllib.request.urlopen(urllib.request.Request(f"{base}/mock/reset", method="POST"))
        with urllib.request.urlopen(f"{base}/mock/stats") as r:
            stats: dict[str, object] = json.loads(r.read())
        return stats


def _rows(front: _Front, args: argparse.Namespace, prompts: Path) -> list[tuple[str, Measure, int]]:
    c, n = args.concurrency, args.requests
    runs: list[tuple[str, list[str], str]] = [
        ("bare aiohttp loop (HTTP/1.1)", [], "bare"),
        ("llmbatch --client native (HTTP/1.1)", [], "native"),
        ("llmbatch --client native --http2", ["--http2"], "native"),
        ("llmbatch --client aiohttp (HTTP/1.1)", [], "aiohttp"),
    ]
    if args.with_httpx:
        runs.append(("llmbatch --client httpx --http2", ["--http2"], "httpx"))
    out: list[tuple[str, Measure, int]] = []
    for label, flags, client in runs:
        measures = []
        twice = 0
        for _ in range(args.repeat):
            front.mock_stats(reset=True)
            if client == "bare":
                m = harness.run_bare(front, c, n, loop=args.loop)  # type: ignore[arg-type]
            else:
                m = harness.run_llmbatch(
                    front,  # type: ignore[arg-type]
                    c,
                    prompts,
                    n,
                    client=client,
                    label=label,
                    extra_args=flags,
                    loop=args.loop,
                )
            answered_twice = front.mock_stats().get("answered_twice") or {}
            twice += len(answered_twice)  # type: ignore[arg-type]
            measures.append(m)
            print(f"  {label}: {m.wall_s:.2f}s, {m.work_us_per_token:.1f} µs/tok", file=sys.stderr)
        out.append((label, median_measure(measures), twice))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=300)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--ttft-ms", type=float, default=0.0)
    ap.add_argument("--itl-ms", type=float, default=0.0, help="0: every token in one write")
    ap.add_argument("--keepalive-requests", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--with-httpx", action="store_true", help="add httpx --http2 (slow here)")
    ap.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        help="the event loop of every row (default: uvloop when installed)",
    )
    args = ap.parse_args(argv)
    if NGINX is None:
        sys.exit("nginx is not installed (apt-get install nginx-light)")
    from llmbatch.mockserver.tls import make_mock_tls

    with tempfile.TemporaryDirectory(prefix="llmbatch-bench-nginx-") as tmp_s:
        tmp = Path(tmp_s)
        tls = make_mock_tls(tmp / "tls")
        prompts = harness.write_prompts(tmp / "prompts.jsonl", args.requests, tag="p")
        with harness.mock_server(
            tokens=args.tokens, ttft_ms=args.ttft_ms, itl_ms=args.itl_ms
        ) as mock:
            port = free_port()
            conf = nginx_conf(
                tmp / "nginx",
                upstream=f"127.0.0.1:{mock.port}",
                port=port,
                cert=tls.cert_file,
                key=tls.key_file,
                keepalive_requests=args.keepalive_requests,
            )
            with nginx_process(tmp / "nginx", conf):
                harness.wait_listening(port, 20.0)
                front = _Front(mock, port, tls.ca_file)
                print(f"# {harness.machine_line()}", file=sys.stderr)
                rows = _rows(front, args, prompts)
    bare = rows[0][1]
    h1 = rows[1][1]
    print(
        f"\nThrough nginx ({args.concurrency} in flight, {args.requests} requests of "
        f"{args.tokens} tokens, ttft {args.ttft_ms:g} ms, {args.itl_ms:g} ms between tokens, "
        f"keepalive_requests {args.keepalive_requests}; {args.loop}; median of {args.repeat}; "
        f"{harness.machine_line()}):\n"
    )
    table = []
    for label, m, twice in rows:
        table.append(
            [
                label,
                harness.fmt_errors(m),
                str(twice),
                f"{m.work_us_per_token:.1f}",
                ratio(m.work_us_per_token, bare.work_us_per_token),
                f"{m.wall_s:.2f}",
                ratio(m.wall_s, bare.wall_s),
                ratio(m.wall_s, h1.wall_s),
                ", ".join(f"{k}: {v}" for k, v in sorted(m.http_versions.items())) or "–",
            ]
        )
    headers = [
        "client",
        "errors (retries)",
        "answers streamed twice (all runs)",
        "CPU µs/token (work)",
        "vs bare",
        "wall s",
        "vs bare",
        "vs native HTTP/1.1",
        "protocols",
    ]
    print(markdown_table(headers, table))


if __name__ == "__main__":
    main()
