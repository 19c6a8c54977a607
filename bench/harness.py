"""Shared machinery for the benches: mock server process, child processes, tables.

Every child runs as its own process and is reaped with ``os.wait4``, so its CPU time
(user + sys) and peak RSS are its own. Every process started here is bounded in
time and killed by pid; nothing is left running.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
# Run directories go here, not to /tmp: on this machine /tmp creates files 10-30x slower
# (200-670 us per create vs ~20 us in the checkout, same ext4), which would make the
# one-text-file-per-request cost look like llmbatch's. bench/out/ is git-ignored.
WORK_DIR = ROOT / "bench" / "out"


def file_create_cost_us(n: int = 500) -> float:
    """CPU µs to create, write (300 B) and close one file where run directories go."""
    with work_tmpdir() as tmp:
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        for i in range(n):
            fd = os.open(f"{tmp}/f{i}.partial", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, b"x" * 300)
            os.close(fd)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return cpu / n * 1e6


@contextlib.contextmanager
def work_tmpdir() -> Iterator[str]:
    """A directory under bench/out/ for one measurement's run directory.

    Deleted when the bench exits, not after each measurement: deleting thousands of files
    made the next measurement's file creation several times slower on this VM.
    """
    work = Path(os.environ.get("BENCH_OUT_DIR") or WORK_DIR)
    work.mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix="llmbatch-bench-", dir=work)
    atexit.register(shutil.rmtree, path, True)
    yield path


PY = sys.executable
HOST = "127.0.0.1"
TOKENS_FAST = 64


def child_env(**extra: str) -> dict[str, str]:
    """The environment for children: this worktree first on PYTHONPATH, no LLMBATCH_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMBATCH_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, deadline_s: float) -> None:
    """Poll a TCP connect until it succeeds; raise after ``deadline_s`` seconds."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"mock did not listen on {port} in {deadline_s}s") from None
            time.sleep(0.05)


@dataclass
class MockServer:
    """A running ``llmbatch mock-server`` process (HTTPS when ``ca_file`` is set)."""

    port: int
    proc: subprocess.Popen[bytes]
    shape: dict[str, float]
    ca_file: Path | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://{HOST}:{self.port}/v1"

    def connections(self) -> int:
        """TLS connections the server has seen so far (its /mock/stats), 0 in cleartext."""
        import ssl
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        with urllib.request.urlopen(f"{self.base_url[:-3]}/mock/stats", context=ctx) as r:
            return int(json.loads(r.read()).get("connections", 0))

    def connections_since(self, before: int) -> int:
        """TLS connections opened since ``connections()`` said ``before`` (not counting
        the stats request's own connection)."""
        if self.ca_file is None:
            return 0
        return self.connections() - before - 1

    def env(self) -> dict[str, str]:
        """What a client child needs to trust this server: SSL_CERT_FILE, which aiohttp,
        httpx, the OpenAI SDK and llmbatch (below --ca-bundle) all honour."""
        return {"SSL_CERT_FILE": str(self.ca_file)} if self.ca_file else {}


# How the mock serves: cleartext HTTP/1.1 (aiohttp), HTTPS HTTP/1.1 (aiohttp), or HTTPS
# with h2 and HTTP/1.1 by ALPN (the mock's h2 server, 100 streams per connection).
TRANSPORTS = ("plain", "tls", "h2")


@contextlib.contextmanager
def mock_server(
    *,
    tokens: int,
    ttft_ms: float,
    itl_ms: float,
    transport: str = "plain",
    extra: Sequence[str] = (),
) -> Iterator[MockServer]:
    """Start the mock as a separate process; kill it (by pid) on exit.

    ``extra``: more ``llmbatch mock-server`` flags (rate limits, faults).
    """
    port = free_port()
    argv = [
        PY,
        "-m",
        "llmbatch",
        "mock-server",
        "--port",
        str(port),
        "--tokens",
        str(tokens),
        "--ttft-ms",
        f"{ttft_ms:g}",
        "--itl-ms",
        f"{itl_ms:g}",
    ]
    tls_dir = Path(tempfile.mkdtemp(prefix="llmbatch-bench-tls-"))
    atexit.register(shutil.rmtree, tls_dir, True)
    ca_file = None
    if transport in ("tls", "h2"):
        argv += ["--tls", "--tls-dir", str(tls_dir)]
        ca_file = tls_dir / "mock-ca.pem"
    if transport == "h2":
        argv += ["--http2", "--max-streams", "100"]
    argv += list(extra)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, env=child_env(), stdout=log, stderr=log, cwd=ROOT)
    try:
        wait_listening(port, 20.0)
        shape = {"tokens": tokens, "ttft_ms": ttft_ms, "itl_ms": itl_ms}
        yield MockServer(port, proc, shape, ca_file)
    finally:
        _terminate(proc)
        log.close()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class ChildResult:
    """What one child process cost and said."""

    returncode: int
    user_s: float
    sys_s: float
    maxrss_mb: float
    wall_s: float
    timed_out: bool
    stdout: str
    stderr: str

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def run_child(
    argv: Sequence[str], *, timeout_s: float, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> ChildResult:
    """Run ``argv``, reap it with wait4 for its own rusage; kill it after ``timeout_s``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env or child_env(), stdout=out, stderr=err, cwd=cwd)
        deadline = t0 + timeout_s
        timed_out = False
        status = 0
        ru: Any = None
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline and not timed_out:
                timed_out = True
                os.kill(proc.pid, signal.SIGTERM)
                deadline += 10.0  # grace, then SIGKILL
                continue
            if timed_out and time.perf_counter() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        return ChildResult(
            returncode=proc.returncode,
            user_s=ru.ru_utime,
            sys_s=ru.ru_stime,
            maxrss_mb=ru.ru_maxrss / 1024.0,  # Linux: KiB
            wall_s=wall,
            timed_out=timed_out,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def write_prompts(path: Path, n: int, *, tag: str = "q") -> Path:
    """``n`` distinct prompts in the simplest input shape."""
    with open(path, "wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps({"id": f"{tag}{i}", "prompt": f"benchmark prompt {i}"}))
            fh.write(b"\n")
    return path


def count_result_errors(run_dir: Path, expected: int) -> tuple[int, dict[str, int], int]:
    """Failed records plus missing ones (a request with no record did not finish),
    by error code; and the number of retried attempts (which can hide errors)."""
    kinds: dict[str, int] = {}
    records = 0
    retries = 0
    path = run_dir / "results.jsonl"
    if path.exists():
        with open(path, "rb") as fh:
            for line in fh:
                records += 1
                rec = orjson.loads(line)
                retries += max(0, len(rec.get("llmbatch", {}).get("attempts") or [1]) - 1)
                err = rec.get("error")
                if err is not None:
                    code = str(err.get("code"))
                    kinds[code] = kinds.get(code, 0) + 1
    missing = max(0, expected - records)
    if missing:
        kinds["no_record"] = missing
    return sum(kinds.values()), kinds, retries


def read_stats(path: Path) -> dict[str, Any]:
    """The JSON a child left in its stats file (empty if it wrote none)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- numbers and tables ---------------------------------------------------------------


@dataclass
class Measure:
    """One measured configuration (median over repeats)."""

    label: str
    concurrency: int
    requests: int
    tokens: int
    errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0  # work phase (dispatch start -> all done)
    proc_wall_s: float = 0.0  # whole process, startup included
    cpu_s: float = 0.0  # whole process (wait4)
    work_cpu_s: float = 0.0  # work phase only (getrusage inside the child)
    maxrss_mb: float = 0.0
    retries: int = 0
    repeats: int = 1
    note: str = ""
    http_versions: dict[str, int] = field(default_factory=dict)  # llmbatch's summary.json
    connections: int = 0  # TLS connections the server saw during this measurement

    @property
    def us_per_token(self) -> float:
        return self.cpu_s / self.tokens * 1e6 if self.tokens else float("nan")

    @property
    def work_us_per_token(self) -> float:
        return self.work_cpu_s / self.tokens * 1e6 if self.tokens else float("nan")


def median_measure(runs: list[Measure]) -> Measure:
    """Median of each figure over repeated runs; errors are summed (never hidden)."""
    first = runs[0]
    kinds: dict[str, int] = {}
    for r in runs:
        for k, v in r.error_kinds.items():
            kinds[k] = kinds.get(k, 0) + v
    return Measure(
        label=first.label,
        concurrency=first.concurrency,
        requests=first.requests,
        tokens=int(statistics.median(r.tokens for r in runs)),
        errors=sum(r.errors for r in runs),
        error_kinds=kinds,
        wall_s=statistics.median(r.wall_s for r in runs),
        proc_wall_s=statistics.median(r.proc_wall_s for r in runs),
        cpu_s=statistics.median(r.cpu_s for r in runs),
        work_cpu_s=statistics.median(r.work_cpu_s for r in runs),
        maxrss_mb=statistics.median(r.maxrss_mb for r in runs),
        retries=sum(r.retries for r in runs),
        repeats=len(runs),
        http_versions=first.http_versions,
        connections=int(statistics.median(r.connections for r in runs)),
        note="; ".join(sorted({r.note for r in runs if r.note})),
    )


def ratio(x: float, base: float) -> str:
    if not base or x != x or base != base:
        return "–"
    return f"{x / base:.2f}x"


def fmt_errors(m: Measure) -> str:
    """Errors (by kind), and retried attempts when there were any."""
    retried = f" ({m.retries} retries)" if m.retries else ""
    if not m.errors:
        return "0" + retried
    detail = ", ".join(f"{k} {v}" for k, v in sorted(m.error_kinds.items()))
    return f"**{m.errors}** ({detail}){retried}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """Date, host CPU count and load, for the record."""
    load = os.getloadavg()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}, load avg {load[0]:.2f} at start"
    )


# -- the children ---------------------------------------------------------------------


def child_timeout_s(server: MockServer, concurrency: int, requests: int) -> float:
    """A generous bound: ten times the ideal wall time, at least two minutes."""
    s = server.shape
    per_request = (s["ttft_ms"] + s["itl_ms"] * max(0.0, s["tokens"] - 1)) / 1000.0
    waves = -(-requests // concurrency)
    return max(120.0, 10.0 * waves * per_request)


def run_bare(
    server: MockServer,
    concurrency: int,
    requests: int,
    *,
    loop: str = "uvloop",
    module: str = "bench.bare",
    label: str = "bare aiohttp loop",
) -> Measure:
    """The bare aiohttp loop (or another bench.* client with its CLI) as a child process."""
    argv = [PY, "-m", module, "--url", server.base_url]
    argv += ["--concurrency", str(concurrency), "--requests", str(requests), "--loop", loop]
    limit = child_timeout_s(server, concurrency, requests)
    conns0 = server.connections()
    res = run_child(argv, timeout_s=limit, env=child_env(**server.env()))
    conns = server.connections_since(conns0)
    try:
        out = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out = {"ok": 0, "errors": {"crashed": requests}, "tokens": 0}
    kinds = dict(out["errors"])
    missing = requests - out["ok"] - sum(kinds.values())
    if missing > 0:
        kinds["not_run"] = missing
    return Measure(
        label=label,
        concurrency=concurrency,
        requests=requests,
        tokens=int(out["tokens"]),
        errors=sum(kinds.values()),
        error_kinds=kinds,
        wall_s=float(out.get("work_wall_s", res.wall_s)),
        proc_wall_s=res.wall_s,
        cpu_s=res.cpu_s,
        work_cpu_s=float(out.get("work_cpu_s", res.cpu_s)),
        maxrss_mb=res.maxrss_mb,
        note="timed out" if res.timed_out else "",
        connections=conns,
    )


def run_llmbatch(
    server: MockServer,
    concurrency: int,
    prompts: Path,
    requests: int,
    *,
    client: str,
    label: str | None = None,
    extra_args: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
    loop: str = "uvloop",
    timeout_s: float | None = None,
    tokens_per_request: int | None = None,
) -> Measure:
    """``llmbatch run`` (via bench.llmbatch_child) into a fresh temporary run dir."""
    with work_tmpdir() as tmp:
        run_dir = Path(tmp) / "run"
        stats = Path(tmp) / "stats.json"
        argv = [PY, "-m", "bench.llmbatch_child", "run", str(prompts)]
        argv += ["--provider", "vllm", "--base-url", server.base_url, "--model", "mock-model"]
        argv += ["--concurrency", str(concurrency), "--client", client, "--no-progress"]
        argv += ["--run-dir", str(run_dir), *extra_args]
        env = child_env(BENCH_STATS_FILE=str(stats), **server.env(), **(extra_env or {}))
        if loop == "asyncio":
            env["LLMBATCH_LOOP"] = "asyncio"
        limit = timeout_s or child_timeout_s(server, concurrency, requests)
        conns0 = server.connections()
        res = run_child(argv, timeout_s=limit, env=env, cwd=Path(tmp))
        conns = server.connections_since(conns0)
        errors, kinds, retries = count_result_errors(run_dir, requests)
        st = read_stats(stats)
        versions = read_stats(run_dir / "summary.json").get("http_versions") or {}
    per_req = int(tokens_per_request or server.shape["tokens"])
    note = []
    if res.timed_out:
        note.append("timed out")
    if res.returncode not in (0, 1):
        note.append(f"exit {res.returncode}: {res.stderr.strip()[-200:]}")
    return Measure(
        label=label or f"llmbatch --client {client}",
        concurrency=concurrency,
        requests=requests,
        tokens=(requests - errors) * per_req,
        errors=errors,
        error_kinds=kinds,
        wall_s=float(st.get("work_wall_s", res.wall_s)),
        proc_wall_s=res.wall_s,
        cpu_s=res.cpu_s,
        work_cpu_s=float(st.get("work_cpu_s", res.cpu_s)),
        maxrss_mb=res.maxrss_mb,
        retries=retries,
        note="; ".join(note),
        http_versions=dict(versions),
        connections=conns,
    )
