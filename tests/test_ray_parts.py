"""The Ray engine's folding of worker part directories, without Ray (crash leftovers)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from llmbatch.ray.engine import _shares
from llmbatch.ray.parts import PARTS_DIR, Consolidator
from llmbatch.rundir.writer import RunDir

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
    cons = Consolidator(run, rundir, index)
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
    cons = Consolidator(run, rundir, index)
    from llmbatch.ray.parts import Part

    cons.parts.append(Part(part, worker="w0"))
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


async def test_a_part_writes_its_text_into_the_run_directory(tmp_path: Path) -> None:
    """A part's text/ is the run's text/: a worker's batch writes the answers in place,
    and folding (live or left over by a killed run) only appends the lines."""
    import llmbatch
    from llmbatch.ray.parts import make_part

    run = tmp_path / "run"
    rundir, index = RunDir.open(run, {"prompts": "p"})
    part = run / PARTS_DIR / "s3-w0"
    meta = {"prompts": "p", "worker": "w0", "part_of": str(run)}
    make_part(part, meta)
    async with llmbatch.Client("mock", concurrency=4) as llm:
        await llm.batch(
            [{"id": f"k{i}", "prompt": f"hi {i}"} for i in range(5)], part, meta=meta
        ).wait()
    assert sorted(p.name for p in (run / "text").glob("*.txt")) == [f"k{i}.txt" for i in range(5)]
    cons = Consolidator(run, rundir, index)
    assert await cons.absorb_leftovers() == 5
    await rundir.aclose()
    records = read_results(run)
    assert sorted(r["custom_id"] for r in records) == [f"k{i}" for i in range(5)]
    for r in records:  # the line as the worker wrote it, its text where it points
        body = r["response"]["body"]["choices"][0]["message"]["content"]
        assert (run / r["llmbatch"]["text_file"]).read_text() == body
    assert not part.exists() and len(list((run / "text").glob("*.txt"))) == 5


def test_chunks_travel_packed_and_come_back_equal() -> None:
    from llmbatch.errors import InputError
    from llmbatch.ray.wire import decode_item, pack, unpack
    from llmbatch.records import PromptRecord

    items = [
        PromptRecord("a", 1, "prompt", {"messages": [{"role": "user", "content": "é"}]}),
        InputError("not JSON", path="p.jsonl", line_no=2),
        PromptRecord("b", 3, "batch", {"messages": [], "n": 2}, "/v1/chat/completions"),
    ]
    packed = pack(items)
    assert isinstance(packed, bytes)
    back = [decode_item(x) for x in unpack(packed)]
    assert back[0] == items[0] and back[2] == items[2]
    assert isinstance(back[1], InputError) and (back[1].reason, back[1].line_no) == ("not JSON", 2)
    odd = [PromptRecord("c", 4, "prompt", {"x": {1, 2}})]  # not JSON: sent pickled
    assert [decode_item(x) for x in unpack(pack(odd))] == odd


async def test_the_feed_gives_a_lost_workers_prompts_to_the_others_first() -> None:
    from llmbatch.ray.feed import Feed
    from llmbatch.records import PromptRecord

    items = [PromptRecord(f"p{i}", i, "prompt", {}) for i in range(10)]
    feed = Feed(items, chunk_size=3, workers=["w0", "w1"])
    assert [r.id for r in feed.take("w0")] == ["p0", "p1", "p2"]
    assert [r.id for r in feed.take("w1")] == ["p3", "p4", "p5"]
    feed.recorded("w0", "p1")  # folded: w0 holds p0 and p2 now
    woken = asyncio.ensure_future(feed.wait())
    await asyncio.sleep(0)  # one turn of the loop: the feeder is waiting now
    assert feed.lost("w0") == 2 and feed.alive == ["w1"]
    await asyncio.wait_for(woken, 1)  # a waiting feeder learns of it
    assert [r.id for r in feed.take("w1")] == ["p0", "p2", "p6"]  # the lost ones first
    assert feed.take("w0") == []  # a lost worker gets nothing more
    assert [r.id for r in feed.take("w1")] == ["p7", "p8", "p9"] and not feed.drained
    assert feed.take("w1") == [] and feed.drained
    assert feed.held_count() == 9 and feed.lost_workers == {"w0": 2}
    for rid in ["p0", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"]:
        feed.recorded("w1", rid)
    assert feed.held_count() == 0
    feed.close()
    assert feed.closed and feed.take("w1") == []


def _logged_answers(run: Path) -> dict[str, str]:
    """Each record's answer, read where its line points (text.log offset and length)."""
    out = {}
    data = (run / "text.log").read_bytes()
    for r in read_results(run):
        lb = r["llmbatch"]
        assert lb["text_file"] == "text.log"
        out[r["custom_id"]] = data[
            lb["text_offset"] : lb["text_offset"] + lb["text_bytes"]
        ].decode()
    return out


