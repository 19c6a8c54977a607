"""CPU of ``--client native``'s protocol per read and per answer, without sockets.

    python -m bench.native_wire [--answers 3000] [--repeat 5] [--baseline DIR]

Drives the native client's connection (its asyncio Protocol) as the event loop would,
with a transport that only takes what is written: the request, the response head, then
the mock's 64-token chunked SSE answer either as one chunk per read (realistic shape:
one token per read) or whole in one read (fast shape), into a push callback that keeps
nothing. Best of ``--repeat`` in process CPU time: what the HTTP layer costs, apart from
the SSE path, the engine and the kernel, steady enough on a busy machine to tell
builds apart.

``--baseline DIR``: the same figures from another checkout, each measured in a child
process with ``PYTHONPATH=DIR``; checkouts before 3a13c76 (the single-module client on
the hand parser h1.py) are driven through their ``_Conn``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

# Run as a script in the children (their PYTHONPATH is the checkout measured): no
# imports from the bench package.
ROOT = Path(__file__).resolve().parent.parent
TOKENS = 64
HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"x-request-id: mock-0123456789ab\r\ntransfer-encoding: chunked\r\n\r\n"
)


class _Transport:
    """Takes writes; reading and closing do nothing (no socket behind it)."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _events() -> list[bytes]:
    """The mock's answer: role, 64 tokens, finish, usage, [DONE] (as bench.hotpath)."""
    head = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": f" word{i}"} for i in range(TOKENS)]
    out = [
        b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": d}]}) + b"\n\n"
        for d in deltas
    ]
    usage = {"prompt_tokens": 2, "completion_tokens": TOKENS, "total_tokens": TOKENS + 2}
    out.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
    return [*out, b"data: [DONE]\n\n"]


def _answer(chunk_per_read: bool) -> list[bytes]:
    """The reads of one answer after its head: chunked framing, the last chunk."""
    chunks = [b"%x\r\n%s\r\n" % (len(e), e) for e in _events()] + [b"0\r\n\r\n"]
    return chunks if chunk_per_read else [b"".join(chunks)]


def _driver(loop: asyncio.AbstractEventLoop) -> Callable[[list[bytes]], None]:
    """One answer through a connection: begin, head, the reads, the end (push mode)."""

    def on_chunk(data: bytes) -> bool:
        return False

    try:
        from llmbatch.http.native.connection import Connection
        from llmbatch.http.native.pool import Pool
    except ImportError:  # the single-module client (before 3a13c76)
        from llmbatch.http import native as old

        pool = old._Pool(loop, 1)
        conn = old._Conn(pool, None)
        conn.transport = _Transport()

        def old_answer(reads: list[bytes]) -> None:
            conn.begin(60.0)
            conn.data_received(HEAD)
            conn.on_chunk = on_chunk
            for data in reads:
                conn.data_received(data)
            assert conn.body_done
            conn.on_chunk = None
            conn.state = 0

        return old_answer
    new_conn = Connection(Pool(loop, 1), None)
    new_conn.transport = _Transport()

    def new_answer(reads: list[bytes]) -> None:
        exchange = new_conn.begin(b"POST / HTTP/1.1\r\n\r\n", 60.0)
        new_conn.data_received(HEAD)
        exchange.on_chunk = on_chunk
        for data in reads:
            new_conn.data_received(data)
        assert exchange.body_done
        new_conn.finish()

    return new_answer


async def _measure(answers: int, repeat: int) -> dict[str, float]:
    answer = _driver(asyncio.get_running_loop())
    out: dict[str, float] = {}
    for shape, per_read in (("realistic", True), ("fast", False)):
        reads = _answer(per_read)
        best = float("inf")
        for _ in range(repeat):
            t0 = time.process_time()
            for _ in range(answers):
                answer(reads)
            best = min(best, (time.process_time() - t0) / answers)
        out[f"{shape}_us_per_answer"] = best * 1e6
        out[f"{shape}_reads"] = len(reads) + 1
    heads = _driver(asyncio.get_running_loop())
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for _ in range(answers):
            heads([b"0\r\n\r\n"])
        best = min(best, (time.process_time() - t0) / answers)
    out["head_us_per_answer"] = best * 1e6
    return out


def _child(tree: Path, answers: int, repeat: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, __file__, "--child", "--answers", str(answers), "--repeat", str(repeat)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise SystemExit(f"{tree}: {res.stderr[-500:]}")
    result: dict[str, float] = json.loads(res.stdout)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--answers", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="another checkout, measured the same way")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(asyncio.run(_measure(args.answers, args.repeat))))
        return
    rows: dict[str, dict[str, Any]] = {"this checkout": _child(ROOT, args.answers, args.repeat)}
    if args.baseline is not None:
        rows[f"baseline {args.baseline}"] = _child(
            args.baseline.resolve(), args.answers, args.repeat
        )
    print(
        "| build | head + empty body µs | realistic answer µs (reads) | µs per read "
        "| fast answer µs (reads) |"
    )
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        per_read = (r["realistic_us_per_answer"] - r["head_us_per_answer"]) / (
            r["realistic_reads"] - 2
        )
        print(
            f"| {name} | {r['head_us_per_answer']:.2f} | {r['realistic_us_per_answer']:.1f} "
            f"({r['realistic_reads']:.0f}) | {per_read:.3f} | {r['fast_us_per_answer']:.1f} "
            f"({r['fast_reads']:.0f}) |"
        )


if __name__ == "__main__":
    main()
