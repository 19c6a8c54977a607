"""Start-up cost: CPU (user+sys, from wait4) of short llmbatch commands.

    python -m bench.startup --repeat 15 [--baseline DIR]

Each command runs ``--repeat`` times as its own child process, after one warm-up run
that writes the byte-code caches, as an installed package has them (this machine sets
PYTHONDONTWRITEBYTECODE, which would otherwise compile llmbatch from source at every
start: ~65 ms). The table shows the minimum and the median CPU; on a shared machine the
minimum is the steadier figure, since contention only ever adds to it. References in
the same invocation: an empty interpreter, and the imports the bare aiohttp loop needs
(asyncio, uvloop, aiohttp, orjson), also with aiohttp's CA loading deferred as
``llmbatch run`` imports it (llmbatch/deferred_ca.py; "-" for a checkout without it)
and without uvloop. ``--baseline DIR`` runs every command from another checkout too
(PYTHONPATH=DIR), interleaved with this one, for a before/after figure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from .harness import PY, ROOT, child_env, machine_line, markdown_table, mock_server, run_child

_DEFERRED = "from llmbatch.deferred_ca import import_aiohttp; import_aiohttp(); "


def _commands(base_url: str, prompts: Path) -> list[tuple[str, list[str]]]:
    run = [PY, "-m", "llmbatch", "run", str(prompts), "--no-progress"]
    return [
        ("python -c pass (interpreter only)", [PY, "-c", "pass"]),
        (
            "import asyncio, uvloop, aiohttp, orjson (the bare loop's imports)",
            [PY, "-c", "import asyncio, uvloop, aiohttp, orjson"],
        ),
        (
            "the same, aiohttp's import-time CA loading deferred (what llmbatch run does)",
            [PY, "-c", _DEFERRED + "import asyncio, uvloop, orjson"],
        ),
        (
            "the same without uvloop (llmbatch run of fewer than 100 prompts)",
            [PY, "-c", _DEFERRED + "import asyncio, orjson"],
        ),
        ("llmbatch --version", [PY, "-m", "llmbatch", "--version"]),
        ("llmbatch --help", [PY, "-m", "llmbatch", "--help"]),
        (
            "llmbatch run (1 prompt, external server)",
            [*run, "--provider", "vllm", "--base-url", base_url, "--model", "m", "--out"],
        ),
        ("llmbatch run (1 prompt, embedded mock)", [*run, "--out"]),
    ]


def _env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in child_env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(tree)
    return env


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--baseline", type=Path, help="another checkout to measure alongside")
    ap.add_argument(
        "--out-root",
        type=Path,
        default=ROOT / "bench",
        help="where the runs' directories go (file creation and fsync cost vary by disk)",
    )
    args = ap.parse_args(argv)
    trees = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    print(f"# bench.startup — {machine_line()}\n")
    rows = []
    with (
        mock_server(tokens=64, ttft_ms=0, itl_ms=0) as server,
        tempfile.TemporaryDirectory(dir=args.out_root) as tmp,
    ):
        prompts = Path(tmp) / "one.jsonl"
        prompts.write_text('{"id": "q1", "prompt": "hello"}\n')
        for n, (label, cmd) in enumerate(_commands(server.base_url, prompts)):
            cpu: dict[str, list[float]] = {name: [] for name in trees}
            for i in range(args.repeat + 1):
                for name, tree in trees.items():  # interleaved: noise hits both alike
                    if _DEFERRED in cmd[-1] and not (tree / "llmbatch/deferred_ca.py").exists():
                        continue
                    out = [str(Path(tmp) / f"run{n}-{name}-{i}")] if cmd[-1] == "--out" else []
                    # cwd too: `python -m` puts the working directory first on sys.path
                    res = run_child([*cmd, *out], timeout_s=60, env=_env(tree), cwd=tree)
                    if res.returncode != 0:
                        raise SystemExit(f"{label}: exit {res.returncode}: {res.stderr[-300:]}")
                    if i:  # the first run warms the byte-code caches
                        cpu[name].append(res.cpu_s)
            row = [label]
            for name in trees:
                if not cpu[name]:
                    row += ["-", "-"]
                    continue
                row += [f"{min(cpu[name]):.3f}", f"{statistics.median(cpu[name]):.3f}"]
            rows.append(row)
    headers = ["command", "CPU s (min)", "CPU s (median)"]
    if args.baseline:
        headers += ["baseline CPU s (min)", "baseline CPU s (median)"]
    print(markdown_table(headers, rows))
    print(f"\n{args.repeat} runs each")


if __name__ == "__main__":
    main()
