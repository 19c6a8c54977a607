"""A 2-node Ray cluster on loopback only, for the Ray engine's tests and bench.

Ray replaces 127.0.0.1 with the host's interface address, so the cluster runs inside
a fresh network namespace that has nothing but loopback: the test runs

    unshare -n python -m tests.raycluster ROOT SCENARIO...

and this module, inside the namespace, brings up ``lo``, a head node and a worker node
(``ray start --block``, so each node is one process tree we own by pid), then runs each
scenario in turn on that one cluster: it starts the scenario's mock server, runs its
``llmbatch run --engine ray`` commands on ROOT/SCENARIO/prompts.jsonl, and writes
ROOT/SCENARIO/report.json (exit codes, what the mock saw). It then stops both nodes by
their pids (never ``ray stop``, which would look for Ray processes by name).

Scenarios: ``exact`` (the prompts through the cluster under a scaled rate limit, with
transient faults), ``kill-worker`` (SIGKILL of the worker node's processes mid-run; the
node is started again afterwards), ``kill-driver`` (SIGKILL of the driver mid-run, then
the same command again), ``sigint`` (SIGINT to the driver mid-run, then again),
``max-runtime`` (``--max-runtime-s 4``, then again without it), ``no-survivor``
(SIGKILL of every worker actor: the head node's by pid, and the whole worker node;
the node is started again, then the same command), ``text-log`` (``--text-layout
log``, SIGKILL of the driver mid-run, then the same command), ``auto``
(``--concurrency auto`` against a server serving 12 at once, 429 beyond; the server's
requests in flight sampled), ``max-cost`` (``--max-cost`` below the job's cost: one
budget for the cluster, exit 4; then again with a larger one), ``bench`` (see
bench/ray_overhead.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from llmbatch.mockserver import MockConfig, start_mock_server

BIN = Path(sys.executable).parent
# A node that stops answering is declared dead within ~2 s instead of ~30 s.
RAY_ENV = {
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
    "RAY_USAGE_STATS_ENABLED": "0",
}

# The mock of the scenarios: ~5% of prompts hit a transient fault on their first try.
FAULTS = {"500": 0.02, "disconnect": 0.015, "reset": 0.015}
RPM = 600.0  # per LIMIT_WINDOW_S: a 600 RPM limit with time scaled down 10x
LIMIT_WINDOW_S = 6.0
AUTO_LIMIT = 12  # the "auto" scenario's server serves this many at once (429 beyond)
# The max-cost scenario: prices (USD per million tokens) and the first run's budget.
MAX_COST_PRICES = (100.0, 2000.0)
MAX_COST = 2.0
PACED_RPS = 50  # the "pacing" scenario's server: this many per sliding second


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class Cluster:
    """A head and a worker node, each one ``ray start --block`` process tree."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray's unix sockets must stay under ~100 characters: a short private dir.
        self.tmp = Path(tempfile.mkdtemp(prefix="lbray", dir="/tmp"))
        self.env = {**os.environ, **RAY_ENV, "RAY_TMPDIR": str(self.tmp)}
        self.env.pop("RAY_ADDRESS", None)
        self.head: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.known: dict[int, psutil.Process] = {}

    def _start(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.work / log, "ab") as fh:
            return subprocess.Popen(
                [str(BIN / "ray"), "start", *args, "--block"],
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )

    def start(self) -> None:
        self.head = self._start(
            [
                "--head",
                f"--port={self.port}",
                "--num-cpus=1",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            "ray-head.log",
        )
        self._write_pids()
        _wait_port(self.port, 60)
        self.start_worker()

    def start_worker(self) -> None:
        self.worker = self._start([f"--address={self.address}", "--num-cpus=1"], "ray-worker.log")
        self._write_pids()
        code = (
            "import ray,time\n"
            f"ray.init(address='{self.address}', log_to_driver=False)\n"
            "t=time.monotonic()\n"
            "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.monotonic()-t < 60:\n"
            "    time.sleep(0.2)\n"
            "assert sum(n['Alive'] for n in ray.nodes()) >= 2, 'the worker node did not join'\n"
        )
        subprocess.run([sys.executable, "-c", code], env=self.env, check=True, timeout=90)
        self._remember()

    def _remember(self) -> None:
        self._write_pids()
        for proc in (self.head, self.worker):
            if proc is None:
                continue
            try:
                root = psutil.Process(proc.pid)
                with_children = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for p in with_children:
                self.known.setdefault(p.pid, p)

    def _write_pids(self) -> None:
        # For the test's own clean-up, should this process itself be killed.
        pids = [p.pid for p in (self.head, self.worker) if p is not None]
        (self.work / "ray-pids.json").write_text(json.dumps(pids))

    def kill_actors(self, node: subprocess.Popen[bytes] | None) -> list[int]:
        """SIGKILL the worker actor processes of ``node`` (by pid, found by their Ray
        process title); returns the pids."""
        assert node is not None
        killed = []
        for p in psutil.Process(node.pid).children(recursive=True):
            try:
                if " ".join(p.cmdline()).startswith("ray::WorkerActor"):
                    p.send_signal(signal.SIGKILL)
                    killed.append(p.pid)
            except psutil.NoSuchProcess:
                pass
        return killed

    def kill_worker_node(self) -> list[int]:
        """SIGKILL every process of the worker node, by pid; returns the pids."""
        assert self.worker is not None
        root = psutil.Process(self.worker.pid)
        procs = [root, *root.children(recursive=True)]
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.worker.wait(10)
        return [p.pid for p in procs]

    def stop(self) -> None:
        try:
            self._remember()
        except (psutil.Error, OSError):
            pass
        for proc in (self.worker, self.head):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # ray start --block stops its node
        for proc in (self.worker, self.head):
            if proc is not None:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for p in self.known.values():  # anything that outlived its node: by pid
            try:
                if p.is_running():
                    p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)  # the nodes' sessions and logs


