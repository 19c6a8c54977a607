"""Client CPU per streamed token: ``--engine ray`` (2 nodes) against one process.

One invocation measures, against the same mock-server process and prompts file:

1. the bare aiohttp loop (bench/bare.py), the reference of every bench;
2. ``llmbatch run`` in one process (bench/llmbatch_child.py: work-phase CPU);
3. ``llmbatch run --engine ray`` on a 2-node Ray cluster (tests/raycluster.py):
   client CPU = the driver's work-phase CPU + each worker actor's CPU while its batch
   ran + the governor actor's CPU, as the run's summary.json reports them. Ray's own
   processes (raylet, GCS, ...) are shown on their own row (psutil, before/after).

Ray must run in a loopback-only network namespace here, so the bench re-executes itself
under ``unshare -n`` (everything it starts lives and dies inside). Usage::

    .venv/bin/python -m bench.ray_overhead --requests 2000 --concurrency 300 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

from bench import harness
from bench.harness import Measure, markdown_table, median_measure, ratio

_IN_NS = "LLMBATCH_BENCH_NETNS"
TOKENS = 64


def _cluster_cpu_s(cluster: Any) -> dict[str, float]:
    """CPU seconds so far of each Ray system process of ``cluster`` (by pid)."""
    import psutil

    out: dict[str, float] = {}
    for proc in (cluster.head, cluster.worker):
        if proc is None:
            continue
        try:
            root = psutil.Process(proc.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in tree:
            try:
                name = p.name()
                if name.startswith("ray::") and "Actor" in name:
                    continue  # the actors report their own CPU
                t = p.cpu_times()
                out[f"{p.pid}:{name}"] = t.user + t.system
            except psutil.Error:
                pass
    return out


def _spy_on_actors(cluster: Any, prefix: Path, done: threading.Event) -> list[Path]:
    """Until ``done``: attach ``py-spy record --native`` to each worker actor process of
    ``cluster`` as it appears (found by its process title, ``ray::WorkerActor``); each
    recording ends with its actor. Returns the files (raw collapsed stacks, thread ids)."""
    import psutil

    spy = str(harness.ROOT / ".venv" / "bin" / "py-spy")
    seen: set[int] = set()
    files: list[Path] = []
    procs: list[subprocess.Popen[bytes]] = []
    while not done.wait(0.05):
        for node in (cluster.head, cluster.worker):
            if node is None:
                continue
            try:
                tree = psutil.Process(node.pid).children(recursive=True)
            except psutil.Error:
                continue
            for p in tree:
                try:
                    title = " ".join(p.cmdline())
                except psutil.Error:
                    continue
                if p.pid in seen or not title.startswith("ray::WorkerActor"):
                    continue
                seen.add(p.pid)
                out = prefix.with_suffix(f".actor{len(files)}.txt")
                files.append(out)
                cmd = [spy, "record", "--native", "--threads", "--format", "raw"]
                cmd += ["--rate", "250", "--output", str(out), "--pid", str(p.pid)]
                procs.append(
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
    for proc in procs:  # each ends when its actor does (the driver kills them at the end)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.send_signal(2)
            proc.wait(10)
    return files


def run_ray(
    cluster: Any,
    server: harness.MockServer,
    prompts: Path,
    n: int,
    c: int,
    label: str,
    *,
    py_spy: Path | None = None,
    workers: int = 2,
) -> tuple[Measure, Measure, float]:
    """One Ray run: (client measure, Ray-system measure, Ray system CPU s).

    ``py_spy``: profile the driver with py-spy into this file (collapsed stacks), and each
    worker actor (``--native``) into FILE.actorK.txt; the CPU figures are then not
    comparable (py-spy samples the processes)."""
    with harness.work_tmpdir() as tmp:
        run_dir = Path(tmp) / "run"
        argv = [str(harness.ROOT / ".venv" / "bin" / "llmbatch")]
        if not Path(argv[0]).exists():
            argv = [harness.PY, "-m", "llmbatch"]
        if py_spy is not None:
            spy = [
                str(harness.ROOT / ".venv" / "bin" / "py-spy"),
                "record",
                "--gil",
                "--format",
                "raw",
            ]
            argv = [*spy, "--rate", "250", "--output", str(py_spy), "--", *argv]
        argv += ["run", str(prompts), "--engine", "ray", "--ray-address", cluster.address]
        argv += ["--ray-workers", str(workers), "--provider", "vllm", "--base-url", server.base_url]
        argv += ["--model", "mock-model", "--concurrency", str(c), "--no-progress"]
        argv += ["--run-dir", str(run_dir)]
        before = _cluster_cpu_s(cluster)
        env = {**cluster.env, **harness.child_env()}
        env.pop("RAY_ADDRESS", None)
        spies: list[Path] = []
        done = threading.Event()
        watcher = None
        if py_spy is not None:
            watcher = threading.Thread(
                target=lambda: spies.extend(_spy_on_actors(cluster, py_spy, done)), daemon=True
            )
            watcher.start()
        res = harness.run_child(argv, timeout_s=300, env=env, cwd=Path(tmp))
        if watcher is not None:
            done.set()
            watcher.join(60)
            print(f"worker actor profiles: {', '.join(map(str, spies))}", file=sys.stderr)
        after = _cluster_cpu_s(cluster)
        errors, kinds, retries = harness.count_result_errors(run_dir, n)
        try:
            summary = orjson.loads((run_dir / "summary.json").read_bytes())
        except (OSError, ValueError):
            summary = {}
    eng = summary.get("engine") or {}
    stats = eng.get("worker_stats") or []
    # Work phase: each worker's batch (client started), as one process's work phase is
    # its batch; the process column has each actor's whole run (imports, client start).
    actors_s = sum(float(w.get("batch_cpu_s") or w.get("cpu_s") or 0.0) for w in stats)
    actors_all_s = sum(float(w.get("cpu_s") or 0.0) for w in stats)
    gov_s = float((eng.get("rate_budget") or {}).get("cpu_s") or 0.0)
    driver_s = float(eng.get("driver_cpu_s") or 0.0)
    setup_s = float(eng.get("driver_setup_cpu_s") or 0.0)
    system_s = sum(v - before.get(k, 0.0) for k, v in after.items())
    threads = [{"worker": "driver", "batch_threads_cpu_s": eng.get("driver_threads_cpu_s")}]
    for w in [*stats, *threads]:
        top = sorted((w.get("batch_threads_cpu_s") or {}).items(), key=lambda kv: -kv[1])[:12]
        print(
            f"  {w.get('worker')}: CPU by thread in its batch "
            + ", ".join(f"{k} {v:.2f}" for k, v in top),
            file=sys.stderr,
        )
    note = "" if res.returncode in (0, 1) else f"exit {res.returncode}: {res.stderr[-300:]}"
    print(
        f"ray run: driver {driver_s:.2f} s (placing the workers {setup_s:.2f} s), "
        f"worker actors {actors_s:.2f} s "
        f"(whole actor runs {actors_all_s:.2f} s), "
        f"governor {gov_s:.2f} s CPU (work), driver process {res.cpu_s:.2f} s",
        file=sys.stderr,
    )
    tokens = (n - errors) * TOKENS
    client = Measure(
        label=label,
        concurrency=c,
        requests=n,
        tokens=tokens,
        errors=errors,
        error_kinds=kinds,
        wall_s=float(summary.get("duration_s") or res.wall_s),
        proc_wall_s=res.wall_s,
        cpu_s=res.cpu_s + actors_all_s + gov_s,
        work_cpu_s=driver_s + actors_s + gov_s,
        retries=retries,
        note=note,
    )
    system = Measure(
        label="  Ray's own processes (raylet, GCS, ...)",
        concurrency=c,
        requests=n,
        tokens=tokens,
        errors=0,
        cpu_s=system_s,
        work_cpu_s=system_s,
    )
    return client, system, driver_s


def inside(args: argparse.Namespace) -> None:
    from tests.raycluster import Cluster

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    n, c = args.requests, args.concurrency
    print(harness.machine_line(), file=sys.stderr)
    with harness.mock_server(tokens=TOKENS, ttft_ms=0, itl_ms=0) as server:
        with harness.work_tmpdir() as tmp:
            prompts = harness.write_prompts(Path(tmp) / "prompts.jsonl", n)
            cluster = Cluster(Path(tmp))
            cluster.start()
            try:
                bare, single, ray, system = [], [], [], []
                for i in range(args.repeat):
                    print(f"repeat {i + 1}/{args.repeat}", file=sys.stderr)
                    bare.append(harness.run_bare(server, c, n))
                    single.append(harness.run_llmbatch(server, c, prompts, n, client="aiohttp"))
                    spy = None
                    if args.py_spy:
                        spy = Path(args.py_spy).with_suffix(f".{i + 1}.txt").resolve()
                    m, s, _ = run_ray(
                        cluster,
                        server,
                        prompts,
                        n,
                        c,
                        "llmbatch --engine ray",
                        py_spy=spy,
                        workers=args.ray_workers,
                    )
                    ray.append(m)
                    system.append(s)
            finally:
                cluster.stop()
    rows = [median_measure(x) for x in (bare, single, ray, system)]
    b, one = rows[0], rows[1]
    headers = ["client", "errors", "wall s", "CPU µs/token (work)", "vs bare", "vs one process"]
    headers += ["CPU µs/token (process)", "vs bare", "vs one process"]
    table = []
    for m in rows:
        table.append(
            [
                m.label,
                harness.fmt_errors(m),
                f"{m.wall_s:.2f}",
                f"{m.work_us_per_token:.1f}",
                ratio(m.work_us_per_token, b.work_us_per_token),
                ratio(m.work_us_per_token, one.work_us_per_token),
                f"{m.us_per_token:.1f}",
                ratio(m.us_per_token, b.us_per_token),
                ratio(m.us_per_token, one.us_per_token),
            ]
        )
    print(
        f"\n{n} requests, {TOKENS} tokens at once, --concurrency {c} (cluster-wide for Ray: "
        f"{args.ray_workers} workers of {c // args.ray_workers}), median of {args.repeat}\n"
    )
    print(markdown_table(headers, table))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--ray-workers",
        type=int,
        default=2,
        help="worker actors (over the 2 nodes); 1 runs the whole concurrency in one actor",
    )
    ap.add_argument(
        "--py-spy",
        metavar="FILE",
        help="profile the Ray driver with py-spy (pip install py-spy) into FILE.N.txt and "
        "each worker actor (--native) into FILE.N.actorK.txt",
    )
    args = ap.parse_args(argv)
    if os.environ.get(_IN_NS) != "1":
        # Ray needs a loopback-only network: run this module again in a fresh namespace.
        cmd = ["unshare", "-n", sys.executable, "-m", "bench.ray_overhead", *sys.argv[1:]]
        env = {**os.environ, _IN_NS: "1"}
        env.pop("RAY_ADDRESS", None)
        sys.exit(subprocess.run(cmd, env=env, cwd=harness.ROOT).returncode)
    inside(args)


if __name__ == "__main__":
    main()
