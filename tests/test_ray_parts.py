"""The Ray engine's folding of worker part directories, without Ray (crash leftovers)."""

from __future__ import annotations

from pathlib import Path

import orjson

from llmbatch.ray_engine import PARTS_DIR, _Consolidator, _shares
from llmbatch.writer import RunDir

from .conftest import read_results


def _line(rid: str, text_file: str | None, *, ok: bool = True) -> bytes:
    rec = {
        "id": f"req_{rid}",
        "custom_id": rid,
        "response": {"status_code": 200, "request_id": None, "body": {}} if ok else None,
        "error": None if ok else {"code": "server_error", "message": "x"},
        "llmbatch": {"text_file": text_file, "metrics": {}, "attempts": []},
    }
    return orjson.dumps(rec) + b"\n"


def _part(root: Path, name: str, ids: list[str], tail: bytes = b"") -> Path:
    part = root / PARTS_DIR / name
    (part / "text").mkdir(parents=True)
    lines = b""
    for rid in ids:
        (part / "text" / f"{rid}.txt").write_text(f"answer {rid}")
        lines += _line(rid, f"text/{rid}.txt")
    (part / "text" / "half.partial").write_text("cut off")
    (part / "results.jsonl").write_bytes(lines + tail)
    return part


async def test_leftover_parts_fold_once_per_id_and_go(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rundir, index = RunDir.open(run, {"prompts": "p"})
    (run / "results.jsonl").write_bytes(_line("a", None))
    index.add("a")  # already in the top level from an earlier fold
    _part(run, "s1-w0", ["a", "b", "c"], tail=b'{"custom_id": "torn')  # killed mid-write
    _part(run, "s1-w1", ["d", "b"])  # "b" twice: only the first fold counts
    cons = _Consolidator(run, rundir, index)
    assert await cons.absorb_leftovers() == 3
    await rundir.aclose()
    records = read_results(run)
    assert [r["custom_id"] for r in records] == ["a", "b", "c", "d"]
    assert (run / "text" / "d.txt").read_text() == "answer d"
    assert not (run / PARTS_DIR / "s1-w0").exists() and not (run / "text" / "half.partial").exists()


async def test_live_parts_are_tailed_by_complete_lines(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rundir, index = RunDir.open(run, {"prompts": "p"})
    part = _part(run, "s2-w0", ["x"], tail=b'{"custom_id": "y"')
    cons = _Consolidator(run, rundir, index)
    from llmbatch.ray_engine import _Part

    cons.parts.append(_Part(part, worker="w0"))
    assert await cons.absorb_all() == 1
    with open(part / "results.jsonl", "ab") as fh:  # the worker finishes the line
        fh.write(b', "error": null, "llmbatch": {}}\n')
        fh.write(_line("z", None, ok=False))
    assert await cons.absorb_all() == 2
    await cons.finish()
    await rundir.aclose()
    assert [r["custom_id"] for r in read_results(run)] == ["x", "y", "z"]
    assert cons.per_worker == {"w0": 3} and cons.added_failed == 1
    assert not (run / PARTS_DIR).exists()


def test_concurrency_shares() -> None:
    assert _shares(32, 2) == [16, 16] and _shares(33, 2) == [17, 16] and _shares(3, 3) == [1, 1, 1]