def _llmbatch_run(cluster: Cluster, work: Path, prompts: Path, run_dir: Path) -> list[str]:
    return [
        str(BIN / "llmbatch"),
        "run",
        str(prompts),
        "--engine",
        "ray",
        "--ray-address",
        cluster.address,
        "--ray-workers",
        "2",
        "-c",
        str(work / "config.toml"),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]


def _records(run_dir: Path) -> int:
    """Distinct ids with a record so far, in the run directory or in a worker's part."""
    return len(_record_ids(run_dir))


def _record_ids(run_dir: Path) -> set[str]:
    """The ids with a record so far, in the run directory or in a worker's part."""
    ids: set[str] = set()
    parts = run_dir / "parts"
    for f in [run_dir / "results.jsonl", *parts.glob("*/results.jsonl")]:
        try:
            lines = f.read_bytes().split(b"\n")[:-1]  # whole lines only
        except FileNotFoundError:
            continue
        ids.update(json.loads(x)["custom_id"] for x in lines)
    return ids


async def _run(cmd: list[str], env: dict[str, str], log: Path) -> int:
    with open(log, "ab") as fh:
        proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=fh, stderr=fh)
        try:
            return await asyncio.wait_for(proc.wait(), 240)
        except TimeoutError:
            proc.kill()  # by its pid: a run that hangs must not outlive the scenario
            await proc.wait()
            raise


async def _run_killing(
    cmd: list[str], env: dict[str, str], log: Path, run_dir: Path, after: int, kill: Any
) -> tuple[int, Any, int]:
    """Run ``cmd``; once ``after`` records exist, call ``kill(proc)``; its exit code,
    what ``kill`` returned, and the records there were at that moment."""
    with open(log, "ab") as fh:
        proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=fh, stderr=fh)
        killed: Any = None
        at_kill = 0
        deadline = time.monotonic() + 240
        while proc.returncode is None and time.monotonic() < deadline:
            if killed is None and (at_kill := _records(run_dir)) >= after:
                killed = kill(proc) or True
            try:
                await asyncio.wait_for(proc.wait(), 0.05)
            except TimeoutError:
                pass
        if proc.returncode is None:
            proc.kill()
        return await proc.wait(), killed, at_kill


