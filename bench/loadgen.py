"""compare's load generator: does it keep the rate it claims, and at what CPU cost?

For each request rate, two child processes send the same seeded Poisson schedule
(llmbatch.engine.arrivals) of streaming requests to one ``llmbatch mock-server`` process:

- **bare**: an aiohttp loop that sleeps until each request is due and starts it as a task
  (one ClientSession, ``async for line in resp.content``, orjson), the reference;
- **llmbatch**: ``Client.batch(arrivals=...)``, what ``llmbatch compare`` runs for an
  open-loop step (no run directory, as the bare loop writes nothing).

Each child records every request's send time against its due time: the achieved rate
((n - 1) / send span) against the schedule's, how late sends were (p50 / p99 / max), and
the CPU of its sending phase per request. Ratios are against the bare loop of the same
invocation.

    python -m bench.loadgen --rates 50 200 500 1000 --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import sys
import time
from typing import Any

from .harness import PY, markdown_table, mock_server, ratio, run_child

TOKENS, TTFT_MS, ITL_MS = 16, 5.0, 1.0


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _summary(due: list[float], sent: list[float], cpu_s: float, errors: int) -> dict[str, Any]:
    late = sorted(max(0.0, s - d) for s, d in zip(sent, due, strict=True))
    n = len(late)
    sends = sorted(sent)
    return {
        "requests": n,
        "errors": errors,
        "scheduled_rate": (n - 1) / (due[-1] - due[0]),
        "achieved_rate": (n - 1) / (sends[-1] - sends[0]),
        "late_p50_ms": late[n // 2] * 1000,
        "late_p99_ms": late[min(n - 1, int(n * 0.99))] * 1000,
        "late_max_ms": late[-1] * 1000,
        "cpu_s": cpu_s,
    }


async def _bare(url: str, rate: float, n: int, seed: int) -> dict[str, Any]:
    import aiohttp
    import orjson

    from llmbatch.engine.arrivals import ArrivalProfile, arrival_offsets

    offsets = list(itertools.islice(arrival_offsets(ArrivalProfile(rate_rps=rate, seed=seed)), n))
    sent = [0.0] * n
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"content-type": "application/json", "accept": "text/event-stream"}

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal errors
        body = orjson.dumps(
            {
                "model": "m",
                "messages": [{"role": "user", "content": f"benchmark prompt {i}"}],
                "stream": True,
            }
        )
        sent[i] = time.perf_counter()
        try:
            async with session.post(f"{url}/chat/completions", data=body, headers=headers) as r:
                async for line in r.content:
                    if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
                        orjson.loads(line[6:])
        except Exception:  # noqa: BLE001 - counted
            errors += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        cpu0 = _cpu_s()
        t0 = time.perf_counter()
        for i, off in enumerate(offsets):
            wait = t0 + off - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(session, i)))
        await asyncio.gather(*tasks)
        cpu = _cpu_s() - cpu0
    return _summary([t0 + o for o in offsets], sent, cpu, errors)


async def _llmbatch(url: str, rate: float, n: int, seed: int) -> dict[str, Any]:
    from llmbatch import Client
    from llmbatch.engine.arrivals import ArrivalProfile
    from llmbatch.records import Outcome

    sent: dict[str, float] = {}
    errors = 0

    def on_outcome(o: Outcome) -> None:
        nonlocal errors
        if not o.ok or o.metrics.sent_at is None:
            errors += 1
        else:
            sent[o.record_id] = o.metrics.sent_at

    prompts = [{"id": f"q{i}", "prompt": f"benchmark prompt {i}"} for i in range(n)]
    async with Client("vllm", base_url=url, model="m", concurrency=1024) as llm:
        batch = llm.batch(
            prompts, arrivals=ArrivalProfile(rate_rps=rate, seed=seed), on_outcome=on_outcome
        )
        cpu0 = _cpu_s()
        await batch.wait()
        cpu = _cpu_s() - cpu0
    assert batch.pacer is not None
    due = batch.pacer.due
    ids = [f"q{i}" for i in range(n) if f"q{i}" in sent]
    return _summary([due[int(i[1:])] for i in ids], [sent[i] for i in ids], cpu, errors)


def _child(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("bare", "llmbatch"), required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run = _bare if a.mode == "bare" else _llmbatch
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        print(json.dumps(runner.run(run(a.url, a.rate, a.requests, a.seed))))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--child":
        _child(args[1:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", type=float, nargs="+", default=[50, 200, 500, 1000])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(args)
    rows = []
    with mock_server(tokens=TOKENS, ttft_ms=TTFT_MS, itl_ms=ITL_MS) as server:
        for rate in a.rates:
            n = a.requests
            res = {}
            for mode in ("bare", "llmbatch"):
                print(f"rate {rate:g}: {mode}", file=sys.stderr, flush=True)
                argv_child = [PY, "-m", "bench.loadgen", "--child", "--mode", mode]
                argv_child += ["--url", server.base_url, "--rate", f"{rate:g}"]
                argv_child += ["--requests", str(n), "--seed", str(a.seed)]
                out = run_child(argv_child, timeout_s=n / rate * 3 + 60)
                if out.returncode != 0:
                    raise SystemExit(f"{mode} child failed: {out.stderr[-2000:]}")
                res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            base_cpu = res["bare"]["cpu_s"] / res["bare"]["requests"]
            for mode in ("bare", "llmbatch"):
                r = res[mode]
                cpu_us = r["cpu_s"] / r["requests"] * 1e6
                rows.append(
                    [
                        f"{rate:g}",
                        mode,
                        str(r["errors"]),
                        f"{r['scheduled_rate']:.1f}",
                        f"{r['achieved_rate']:.1f}",
                        f"{r['achieved_rate'] / r['scheduled_rate']:.3f}",
                        f"{r['late_p50_ms']:.2f}",
                        f"{r['late_p99_ms']:.2f}",
                        f"{r['late_max_ms']:.1f}",
                        f"{cpu_us:.0f}",
                        ratio(cpu_us, base_cpu * 1e6),
                    ]
                )
    print(
        markdown_table(
            [
                "req/s asked",
                "client",
                "errors",
                "scheduled req/s",
                "achieved req/s",
                "achieved / scheduled",
                "late p50 ms",
                "late p99 ms",
                "late max ms",
                "CPU µs/request",
                "ratio",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
