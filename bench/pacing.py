"""Pacing by what the server says: whole CLI runs against the mock's announced rate limits.

    python -m bench.pacing [--repeats 3]

Each row is ``llmbatch run`` in a child process (start-up included) against
``llmbatch mock-server`` in another, nothing configured on llmbatch's side:

- 300 short prompts, ``--concurrency auto``, the limit announced in OpenAI-style headers:
  50 per sliding second; a 10 s sliding window at 1/4 time (110 per 2.5 s); a per-minute
  continuous refill at 1/10 time (170 per 6 s, ``--provider openai``). Target: within
  1.15x of 6 s (300 prompts at 50 per second), fewer than 2% answered 429.
- 400 prompts at concurrency 64, answers taking ~1 s, 2% each of 500s, resets and
  disconnects, with and without 5% 429s claiming ``limit 60, remaining 0, reset 1s``
  (no headers on 200s). Target: the run with 429s within 2x of the one without.

The reference row is the bare aiohttp loop (bench/bare.py) sending the same 300 requests
to an unlimited mock in the same invocation: what the machine takes without any limit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import urllib.request
from pathlib import Path

from .harness import (
    PY,
    MockServer,
    child_env,
    machine_line,
    markdown_table,
    mock_server,
    run_bare,
    run_child,
    work_tmpdir,
    write_prompts,
)

SHAPES = {
    "50 per sliding 1 s": (
        ["--rpm", "50", "--limit-window-s", "1", "--limit-mode", "sliding"],
        "vllm",
    ),
    "110 per sliding 2.5 s (10 s at 1/4)": (
        ["--rpm", "110", "--limit-window-s", "2.5", "--limit-mode", "sliding"],
        "vllm",
    ),
    "170 per 6 s refill (a minute at 1/10)": (
        ["--rpm", "170", "--limit-window-s", "6", "--limit-mode", "refill"],
        "openai",
    ),
}
TRANSIENT = ["--fault", "500=0.02", "--fault", "reset=0.02", "--fault", "disconnect=0.02"]
CLAIM = [
    "--fault-header",
    "x-ratelimit-limit-requests=60",
    "--fault-header",
    "x-ratelimit-remaining-requests=0",
    "--fault-header",
    "x-ratelimit-reset-requests=1s",
    "--retry-after-ms",
    "1000",
]
RETRY_TOML = "[retry]\nmax_attempts = 6\nbackoff_base_s = 0.2\nbackoff_max_s = 5.0\n"


def stats(server: MockServer) -> dict[str, int]:
    with urllib.request.urlopen(f"{server.base_url[:-3]}/mock/stats") as r:
        out: dict[str, int] = json.loads(r.read())
    return out


def cli_run(server: MockServer, prompts: Path, provider: str, *args: str) -> float:
    """Whole ``llmbatch run`` wall time (s); raises when it did not succeed."""
    with work_tmpdir() as tmp:
        argv = [PY, "-m", "llmbatch", "run", str(prompts), "--provider", provider]
        argv += ["--base-url", server.base_url, "--model", "mock-model", "--no-progress"]
        argv += ["--run-dir", str(Path(tmp) / "run"), *args]
        res = run_child(argv, timeout_s=300, env=child_env(OPENAI_API_KEY="sk-bench"))
    if res.returncode != 0:
        raise RuntimeError(f"llmbatch run exited {res.returncode}: {res.stderr[-500:]}")
    return res.wall_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    opts = ap.parse_args()
    rows = []
    with work_tmpdir() as tmp:
        p300 = write_prompts(Path(tmp) / "p300.jsonl", 300)
        p400 = write_prompts(Path(tmp) / "p400.jsonl", 400)
        with mock_server(tokens=8, ttft_ms=10, itl_ms=1) as free:
            bare = run_bare(free, 64, 300)
        rows.append(
            ["bare aiohttp loop, 300 requests, no limit", f"{bare.proc_wall_s:.2f}", "", ""]
        )
        for label, (flags, provider) in SHAPES.items():
            walls, limited = [], []
            for _ in range(opts.repeats):
                with mock_server(tokens=8, ttft_ms=10, itl_ms=1, extra=flags) as server:
                    walls.append(cli_run(server, p300, provider, "--concurrency", "auto"))
                    limited.append(stats(server)["rate_limited"])
            wall = statistics.median(walls)
            rows.append(
                [
                    f"300 prompts, {label}",
                    f"{wall:.2f}",
                    f"{wall / 6.0:.2f}x of 6 s",
                    f"429s {max(limited)} (max of {opts.repeats})",
                ]
            )
        config = Path(tmp) / "config.toml"
        config.write_text(RETRY_TOML)
        times: dict[str, float] = {}
        for name, faults in (
            ("without", TRANSIENT),
            ("with", [*TRANSIENT, "--fault", "429=0.05", *CLAIM]),
        ):
            walls, early = [], []
            for _ in range(opts.repeats):
                with mock_server(tokens=25, ttft_ms=500, itl_ms=20, extra=faults) as server:
                    walls.append(
                        cli_run(
                            server, p400, "vllm", "--concurrency", "64", "--config", str(config)
                        )
                    )
                    early.append(stats(server)["early_retries"])
            times[name] = statistics.median(walls)
            rows.append(
                [
                    f"400 prompts, c=64, transient faults, {name} 5% claiming 429s",
                    f"{times[name]:.2f}",
                    f"{times[name] / times['without']:.2f}x of without",
                    f"early retries {max(early)}",
                ]
            )
    print(machine_line())
    print(markdown_table(["run", "wall s (median)", "ratio", "server saw"], rows))


if __name__ == "__main__":
    main()