# How each scenario's mock streams: the kill and stop scenarios slowly (~0.2 s per
# answer, 0.5 s for max-runtime) so that the kill or stop lands mid-run.
SLOW = {"kill-worker", "kill-driver", "sigint", "max-runtime", "no-survivor", "text-log"}


async def scenario(name: str, work: Path, cluster: Cluster) -> dict[str, Any]:
    """Run scenario ``name`` on ``cluster`` in ``work`` (its prompts.jsonl is there)."""
    limited = name == "exact"
    paced = name == "pacing"  # a limit only the server states: 50 per sliding second
    auto = name in ("auto", "pacing")
    mock_cfg = MockConfig(
        tokens=16,
        # auto: ~0.26 s per answer, so that the limit is probed at a pace a real server's
        # round trips would give (the mock refuses at once, it never queues).
        ttft_s=0.1 if auto else 0.01,
        itl_s=0.03 if name == "max-runtime" else 0.01 if auto else 0.012 if name in SLOW else 0.002,
        faults=FAULTS if name not in ("bench", "auto", "max-cost", "pacing") else {},
        rpm=RPM if limited else PACED_RPS if paced else None,
        limit_window_s=1.0 if paced else LIMIT_WINDOW_S,
        limit_mode="sliding" if paced else "refill",
        max_in_flight=AUTO_LIMIT if name == "auto" else None,
    )
    server = await start_mock_server(mock_cfg)
    limits = f"rpm = {RPM}\nwindow_s = {LIMIT_WINDOW_S}\n" if limited else ""
    priced = name == "max-cost"
    (work / "config.toml").write_text(
        f'[providers.target]\nkind = "openai"\nbase_url = "{server.url}"\nmodel = "mock-model"\n'
        + ("params = { max_tokens = 16 }\n" if priced else "")
        + f"[providers.target.limits]\n{limits}\n"
        + (
            f"[prices.mock-model]\ninput = {MAX_COST_PRICES[0]}\noutput = {MAX_COST_PRICES[1]}\n"
            if priced
            else ""
        )
        + '[run]\nprovider = "target"\n'
        + ('concurrency = "auto"\nmax_concurrency = 64\n' if auto else "concurrency = 32\n")
        + "[retry]\nbackoff_base_s = 0.05\nbackoff_max_s = 0.5\n"
        + ("max_attempts = 12\n" if auto else "")
    )
    report: dict[str, Any] = {"scenario": name, "mock_url": server.url}
    env = {**cluster.env}
    env.pop("RAY_ADDRESS", None)
    try:
        prompts = work / "prompts.jsonl"
        run_dir = work / "run"
        cmd = _llmbatch_run(cluster, work, prompts, run_dir)
        log = work / "llmbatch.log"
        t1 = time.monotonic()
        if name in ("exact", "bench", "pacing"):
            report["exit_codes"] = [await _run(cmd, env, log)]
        elif name == "auto":
            sampler = asyncio.ensure_future(_sample_in_flight(server, report))
            report["exit_codes"] = [await _run(cmd, env, log)]
            sampler.cancel()
        elif name in ("kill-driver", "text-log"):
            if name == "text-log":
                cmd += ["--text-layout", "log"]
            code, _, report["records_at_kill"] = await _run_killing(
                cmd, env, log, run_dir, 150, lambda p: p.send_signal(signal.SIGKILL)
            )
            report["exit_codes"] = [code, await _run(cmd, env, log)]
        elif name == "no-survivor":

            def kill_every_worker(_proc: Any) -> list[int]:
                # Every record there is now must still be there after the run ends.
                report["ids_at_kill"] = sorted(_record_ids(run_dir))
                report["head_actor_pids"] = cluster.kill_actors(cluster.head)
                return [*report["head_actor_pids"], *cluster.kill_worker_node()]

            code, pids, report["records_at_kill"] = await _run_killing(
                cmd, env, log, run_dir, 150, kill_every_worker
            )
            report["killed_pids"] = pids
            report["records_after_first_run"] = _unique_records(run_dir)
            lines = (run_dir / "results.jsonl").read_bytes().splitlines()
            after = {json.loads(x)["custom_id"] for x in lines}  # the run directory's own
            report["lost_at_kill"] = sorted(set(report["ids_at_kill"]) - after)
            report["parts_left"] = (run_dir / "parts").is_dir()
            cluster.start_worker()  # workers are there again: the same command finishes
            report["exit_codes"] = [code, await _run(cmd, env, log)]
        elif name == "sigint":
            code, _, report["records_at_signal"] = await _run_killing(
                cmd, env, log, run_dir, 150, lambda p: p.send_signal(signal.SIGINT)
            )
            report["records_after_stop"] = _unique_records(run_dir)
            report["exit_codes"] = [code, await _run(cmd, env, log)]
        elif name == "max-runtime":
            code = await _run([*cmd, "--max-runtime-s", "4"], env, log)
            report["records_after_stop"] = _unique_records(run_dir)
            report["exit_codes"] = [code, await _run(cmd, env, log)]
        elif name == "max-cost":
            code = await _run([*cmd, "--max-cost", str(MAX_COST)], env, log)
            report["records_after_stop"] = _unique_records(run_dir)
            report["billed_after_stop"] = _billed(server.stats)
            report["exit_codes"] = [code, await _run([*cmd, "--max-cost", "1000"], env, log)]
            report["billed"] = _billed(server.stats)
        elif name == "kill-worker":
            code, pids, report["records_at_kill"] = await _run_killing(
                cmd, env, log, run_dir, 150, lambda _p: cluster.kill_worker_node()
            )
            report["killed_pids"] = pids
            report["records_after_first_run"] = _unique_records(run_dir)
            report["exit_codes"] = [code, await _run(cmd, env, log)]
            cluster.start_worker()  # the next scenario has two nodes again
        report["run_s"] = round(time.monotonic() - t1, 2)
    finally:
        stats = server.stats
        report["mock"] = {
            **stats.as_dict(),
            "admitted_s": [round(t, 4) for t, _ in stats.admitted],
            "refused_s": [round(t, 4) for t in stats.refused],
            "limits": server.measured(),
        }
        await server.close()
    return report