def _log_headers(run: Path) -> list[str]:
    """The ids of text.log's answers, in file order (header line, bytes, newline)."""
    data, pos, ids = (run / "text.log").read_bytes(), 0, []
    while pos < len(data):
        nl = data.index(b"\n", pos)
        head = orjson.loads(data[pos:nl])
        ids.append(head["custom_id"])
        pos = nl + 1 + head["bytes"] + 1
    return ids


async def test_text_layout_log_parts_fold_into_one_text_log(tmp_path: Path) -> None:
    """--text-layout log: each worker's part has a text.log of its own; folding copies
    each answer into the run's one text.log (before its line) and points the line at it;
    a part left by a killed run folds the same way, each id once."""
    import llmbatch
    from llmbatch.ray.parts import Part, make_part

    run = tmp_path / "run"
    rundir, index = RunDir.open(run, {"prompts": "p"}, text_layout="log")
    parts = []
    for k in range(2):
        part = run / PARTS_DIR / f"s4-w{k}"
        meta = {"prompts": "p", "worker": f"w{k}"}
        make_part(part, meta, text_layout="log")
        prompts = [{"id": f"k{i}", "prompt": f"hi {i}"} for i in range(k * 3, k * 3 + 4)]
        async with llmbatch.Client("mock", concurrency=4) as llm:
            await llm.batch(prompts, part, meta=meta, text_layout="log").wait()
        assert not (part / "text").exists()
        parts.append(part)
    cons = Consolidator(run, rundir, index)
    cons.parts.append(Part(parts[0], worker="w0", shared_text=False))
    assert await cons.absorb_all() == 4  # live
    assert await cons.absorb_leftovers() == 3  # w1's k3 is in already
    await rundir.aclose()
    answers = _logged_answers(run)
    assert sorted(answers) == [f"k{i}" for i in range(7)]
    for r in read_results(run):
        assert answers[r["custom_id"]] == r["response"]["body"]["choices"][0]["message"]["content"]
    assert sorted(_log_headers(run)) == sorted(answers)  # one answer per record, no other
    assert not (run / PARTS_DIR / "s4-w1").exists() and not (run / "text").exists()

    # A re-run opens the directory again: nothing is cut, nothing is added.
    rundir, index = RunDir.open(run, {"prompts": "p"}, text_layout="log")
    await rundir.aclose()
    assert _logged_answers(run) == answers and len(index) == 7


def test_a_log_layout_part_left_behind_keeps_the_driver_on_the_log_layout(
    tmp_path: Path,
) -> None:
    """Re-run with --text-layout files after a killed log-layout run: its parts' answers
    are in their text.log, so the driver folds them into a text.log of the run's own."""
    from llmbatch.config.load import load_config
    from llmbatch.ray.parts import driver_text_layout

    run = tmp_path / "run"
    cfg = load_config(None, flags={"run_dir": run, "provider": "mock"}, environ={})
    assert cfg.text_layout == "files" and driver_text_layout(cfg, run) == "files"
    (run / PARTS_DIR / "s5-w0").mkdir(parents=True)
    assert driver_text_layout(cfg, run) == "files"
    (run / PARTS_DIR / "s5-w0" / "text.log").write_bytes(b"")
    assert driver_text_layout(cfg, run) == "log"
