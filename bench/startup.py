"""Start-up cost: CPU (user+sys, from wait4) of short llmbatch commands.

    python -m bench.startup --repeat 15 [--baseline DIR] [--wheel-venv VENV]

Each command runs ``--repeat`` times as its own child process, after one warm-up run
that writes the byte-code caches, as an installed package has them (this machine sets
PYTHONDONTWRITEBYTECODE, which would otherwise compile llmbatch from source at every
start: ~65 ms). The table shows the minimum and the median CPU; on a shared machine the
minimum is the steadier figure, since contention only ever adds to it. References in
the same invocation: an empty interpreter, and the imports the bare aiohttp loop needs
(asyncio, uvloop, aiohttp, orjson), also with aiohttp's CA loading deferred as
``llmbatch run`` imports it (llmbatch/cli/deferred_ca.py; "-" for a checkout without it),
without uvloop, and asyncio with orjson alone (all a ``--client native`` run needs of
them). ``--baseline DIR`` runs every command from another checkout too (PYTHONPATH=DIR),
interleaved with this one, for a before/after figure.

``--wheel-venv VENV``: the same rows once more from a virtualenv where llmbatch is
installed from a wheel (``python -m venv VENV && VENV/bin/pip install '.[fast]'``),
through its console script: without the editable install's import hook, which every
other column pays at interpreter start-up (in ``site``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from .harness import PY, ROOT, child_env, machine_line, markdown_table, mock_server, run_child

_DEFERRED = "from llmbatch.cli.deferred_ca import import_aiohttp; import_aiohttp(); "
_NATIVE = "--client native"


def _commands(
    py: str, llmbatch: list[str], base_url: str, prompts: Path
) -> list[tuple[str, list[str]]]:
    """(label, argv) of every row, for interpreter ``py`` and the ``llmbatch`` command."""
    run = [*llmbatch, "run", str(prompts), "--no-progress"]
    external = ["--provider", "vllm", "--base-url", base_url, "--model", "m"]
    return [
        ("python -c pass (interpreter only)", [py, "-c", "pass"]),
        (
            "import asyncio, uvloop, aiohttp, orjson (the bare loop's imports)",
            [py, "-c", "import asyncio, uvloop, aiohttp, orjson"],
        ),
        (
            "the same, aiohttp's import-time CA loading deferred (what llmbatch run does)",
            [py, "-c", _DEFERRED + "import asyncio, uvloop, orjson"],
        ),
        (
            "the same without uvloop (llmbatch run of fewer than 100 prompts)",
            [py, "-c", _DEFERRED + "import asyncio, orjson"],
        ),
        (
            "import asyncio, orjson (no aiohttp: --client native)",
            [py, "-c", "import asyncio, orjson"],
        ),
        ("llmbatch --version", [*llmbatch, "--version"]),
        ("llmbatch --help", [*llmbatch, "--help"]),
        ("llmbatch run (1 prompt, external server)", [*run, *external, "--run-dir"]),
        (
            "llmbatch run --client native (1 prompt, external server)",
            [*run, *external, *_NATIVE.split(), "--run-dir"],
        ),
        ("llmbatch run (1 prompt, embedded mock)", [*run, "--run-dir"]),
    ]


def _env(tree: Path | None) -> dict[str, str]:
    env = {k: v for k, v in child_env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    if tree is None:  # the wheel's own installed copy, nothing in front of it
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = str(tree)
    return env


def _supported(tree: Path | None, cmd: list[str]) -> bool:
    """Whether the checkout (None: this one, as installed) has what the row measures."""
    root = tree or ROOT
    if _DEFERRED in cmd[-1] and not (root / "llmbatch/cli/deferred_ca.py").exists():
        return False
    return not (_NATIVE in " ".join(cmd) and not (root / "llmbatch/http/native.py").exists())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--baseline", type=Path, help="another checkout to measure alongside")
    ap.add_argument(
        "--wheel-venv", type=Path, help="a virtualenv with llmbatch installed from a wheel"
    )
    ap.add_argument(
        "--out-root",
        type=Path,
        default=ROOT / "bench",
        help="where the runs' directories go (file creation and fsync cost vary by disk)",
    )
    args = ap.parse_args(argv)
    # column -> (checkout on PYTHONPATH or None, interpreter, how llmbatch is started)
    columns: dict[str, tuple[Path | None, str, list[str]]] = {
        "this": (ROOT, PY, [PY, "-m", "llmbatch"])
    }
    if args.baseline:
        base = args.baseline.resolve()
        columns["baseline"] = (base, PY, [PY, "-m", "llmbatch"])
    if args.wheel_venv:
        venv = args.wheel_venv.resolve()
        columns["wheel"] = (None, str(venv / "bin/python"), [str(venv / "bin/llmbatch")])
    print(f"# bench.startup — {machine_line()}\n")
    rows = []
    with (
        mock_server(tokens=64, ttft_ms=0, itl_ms=0) as server,
        tempfile.TemporaryDirectory(dir=args.out_root) as tmp,
    ):
        prompts = Path(tmp) / "one.jsonl"
        prompts.write_text('{"id": "q1", "prompt": "hello"}\n')
        tables = {
            name: _commands(py, start, server.base_url, prompts)
            for name, (_, py, start) in columns.items()
        }
        for n, (label, _) in enumerate(tables["this"]):
            cpu: dict[str, list[float]] = {name: [] for name in columns}
            for i in range(args.repeat + 1):
                for name, (tree, _, _) in columns.items():  # interleaved: noise hits all alike
                    cmd = tables[name][n][1]
                    if not _supported(tree if name != "wheel" else None, cmd):
                        continue
                    out = [str(Path(tmp) / f"run{n}-{name}-{i}")] if cmd[-1] == "--run-dir" else []
                    # cwd too: `python -m` puts the working directory first on sys.path
                    res = run_child([*cmd, *out], timeout_s=60, env=_env(tree), cwd=tree or ROOT)
                    if res.returncode != 0:
                        raise SystemExit(f"{label}: exit {res.returncode}: {res.stderr[-300:]}")
                    if i:  # the first run warms the byte-code caches
                        cpu[name].append(res.cpu_s)
            row = [label]
            for name in columns:
                if not cpu[name]:
                    row += ["-", "-"]
                    continue
                row += [f"{min(cpu[name]):.3f}", f"{statistics.median(cpu[name]):.3f}"]
            rows.append(row)
    headers = ["command", "CPU s (min)", "CPU s (median)"]
    for name in columns:
        if name != "this":
            headers += [f"{name} CPU s (min)", f"{name} CPU s (median)"]
    print(markdown_table(headers, rows))
    print(f"\n{args.repeat} runs each")


if __name__ == "__main__":
    main()
