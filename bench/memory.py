"""Issues 2 and 7: memory stays bounded whatever the size of the prompt file.

    python -m bench.memory                      # 100k full run, 1M run (bounded), 1M iteration
    python -m bench.memory --million-runtime 0  # the 1M run to the end, however long

1. 100,000 prompts against the mock (fast shape, 16 tokens), ``--concurrency 256``,
   ``--client aiohttp``: peak RSS of the llmbatch process (target < 200 MB).
2. 1,000,000 prompts, same server: peak RSS of reading + dispatching (target
   < 150 MB). The full run takes longer than the budget on 2 cores, so by default
   it is stopped with ``--max-runtime-s 120`` (exit 75, resumable) and the number
   of records written is reported with the figure.
3. The 1M file alone: peak RSS of iterating ``llmbatch.rundir.reader.iter_records`` over
   all of it, and of doing so while adding every id to a ``results.ResumeIndex``
   (the index of a finished 1M run), against an interpreter that only imported them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .harness import (
    PY,
    Measure,
    child_env,
    fmt_errors,
    machine_line,
    markdown_table,
    mock_server,
    run_child,
    run_llmbatch,
    work_tmpdir,
    write_prompts,
)

SHAPE = {"tokens": 16, "ttft_ms": 0.0, "itl_ms": 0.0}
CONCURRENCY = 256


def _iterate_child(path: str, mode: str) -> None:
    """In a child: import, then iterate the file (``mode``: none | iterate | index)."""
    from llmbatch.rundir.reader import iter_records
    from llmbatch.rundir.results import ResumeIndex

    n = 0
    if mode != "none":
        index = ResumeIndex()
        for item in iter_records(path):
            n += 1
            if mode == "index":
                index.add(item.id if hasattr(item, "id") else f"#line-{n}")
    print(n)


def run_full(
    label: str, n: int, prompts: Path, max_runtime_s: float | None, conc: int
) -> tuple[Measure, str]:
    with mock_server(**SHAPE) as server:
        extra = ["--max-runtime-s", f"{max_runtime_s:g}"] if max_runtime_s else []
        m = run_llmbatch(
            server,
            conc,
            prompts,
            n,
            client="aiohttp",
            label=label,
            extra_args=extra,
            timeout_s=(max_runtime_s or 3600.0) + 120.0,
            tokens_per_request=SHAPE["tokens"],
        )
    done = n - m.error_kinds.get("no_record", 0)
    other = m.errors - m.error_kinds.get("no_record", 0)
    if max_runtime_s:
        errs = f"{other}" + (f" ({m.retries} retries)" if m.retries else "")
        how = f"{done:,} of {n:,} done in --max-runtime-s {max_runtime_s:g} s; errors {errs}"
    else:
        how = f"{done:,} of {n:,} done; errors {fmt_errors(m)}"
    print(f"[{label}] RSS {m.maxrss_mb:.0f} MB, {how}", file=sys.stderr, flush=True)
    return m, how


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--small", type=int, default=100_000, help="prompts of the full run")
    ap.add_argument("--large", type=int, default=1_000_000, help="prompts of the big file")
    ap.add_argument(
        "--million-runtime",
        type=float,
        default=120.0,
        help="--max-runtime-s of the big run, seconds (0: run it to the end)",
    )
    ap.add_argument("--skip-runs", action="store_true", help="only the iteration figures")
    ap.add_argument("--iterate", nargs=2, metavar=("FILE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.iterate:
        _iterate_child(*args.iterate)
        return
    print(f"# bench.memory — {machine_line()}\n")
    rows: list[list[str]] = []
    with work_tmpdir() as tmp:
        small = write_prompts(Path(tmp) / "p100k.jsonl", args.small)
        large = write_prompts(Path(tmp) / "p1m.jsonl", args.large)
        size_mb = large.stat().st_size / 1e6
        if not args.skip_runs:
            label = f"llmbatch run, {args.small:,} prompts, -j {CONCURRENCY}"
            m, how = run_full(label, args.small, small, None, CONCURRENCY)
            rows.append([label, f"{m.maxrss_mb:.0f}", "< 200", f"{m.wall_s:.1f}", how])
            rt = args.million_runtime or None
            label = f"llmbatch run, {args.large:,} prompts, -j {CONCURRENCY}"
            m, how = run_full(label, args.large, large, rt, CONCURRENCY)
            rows.append([label, f"{m.maxrss_mb:.0f}", "< 150", f"{m.wall_s:.1f}", how])
        for mode, what in (
            ("none", "interpreter + imports only (baseline)"),
            ("iterate", f"iter_records over {args.large:,} lines ({size_mb:.0f} MB file)"),
            ("index", f"iter_records + ResumeIndex of all {args.large:,} ids"),
        ):
            argv_ = [PY, "-m", "bench.memory", "--iterate", str(large), mode]
            res = run_child(argv_, timeout_s=600.0, env=child_env())
            out = res.stdout.strip() or res.stderr.strip()[-200:]
            rows.append([what, f"{res.maxrss_mb:.0f}", "< 150", f"{res.wall_s:.1f}", out])
            print(f"[{mode}] RSS {res.maxrss_mb:.0f} MB ({out})", file=sys.stderr, flush=True)
    print(
        markdown_table(["what", "peak RSS MB", "target", "wall s", "records / items"], rows),
        flush=True,
    )


if __name__ == "__main__":
    main()
