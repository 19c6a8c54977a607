"""--shard I/N and ``llmbatch merge``: shards of one job joined equal one unsharded run."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from llmbatch.cli.app import app
from llmbatch.rundir.shard import parse_shard, shard_of

from .conftest import read_results, write_jsonl


def _prompts(tmp_path: Path, n: int = 60) -> Path:
    rows: list[Any] = [{"id": f"q{i}", "prompt": f"question number {i}"} for i in range(n)]
    rows.insert(7, b"{not json")  # a bad line: its error record is sharded by "#line-8"
    rows.insert(20, {"prompt": "a line without an id"})
    return write_jsonl(tmp_path / "p.jsonl", rows)


def _by_id(run_dir: Path) -> dict[str, dict[str, Any]]:
    records = read_results(run_dir)
    ids = [r["custom_id"] for r in records]
    assert len(ids) == len(set(ids)), "one record per id"
    return {r["custom_id"]: r for r in records}


def _answer(run_dir: Path, rec: dict[str, Any]) -> tuple[str | None, str | None]:
    body = (rec.get("response") or {}).get("body")
    content = body["choices"][0]["message"]["content"] if body else None
    rel = rec["llmbatch"].get("text_file")
    text = (run_dir / rel).read_text() if rel else None
    return content, text


def _run_shards(runner: CliRunner, p: Path, n: int) -> list[Path]:
    dirs = []
    for i in range(n):
        res = runner.invoke(app, ["run", str(p), "--shard", f"{i}/{n}"])
        # The bad line is a failed record (exit 1) in the shard of "#line-8" only.
        assert res.exit_code == (1 if shard_of("#line-8", n) == i else 0), res.output
        dirs.append(Path("outputs") / f"p-mock-shard{i}of{n}")
    return dirs


@pytest.mark.subprocess
def test_stable_hash_is_not_pythons_hash() -> None:
    # The same shard in every process: a fixed digest, whatever PYTHONHASHSEED is.
    code = (
        "from llmbatch.rundir.shard import shard_of; "
        "print([shard_of(f'q{i}', 7) for i in range(20)])"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert outs == {str([shard_of(f"q{i}", 7) for i in range(20)]) + "\n"}
    assert shard_of("q1", 3) == 2 and shard_of("q2", 3) == 1  # pinned: never changes


@pytest.mark.parametrize(
    ("spec", "message"),
    [("3/3", "I must be between 0 and 2"), ("0/0", "N must be between"), ("x", "expected I/N")],
)
def test_bad_shard_spec(runner: CliRunner, tmp_path: Path, spec: str, message: str) -> None:
    res = runner.invoke(app, ["run", str(_prompts(tmp_path)), "--shard", spec])
    assert res.exit_code == 2 and message in res.output
    assert not Path("outputs").exists()  # nothing ran
    assert parse_shard(" 1 / 4 ").spec == "1/4"


def test_shards_then_merge_equal_one_unsharded_run(runner: CliRunner, tmp_path: Path) -> None:
    p = _prompts(tmp_path)
    dirs = _run_shards(runner, p, 3)
    shard_ids = [set(_by_id(d)) for d in dirs]
    assert all(shard_ids) and sum(map(len, shard_ids)) == len(set().union(*shard_ids))

    res = runner.invoke(app, ["merge", *map(str, dirs)])
    assert res.exit_code == 0, res.output
    merged = Path("outputs") / "p-mock"
    assert "merged 3 shards into outputs/p-mock: 62 records (61 succeeded, 1 failed)" in res.output

    single = tmp_path / "single"
    res = runner.invoke(app, ["run", str(p), "--run-dir", str(single)])
    assert res.exit_code == 1, res.output
    got, want = _by_id(merged), _by_id(single)
    assert set(got) == set(want) and len(got) == 62
    for rid, rec in want.items():
        assert _answer(merged, got[rid]) == _answer(single, rec), rid
        assert got[rid]["error"] == rec["error"]
    summary = orjson.loads((merged / "summary.json").read_bytes())
    assert summary["requests"]["succeeded"] == 61 and summary["requests"]["failed"] == 1

    # The merged directory is the unsharded job's: running it again has nothing to do.
    res = runner.invoke(app, ["run", str(p), "--run-dir", str(merged)])
    assert res.exit_code == 0 and "62 already done" in res.output, res.output
    assert len(read_results(merged)) == 62


def test_a_shard_resumes_in_its_own_directory(runner: CliRunner, tmp_path: Path) -> None:
    p = _prompts(tmp_path)
    d = _run_shards(runner, p, 2)[0]
    res = runner.invoke(app, ["run", str(p), "--shard", "0/2"])
    assert f"{len(_by_id(d))} already done" in res.output
    res = runner.invoke(app, ["run", str(p), "--shard", "1/3", "--run-dir", str(d)])
    assert res.exit_code == 2 and "holds a run of shard '0/2'" in res.output


def test_merge_refuses_missing_overlapping_foreign_and_unfinished_shards(
    runner: CliRunner, tmp_path: Path
) -> None:
    p = _prompts(tmp_path)
    d0, d1, d2 = _run_shards(runner, p, 3)

    def merge(*args: str) -> str:
        existed = (tmp_path / "m").exists()
        res = runner.invoke(app, ["merge", *args, "--run-dir", str(tmp_path / "m")])
        assert res.exit_code == 2, res.output
        assert (tmp_path / "m").exists() == existed  # a refused merge writes nothing
        return res.output

    assert "shard 2/3 missing" in merge(str(d0), str(d1))
    assert f"{d1}: {d1} is shard 1/3 too (overlap)" in merge(str(d0), str(d1), str(d1), str(d2))
    assert "no such run directory" in merge(str(d0), str(d1), "nope")

    single = tmp_path / "single"
    runner.invoke(app, ["run", str(p), "--run-dir", str(single)])
    assert "not a shard run" in merge(str(d0), str(d1), str(single))

    other = write_jsonl(tmp_path / "other.jsonl", [{"id": "z", "prompt": "z"}])
    res = runner.invoke(
        app, ["run", str(other), "--shard", "2/3", "--run-dir", str(tmp_path / "o")]
    )
    assert "belongs to another job (prompts" in merge(str(d0), str(d1), str(tmp_path / "o"))

    # A shard run against another server (or model, or default params): another job.
    meta_path = d2 / "run.json"
    saved = meta_path.read_bytes()
    meta = orjson.loads(saved)
    meta["base_url"] = "http://other-server:8000/v1"
    meta_path.write_bytes(orjson.dumps(meta))
    assert "belongs to another job (base_url" in merge(str(d0), str(d1), str(d2))
    meta_path.write_bytes(saved)

    # A record in the wrong shard (a copied line): overlap.
    line = (d0 / "results.jsonl").read_bytes().splitlines(keepends=True)[0]
    with open(d1 / "results.jsonl", "ab") as fh:
        fh.write(line)
    assert "belongs to shard 0/3, not 1/3 (overlap)" in merge(str(d0), str(d1), str(d2))
    lines = (d1 / "results.jsonl").read_bytes().splitlines(keepends=True)
    (d1 / "results.jsonl").write_bytes(b"".join(x for x in lines if x != line))

    # A shard that stopped early (its last records lost): not finished.
    lines = (d2 / "results.jsonl").read_bytes().splitlines(keepends=True)
    (d2 / "results.jsonl").write_bytes(b"".join(lines[:-2]))
    assert f"{d2}: shard 2/3 is not finished: 2 prompts have no record" in merge(
        str(d0), str(d1), str(d2)
    )
    runner.invoke(app, ["run", str(p), "--shard", "2/3"])  # finish it

    # A shard a run still holds.
    with open(d2 / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write("4242")
        fh.flush()
        assert f"{d2}: a run is still writing it (pid 4242)" in merge(str(d0), str(d1), str(d2))

    res = runner.invoke(app, ["merge", str(d0), str(d1), str(d2), "--run-dir", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert len(_by_id(tmp_path / "m")) == 62
    # The merged directory carries the whole identity: the same job resumes it as is.
    merged_meta = orjson.loads((tmp_path / "m" / "run.json").read_bytes())
    shard_meta = orjson.loads((d0 / "run.json").read_bytes())
    for key in ("prompts", "provider", "kind", "base_url", "model", "params"):
        assert merged_meta[key] == shard_meta[key], key
    assert "shard" not in merged_meta
    # An existing, non-empty target is refused.
    assert "exists and is not empty" in merge(str(d0), str(d1), str(d2))