def _billed(stats: Any) -> float:
    """What the mock's own usage counters bill at the max-cost scenario's prices."""
    inp, out = MAX_COST_PRICES
    return (stats.usage_input_tokens * inp + stats.usage_output_tokens * out) / 1e6


async def _sample_in_flight(server: Any, report: dict[str, Any]) -> None:
    """The mock's requests in flight every 50 ms, into ``report["in_flight"]``."""
    seen = report.setdefault("in_flight", [])
    while True:
        await asyncio.sleep(0.05)
        seen.append(server.stats.in_flight)


def _unique_records(run_dir: Path) -> dict[str, int]:
    """Lines and distinct ids of the run directory's results.jsonl."""
    try:
        lines = (run_dir / "results.jsonl").read_bytes().splitlines()
    except FileNotFoundError:
        return {"lines": 0, "ids": 0}
    ids = {json.loads(x)["custom_id"] for x in lines}
    return {"lines": len(lines), "ids": len(ids)}


async def run_all(names: list[str], root: Path) -> None:
    """Every scenario in ``names`` on one cluster, each in ``root/NAME`` (which holds
    its prompts.jsonl), writing ``root/NAME/report.json`` (with ``error`` if it broke)."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    cluster = Cluster(root)
    t0 = time.monotonic()
    try:
        cluster.start()
        started_s = round(time.monotonic() - t0, 2)
        for name in names:
            work = root / name
            try:
                report = await scenario(name, work, cluster)
            except Exception as exc:  # reported to that scenario's test
                report = {"scenario": name, "error": f"{type(exc).__name__}: {exc}"}
            report["cluster_start_s"] = started_s
            (work / "report.json").write_text(json.dumps(report))
    finally:
        cluster.stop()


def main() -> None:
    root, names = Path(sys.argv[1]), sys.argv[2:]
    asyncio.run(run_all(names, root))


if __name__ == "__main__":
    main()
