"""Pacing by what the server says: whole CLI runs against the mock's announced rate limits.

    python -m bench.pacing [--repeats 3] [--only models] [--model NAME-PART]

Each row is ``llmbatch run`` in a child process (start-up included) against
``llmbatch mock-server`` in another, nothing configured on llmbatch's side.

The pacing table (issue 25): one row per server model, ``--concurrency auto``, answers
taking ~0.3 s (0.1 s to the first token); per-minute limits at 1/10 time. Achieved /
allowed is the server's own account (``/mock/stats`` ``limits``: what the binding limit
admitted beyond one whole limit, over the time from its first window to its last
admission, against limit / window); the 429 share is of every request the server saw.
Median of the repeats; the exact command of each row is printed under the table.

The older rows (issue 11):

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
from typing import Any

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

# name: (mock-server flags, prompts, provider profile, the limit that binds)
LATENCY = ["--tokens", "30", "--ttft-ms", "100", "--itl-ms", "7"]
VARYING = ["--tokens", "20", "--ttft-ms", "100", "--itl-ms", "7"]
MODELS: dict[str, tuple[list[str], int, str, str]] = {
    "sliding 1 s, 50 req/s, OpenAI headers, unknown server": (
        [*LATENCY, "--rpm", "50", "--limit-window-s", "1", "--limit-mode", "sliding"],
        600,
        "vllm",
        "requests",
    ),
    "the same read as OpenAI (refill; refuted by its reports)": (
        [*LATENCY, "--rpm", "50", "--limit-window-s", "1", "--limit-mode", "sliding"],
        600,
        "openai",
        "requests",
    ),
    "OpenAI RPM, continuous refill (300 per 6 s)": (
        [*LATENCY, "--rpm", "300", "--limit-window-s", "6", "--limit-mode", "refill"],
        800,
        "openai",
        "requests",
    ),
    "OpenAI TPM, continuous refill (6,000 per 6 s)": (
        [*LATENCY, "--tpm", "6000", "--limit-window-s", "6", "--limit-mode", "refill"],
        600,
        "openai",
        "tokens",
    ),
    "Anthropic requests, input, output tokens (output 3,000 per 6 s binds)": (
        [
            *VARYING,
            "--tokens-spread",
            "40",
            "--rpm",
            "600",
            "--input-tpm",
            "20000",
            "--output-tpm",
            "3000",
            "--limit-window-s",
            "6",
        ],
        250,
        "anthropic",
        "output_tokens",
    ),
    "fixed 2 s window of 100, nothing but Retry-After": (
        [
            *LATENCY,
            "--rpm",
            "100",
            "--limit-window-s",
            "2",
            "--limit-mode",
            "fixed",
            "--limit-headers",
            "never",
        ],
        700,
        "vllm",
        "requests",
    ),
    "TPM with output charged at the end (20-120 tokens; 12,000 per 6 s)": (
        [
            *VARYING,
            "--tokens-spread",
            "100",
            "--tpm",
            "12000",
            "--limit-window-s",
            "6",
            "--output-counted",
            "end",
        ],
        500,
        "openai",
        "tokens",
    ),
}


def stats(server: MockServer) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.base_url[:-3]}/mock/stats") as r:
        out: dict[str, Any] = json.loads(r.read())
    return out


def cli_run(server: MockServer, prompts: Path, provider: str, *args: str) -> float:
    """Whole ``llmbatch run`` wall time (s); raises when it did not succeed."""
    with work_tmpdir() as tmp:
        argv = [PY, "-m", "llmbatch", "run", str(prompts), "--provider", provider]
        argv += ["--base-url", server.base_url, "--model", "mock-model", "--no-progress"]
        argv += ["--run-dir", str(Path(tmp) / "run"), *args]
        keys = {"OPENAI_API_KEY": "sk-bench", "ANTHROPIC_API_KEY": "sk-bench"}
        res = run_child(argv, timeout_s=300, env=child_env(**keys))
    if res.returncode != 0:
        raise RuntimeError(f"llmbatch run exited {res.returncode}: {res.stderr[-500:]}")
    return res.wall_s


def models_table(repeats: int, only: str = "") -> None:
    """The pacing table: achieved / allowed and the 429 share per server model."""
    rows, commands = [], []
    models = {k: v for k, v in MODELS.items() if only in k}
    with work_tmpdir() as tmp:
        for name, (flags, n, provider, binding) in models.items():
            prompts = write_prompts(Path(tmp) / f"p{n}.jsonl", n)
            ratios, shares, walls = [], [], []
            for _ in range(repeats):
                with mock_server(tokens=30, ttft_ms=100, itl_ms=7, extra=flags) as server:
                    walls.append(cli_run(server, prompts, provider, "--concurrency", "auto"))
                    st = stats(server)
                limit = st["limits"][binding]
                ratios.append(limit["achieved_per_s"] / limit["allowed_per_s"])
                shares.append(st["rate_limited"] / st["requests"])
            rows.append(
                [
                    name,
                    str(n),
                    f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})",
                    f"{statistics.median(shares):.2%} (max {max(shares):.2%})",
                    f"{statistics.median(walls):.2f}",
                ]
            )
            commands.append(
                f"llmbatch mock-server {' '.join(flags)} & llmbatch run p{n}.jsonl "
                f"--provider {provider} --base-url URL --model mock-model --concurrency auto"
            )
    headers = ["server model", "prompts", "achieved / allowed (median, range)", "429s"]
    print(markdown_table([*headers, "wall s"], rows))
    print()
    for name, cmd in zip(models, commands, strict=True):
        print(f"- {name}: `{cmd}`")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["models", "shapes", "faults"], default=None)
    ap.add_argument("--model", default="", help="only the pacing rows whose name has this")
    opts = ap.parse_args()
    print(machine_line())
    if opts.only in (None, "models"):
        models_table(opts.repeats, opts.model)
    if opts.only == "models":
        return
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
    print(markdown_table(["run", "wall s (median)", "ratio", "server saw"], rows))


if __name__ == "__main__":
    main()
