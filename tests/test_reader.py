"""Reader: the three input shapes, every kind of bad line, ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmbatch.errors import InputError
from llmbatch.records import PromptRecord
from llmbatch.rundir.reader import iter_records

from .conftest import write_jsonl


def read(path: Path) -> list[PromptRecord | InputError]:
    return list(iter_records(path))


def test_three_shapes(tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "hi", "system": "be brief", "temperature": 0.1},
            {"id": 7, "messages": [{"role": "user", "content": "yo"}], "max_tokens": 5},
            {
                "custom_id": "c",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]},
            },
        ],
    )
    a, b, c = read(p)
    assert isinstance(a, PromptRecord) and a.shape == "prompt"
    assert a.body == {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "temperature": 0.1,
    }
    assert isinstance(b, PromptRecord) and (b.id, b.shape, b.body["max_tokens"]) == (
        "7",
        "messages",
        5,
    )
    assert isinstance(c, PromptRecord) and (c.id, c.shape, c.endpoint) == (
        "c",
        "batch",
        "/v1/chat/completions",
    )
    assert c.body["model"] == "m"


BAD_LINES = [
    (b"{not json", "invalid JSON"),
    (b'{"id": "x", "prompt": "\xff\xfe"}', "invalid UTF-8"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"id": "x"}', 'missing "prompt", "messages", "input" or "contents"'),
    (b'{"id": "x", "prompt": 5}', '"prompt" must be a non-empty string'),
    (b'{"id": "x", "prompt": ""}', '"prompt" must be a non-empty string'),
    (b'{"id": ["x"], "prompt": "p"}', "id must be a string or integer"),
    (b'{"id": "x", "messages": []}', '"messages" must be a non-empty list'),
    (b'{"id": "x", "messages": [{"content": "c"}]}', 'needs a string "role"'),
    (b'{"id": "x", "prompt": "p", "max_tokens": -1}', '"max_tokens" must be a positive integer'),
    (b'{"id": "x", "prompt": "p", "messages": [{"role":"user","content":"c"}]}', "not both"),
    (b'{"custom_id": "x", "method": "GET", "body": {}}', '"method" must be "POST"'),
    (b'{"custom_id": "x", "url": "/v1/embeddings", "body": {}}', 'unsupported "url"'),
    (b'{"custom_id": "x", "body": 3}', '"body" must be a JSON object'),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_bad_line_names_file_and_line(tmp_path: Path, line: bytes, reason: str) -> None:
    p = write_jsonl(
        tmp_path / "p.jsonl", [{"id": "ok", "prompt": "fine"}, line, {"prompt": "after"}]
    )
    items = read(p)
    assert len(items) == 3
    err = items[1]
    assert isinstance(err, InputError)
    assert err.line_no == 2 and err.path == str(p)
    assert reason in str(err) and str(err).startswith(f"{p}:2: ")
    # The run goes on after a bad line.
    assert isinstance(items[2], PromptRecord)


def test_duplicate_id_is_an_error_for_the_second_line(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "1"}, {"id": "a", "prompt": "2"}])
    first, second = read(p)
    assert isinstance(first, PromptRecord)
    assert isinstance(second, InputError) and "duplicate id 'a'" in str(second)


def test_auto_ids_are_stable_and_unique(tmp_path: Path) -> None:
    rows = [{"prompt": "same"}, {"prompt": "same"}, {"prompt": "other"}]
    p = write_jsonl(tmp_path / "p.jsonl", rows)
    ids1 = [r.id for r in read(p) if isinstance(r, PromptRecord)]
    ids2 = [r.id for r in read(p) if isinstance(r, PromptRecord)]
    assert ids1 == ids2 and len(set(ids1)) == 3
    assert ids1[1] == ids1[0] + "-2"


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'\n{"id": "a", "prompt": "x"}\n   \n{bad\n')
    a, err = read(p)
    assert isinstance(a, PromptRecord) and a.line_no == 2
    assert isinstance(err, InputError) and err.line_no == 4


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read(tmp_path / "nope.jsonl")


def test_streams_in_constant_memory(tmp_path: Path) -> None:
    # The reader is lazy: taking the first record does not read the whole file.
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": "x"} for i in range(1000)])
    it = iter_records(p)
    first = next(it)
    assert isinstance(first, PromptRecord) and first.id == "0"


def test_idset_behaves_like_a_set() -> None:
    import random

    from llmbatch.rundir.idset import IdSet

    ids = [f"id-{random.random()}" for _ in range(5000)]
    s = IdSet(capacity=4)  # grows many times
    assert all(s.add(i) for i in ids)
    assert not any(s.add(i) for i in ids)
    assert len(s) == 5000 and all(i in s for i in ids)
    assert "absent" not in s and 5 not in s


def test_bom_at_file_start_is_ignored(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "hi"}\r\n{"id": "b", "prompt": "yo"}\r\n')
    a, b = read(p)
    assert isinstance(a, PromptRecord) and isinstance(b, PromptRecord)
    assert (a.id, b.id) == ("a", "b")


def test_ids_that_look_like_error_records_are_refused(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "#line-1", "prompt": "x"}])
    (err,) = read(p)
    assert isinstance(err, InputError) and "reserved" in str(err)


def test_several_choices_per_prompt_are_refused(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x", "n": 3}])
    (err,) = read(p)
    assert isinstance(err, InputError) and '"n" other than 1' in str(err)
