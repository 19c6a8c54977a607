"""Start-up cost as instructions executed (valgrind's callgrind), for a noisy machine.

    python -m bench.startup_instructions [--baseline DIR] [--wheel-venv VENV]

The same rows as bench/startup.py, each run once under ``valgrind --tool=callgrind``
after a warm-up run that writes the byte-code caches. An instruction count does not
move with the machine's load (CPU seconds here moved by 1.5x between two quiet hours),
so it compares builds and rows exactly; it does not count the kernel's work (system
calls, page faults), which bench/startup.py's CPU seconds include. Needs valgrind.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .harness import PY, ROOT, machine_line, markdown_table, mock_server
from .startup import _commands, _env, _supported

_COLLECTED = re.compile(rb"Collected : (\d+)")


def _instructions(cmd: list[str], env: dict[str, str], cwd: Path) -> int:
    res = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=300,
    )
    found = _COLLECTED.search(res.stderr)
    if res.returncode != 0 or found is None:
        raise SystemExit(f"{cmd}: exit {res.returncode}: {res.stderr[-300:]!r}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="another checkout to measure alongside")
    ap.add_argument("--wheel-venv", type=Path, help="a virtualenv with llmbatch from a wheel")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    columns: dict[str, tuple[Path | None, str, list[str]]] = {
        "this": (ROOT, PY, [PY, "-m", "llmbatch"])
    }
    if args.baseline:
        base = args.baseline.resolve()
        columns["baseline"] = (base, PY, [PY, "-m", "llmbatch"])
    if args.wheel_venv:
        venv = args.wheel_venv.resolve()
        columns["wheel"] = (None, str(venv / "bin/python"), [str(venv / "bin/llmbatch")])
    print(f"# bench.startup_instructions — {machine_line()}\n")
    rows = []
    with (
        mock_server(tokens=64, ttft_ms=0, itl_ms=0) as server,
        tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp,
    ):
        prompts = Path(tmp) / "one.jsonl"
        prompts.write_text('{"id": "q1", "prompt": "hello"}\n')
        tables = {
            name: _commands(py, start, server.base_url, prompts)
            for name, (_, py, start) in columns.items()
        }
        for n, (label, _) in enumerate(tables["this"]):
            row = [label]
            for name, (tree, _, _) in columns.items():
                cmd = tables[name][n][1]
                if not _supported(tree if name != "wheel" else None, cmd):
                    row.append("-")
                    continue
                outs = [[str(Path(tmp) / f"run{n}-{name}-{i}")] for i in range(2)]
                extra = outs if cmd[-1] == "--run-dir" else [[], []]
                env = _env(tree)
                subprocess.run([*cmd, *extra[0]], env=env, cwd=tree or ROOT, capture_output=True)
                count = _instructions([*cmd, *extra[1]], env, tree or ROOT)
                row.append(f"{count / 1e6:.0f}")
            rows.append(row)
    headers = ["command", "instructions (M)"]
    headers += [f"{name} instructions (M)" for name in columns if name != "this"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
