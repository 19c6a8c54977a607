"""Planted files, hostile servers and leaked keys (issue 23): each case as a user meets it.

Planted links: nothing llmbatch writes may follow a link it did not make; a link where
one of its files belongs is an error naming the path, and the link's target is untouched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from llmbatch.cli.app import app

from .cliutil import first_error_line, prompts, run_cli, start_mock
from .conftest import ThreadedMock, read_results

pytestmark = pytest.mark.timeout(120)

SECRET = b"precious user data\n"


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(SECRET)
    return victim


def _drop_record(out: Path, rid: str) -> None:
    """Remove ``rid``'s line from results.jsonl, so the next run answers it again."""
    kept = [r for r in read_results(out) if r["custom_id"] != rid]
    (out / "results.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in kept))


def _run(runner: CliRunner, tmp_path: Path, mock: ThreadedMock, *extra: str) -> Any:
    out = str(tmp_path / "out")
    args = ["-p", "vllm", "--base-url", mock.url, "--model", "m", "-o", out, *extra]
    return run_cli(runner, str(prompts(tmp_path)), *args)


def _plant(out: Path, name: str, target: Path) -> None:
    """Replace the run directory's ``name`` by a symbolic link to ``target``."""
    (out / name).unlink()
    (out / name).symlink_to(target)


@pytest.mark.parametrize("itl_s", [0.0, 0.06], ids=["within-one-tick", "streamed"])
def test_a_link_planted_as_an_answer_file_is_never_written_through(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock], itl_s: float
) -> None:
    # A short answer is written whole at once (it was opened O_TRUNC, following links);
    # a longer one streams into .partial and is renamed: neither may touch the target.
    mock = start_mock(mocks, itl_s=itl_s)
    assert _run(runner, tmp_path, mock).exit_code == 0
    out, victim = tmp_path / "out", _victim(tmp_path)
    _drop_record(out, "3")
    _plant(out, "text/3.txt", victim)
    res = _run(runner, tmp_path, mock)
    assert victim.read_bytes() == SECRET
    assert res.exit_code == 3, res.output
    # Met at a periodic flush (the run stops) or at the last one (the same message).
    assert f"{out}/text/3.txt is a symbolic link, not a file llmbatch made" in res.output
    assert (out / "text" / "3.txt").is_symlink()  # left for the user to look at
    assert "3" not in {r["custom_id"] for r in read_results(out)}  # it runs again later


@pytest.mark.parametrize("name", [".lock", "results.jsonl", "run.json", "summary.json"])
def test_a_link_planted_as_a_run_file_is_refused_before_anything_is_written(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock], name: str
) -> None:
    mock = start_mock(mocks)
    assert _run(runner, tmp_path, mock).exit_code == 0
    out, victim = tmp_path / "out", _victim(tmp_path)
    _plant(out, name, victim)
    requests = mock.server.stats.requests
    res = _run(runner, tmp_path, mock)
    assert res.exit_code == 2, res.output
    assert victim.read_bytes() == SECRET  # not truncated, not written (the lock: no pid)
    line = first_error_line(res.output)
    assert f"{out}/{name} is a symbolic link, not a file llmbatch made" in line
    assert mock.server.stats.requests == requests


def test_a_dangling_lock_link_creates_nothing(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").symlink_to(tmp_path / "created-by-the-link")
    res = run_cli(runner, str(prompts(tmp_path)), "-o", str(out))
    assert res.exit_code == 2, res.output
    assert f"{out}/.lock is a symbolic link" in first_error_line(res.output)
    assert not (tmp_path / "created-by-the-link").exists()


def test_a_hard_link_as_the_lock_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = _victim(tmp_path)
    os.link(victim, out / ".lock")
    res = run_cli(runner, str(prompts(tmp_path)), "-o", str(out))
    assert res.exit_code == 2, res.output
    assert f"{out}/.lock is a hard link to another file" in first_error_line(res.output)
    assert victim.read_bytes() == SECRET


@pytest.mark.parametrize("folder", ["text", "text/failed"])
def test_a_linked_text_folder_is_refused(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock], folder: str
) -> None:
    mock = start_mock(mocks)
    assert _run(runner, tmp_path, mock).exit_code == 0
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _drop_record(out, "0")
    (out / folder).rename(tmp_path / "moved")
    (out / folder).symlink_to(elsewhere, target_is_directory=True)
    res = _run(runner, tmp_path, mock, "--keep-partial")
    assert res.exit_code == 2, res.output
    assert f"{out}/{folder} is a symbolic link" in first_error_line(res.output)
    assert list(elsewhere.iterdir()) == []


def test_a_record_cannot_make_export_read_outside_its_run_directory(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock]
) -> None:
    mock = start_mock(mocks, faults={"400": 1.0})
    out = tmp_path / "out"
    res = run_cli(
        runner, str(prompts(tmp_path, 1)), "-p", "vllm", "--base-url", mock.url, "-o", str(out)
    )
    assert res.exit_code == 1, res.output
    victim = _victim(tmp_path)
    (rec,) = read_results(out)
    rec["llmbatch"]["text_file"] = str(victim)  # a planted record naming another file
    (out / "results.jsonl").write_bytes(orjson.dumps(rec) + b"\n")
    res = runner.invoke(app, ["export", str(out), "-f", "csv"])
    assert res.exit_code == 0, res.output
    assert "precious" not in res.output
