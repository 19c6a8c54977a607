"""Planted files, hostile servers and leaked keys (issue 23): each case as a user meets it.

Planted links: nothing llmbatch writes may follow a link it did not make; a link where
one of its files belongs is an error naming the path, and the link's target is untouched.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from llmbatch.cli.app import app

from .cliutil import first_error_line, prompts, run_cli, start_mock
from .conftest import ADAPTERS, OnThread, ThreadedMock, read_results
from .rawhttp import Action, Close, Drip, RawServer, Send, openai_events, response_head

pytestmark = pytest.mark.timeout(120)

SECRET = b"precious user data\n"
KEY = "sk-proj-Zq8Xv3Lr9Tb2Nw7Kd4Hs6Jf1Gc5Mp0Qa"


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
    if (out / folder).exists():  # text/failed/ comes only with a kept partial text
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


# -- configuration: every value checked, nothing silently ignored ---------------------------
@pytest.mark.parametrize(
    ("toml", "args", "env", "message"),
    [
        # A bad file value is an error even when a flag overrides it.
        ('[run]\nconcurrency = "abc"\n', ["-j", "4"], {}, "run.concurrency must be an integer"),
        ("[run]\ngrace_s = -1\n", [], {}, "run.grace_s must be >= 0, got -1"),
        ('[run]\nprovider = "nope"\n', ["-p", "mock"], {}, "run.provider: unknown provider"),
        ("", ["-j", "4"], {"LLMBATCH_CONCURRENCY": "abc"}, "LLMBATCH_CONCURRENCY must be an int"),
        ("", [], {"LLMBATCH_CLIENT": "curl"}, "LLMBATCH_CLIENT: unknown client 'curl'"),
        ("", [], {"LLMBATCH_LOOP": "bogus"}, "LLMBATCH_LOOP must be one of auto, asyncio, uvl"),
        (
            "[providers.x]\nembedded_mock = true\n",
            ["-p", "x"],
            {},
            "providers.x.embedded_mock is llmbatch's own",
        ),
    ],
)
def test_bad_values_are_errors_wherever_they_come_from(
    runner: CliRunner,
    tmp_path: Path,
    toml: str,
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    (tmp_path / "config.toml").write_text(toml)
    res = runner.invoke(app, ["run", str(prompts(tmp_path)), *args], env=env)
    assert res.exit_code == 2, res.output
    assert message in first_error_line(res.output)
    assert not (tmp_path / "outputs").exists()  # nothing was sent, nothing written


def test_a_misspelt_variable_is_warned_about(runner: CliRunner, tmp_path: Path) -> None:
    env = {"LLMBATCH_CONCURENCY": "4", "LLMBATCH_MOCK_TOKENS": KEY}
    res = runner.invoke(app, ["run", str(prompts(tmp_path)), "--no-progress"], env=env)
    assert res.exit_code == 0, res.output
    warnings = [x for x in res.output.splitlines() if x.startswith("llmbatch: warning:")]
    assert warnings == [
        "llmbatch: warning: LLMBATCH_CONCURENCY is not a variable llmbatch reads (did you "
        "mean LLMBATCH_CONCURRENCY?); it is ignored",
        "llmbatch: warning: LLMBATCH_MOCK_TOKENS is not a variable llmbatch reads; it is ignored",
    ]
    assert KEY not in res.output  # names only, never values


def test_the_library_warns_about_a_misspelt_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import llmbatch

    monkeypatch.setenv("LLMBATCH_PROVDER", "openai")
    with pytest.warns(llmbatch.LLMBatchWarning, match="did you mean LLMBATCH_PROVIDER"):
        llmbatch.Client.from_config(None)


def test_a_base_url_given_for_the_mock_is_used(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock]
) -> None:
    mock = start_mock(mocks)
    res = run_cli(runner, str(prompts(tmp_path)), "-p", "mock", "--base-url", mock.url)
    assert res.exit_code == 0, res.output
    assert mock.server.stats.requests == 5  # not the embedded mock


@pytest.mark.parametrize("value", [KEY, "gsk_8Kd93JfLq0Zx7VbN2mWc4RtY6uHp1sAe"])
def test_a_key_pasted_as_the_variable_name_is_refused_unseen(
    runner: CliRunner, tmp_path: Path, value: str
) -> None:
    (tmp_path / "config.toml").write_text(
        f'[providers.mine]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "{value}"\n'
    )
    for args in (["run", str(prompts(tmp_path)), "-p", "mine"], ["providers"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "config.toml: providers.mine.api_key_env" in first_error_line(res.output)
        assert value[4:12] not in res.output
    (tmp_path / "config.toml").unlink()
    res = runner.invoke(app, ["run", str(prompts(tmp_path)), "--api-key-env", value])
    assert res.exit_code == 2 and "--api-key-env looks like an API key" in res.output
    assert value[4:12] not in res.output


# -- hostile servers: redirects and echoed keys ------------------------------------------------
def start_raw(servers: list[Any], *scripts: list[Action]) -> OnThread:
    """A scripted RawServer on a thread of its own (closed with the ``mocks`` fixture)."""
    raw = OnThread(lambda: RawServer.scripted(*scripts).start())
    servers.append(raw)
    return raw


def _answer(tokens: list[str], *extra: tuple[str, str]) -> list[Action]:
    events = b"".join(openai_events(tokens))
    head = response_head(headers=[("Content-Type", "text/event-stream"), *extra])
    return [Send(head + events), Close()]


def _status(status: str, body: bytes = b"", *extra: tuple[str, str]) -> list[Action]:
    head = response_head(status, [("Content-Type", "application/json"), *extra])
    return [
        Send(
            head.replace(b"\r\n\r\n", f"\r\nContent-Length: {len(body)}\r\n\r\n".encode(), 1) + body
        )
    ]


def _leaks(text: str | bytes, secret: str = KEY) -> list[str]:
    """Every piece of ``secret`` of 8 or more characters found in ``text``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [secret[i : i + 8] for i in range(len(secret) - 7) if secret[i : i + 8] in text]


async def _batch(
    tmp_path: Path, url: str, adapter: str, provider: str = "anthropic", **options: Any
) -> dict[str, Any]:
    import llmbatch

    out = tmp_path / f"out-{adapter}"
    async with llmbatch.Client(
        provider, base_url=url, model="m", api_key=KEY, client=adapter, concurrency=1, **options
    ) as llm:
        await llm.batch([{"id": "q", "prompt": "hello"}], out).wait()
    (rec,) = read_results(out)
    assert not _leaks((out / "results.jsonl").read_bytes())
    return rec


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    "status", ["307 Temporary Redirect", "308 Permanent Redirect", "302 Found"]
)
async def test_a_post_is_never_redirected(tmp_path: Path, adapter: str, status: str) -> None:
    other = await RawServer.scripted(_answer(["elsewhere"])).start()
    target = f"http://127.0.0.1:{other.port}/v1/messages"
    first = await RawServer.scripted(_status(status, b"", ("Location", target))).start()
    try:
        rec = await _batch(tmp_path, first.url, adapter)
        assert rec["error"]["code"] == "redirected"
        assert f"redirect to {target} not followed" in rec["error"]["message"]
        assert rec["response"]["status_code"] == int(status[:3])
        assert other.requests == []  # neither the key nor the prompt went there
        assert len(first.requests) == 1
        # Same origin, another path: not followed either, by every client alike.
        again = await RawServer.scripted(_status(status, b"", ("Location", "/v1/other"))).start()
        try:
            rec = await _batch(tmp_path / "same", again.url, adapter)
            assert rec["error"]["code"] == "redirected" and "/v1/other" in rec["error"]["message"]
            assert [r.target for r in again.requests] == ["/v1/messages"]
        finally:
            await again.close()
    finally:
        await first.close()
        await other.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("cut", [300, 500, 2000])
async def test_a_key_echoed_in_an_error_body_never_leaks_a_piece(
    tmp_path: Path, adapter: str, cut: int
) -> None:
    # The key straddles where a message used to be cut (300 characters of the body, 500 of
    # the attempt's message, 2000 of the body kept): no piece of it may survive anywhere.
    body = orjson.dumps({"error": {"message": "x" * (cut - 20) + KEY + " was rejected"}})
    server = await RawServer.scripted(_status("400 Bad Request", body)).start()
    try:
        rec = await _batch(tmp_path, server.url, adapter, provider="vllm")
        assert rec["error"]["code"] == "bad_request"
        assert ("[REDACTED]" in rec["error"]["message"]) == (cut == 300)  # else cut off
    finally:
        await server.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_a_key_echoed_as_the_request_id_is_not_stored(tmp_path: Path, adapter: str) -> None:
    ok = await RawServer.scripted(_answer(["hi"], ("x-request-id", f"req-{KEY}"))).start()
    bad = await RawServer.scripted(_status("500 Oops", b"{}", ("x-request-id", KEY))).start()
    try:
        rec = await _batch(tmp_path, ok.url, adapter, provider="vllm")
        assert rec["error"] is None and rec["response"]["request_id"] == "req-[REDACTED]"
        no_wait = {"max_attempts": 2, "backoff_base_s": 0.0, "backoff_max_s": 0.0}
        rec = await _batch(tmp_path / "bad", bad.url, adapter, provider="vllm", retry=no_wait)
        assert {a["request_id"] for a in rec["llmbatch"]["attempts"]} == {"[REDACTED]"}
    finally:
        await ok.close()
        await bad.close()


def test_a_key_echoed_in_a_fatal_error_stays_off_the_terminal(
    runner: CliRunner, tmp_path: Path, mocks: list[Any]
) -> None:
    # The key straddles the 300th character of the body, where the message used to be cut.
    body = orjson.dumps({"error": {"message": "y" * 241 + f"Incorrect API key provided: {KEY}"}})
    raw = start_raw(mocks, _status("401 Unauthorized", body, ("x-request-id", KEY)))
    res = runner.invoke(
        app,
        [
            "run",
            str(prompts(tmp_path)),
            "-p",
            "vllm",
            "--base-url",
            raw.url,
            "--api-key-env",
            "MY_KEY",
            "--no-progress",
            "-o",
            str(tmp_path / "out"),
        ],
        env={"MY_KEY": KEY},
    )
    assert res.exit_code == 3, res.output
    assert "run aborted: AuthError: HTTP 401" in res.output
    assert not _leaks(res.output)
    for f in (tmp_path / "out").rglob("*"):
        assert f.is_dir() or not _leaks(f.read_bytes()), f


def test_credentials_in_the_base_url_are_never_printed_or_stored(
    runner: CliRunner, tmp_path: Path
) -> None:
    secret = "Pa55w0rd-Very-Secret"
    url = f"http://alice:{secret}@127.0.0.1:9/v1"  # nothing listens on port 9
    (tmp_path / "config.toml").write_text("[retry]\nmax_attempts = 1\n")
    out = tmp_path / "out"
    res = run_cli(runner, str(prompts(tmp_path)), "-p", "vllm", "--base-url", url, "-o", str(out))
    assert res.exit_code == 3, res.output
    assert "cannot connect to http://[REDACTED]@127.0.0.1:9/v1" in res.output
    assert secret not in res.output and "alice" not in res.output
    meta = orjson.loads((out / "run.json").read_bytes())
    assert meta["base_url"] == "http://127.0.0.1:9/v1"
    for f in out.rglob("*"):
        assert f.is_dir() or secret.encode() not in f.read_bytes(), f
    bad_port = url.replace(":9/", ":99999/")
    res = runner.invoke(app, ["run", str(prompts(tmp_path)), "--base-url", bad_port])
    assert res.exit_code == 2 and secret not in res.output  # a bad URL is shown without them


# -- the library: one Client, one event loop ------------------------------------------------------
def test_a_client_used_from_a_second_event_loop_raises_and_records_nothing(
    tmp_path: Path,
) -> None:
    import llmbatch

    client = llmbatch.Client("mock", concurrency=2)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        first.run_until_complete(client.start())
        assert first.run_until_complete(client.complete("on its own loop")).ok
        out = tmp_path / "out"
        for use in (
            lambda: client.complete("from another loop"),
            lambda: client.batch(["a", "b"], out).wait(),
            lambda: _drain(client.stream("from another loop")),
        ):
            with pytest.raises(llmbatch.WrongEventLoop, match="belongs to the event loop"):
                second.run_until_complete(use())
        assert not out.exists()  # no run directory, no failed records for a resume to skip
        assert first.run_until_complete(client.complete("still fine")).ok
    finally:
        first.run_until_complete(client.aclose())
        first.close()
        second.close()


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


# -- bounded resources: an endless answer ends at a documented bound -------------------------------
def _event(text: str) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    delta = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    return b"data: " + orjson.dumps({**chunk, "choices": [delta]}) + b"\n\n"


_ENDLESS_HEAD = Send(
    response_head(headers=[("Content-Type", "text/event-stream"), ("Connection", "close")])
)


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    ("drip", "prompt", "bound"),
    [
        (_event("tok "), {}, "max_answer_bytes"),  # an answer that never ends
        (b"data: " + b"x" * 512, {}, "max_event_bytes"),  # one line that never ends
        (_event("long token " * 20), {"max_tokens": 2}, "max_tokens"),  # max_tokens ignored
    ],
    ids=["endless-answer", "endless-line", "max-tokens-ignored"],
)
async def test_an_endless_answer_ends_at_its_bound(
    tmp_path: Path, adapter: str, drip: bytes, prompt: dict[str, Any], bound: str
) -> None:
    import llmbatch

    server = await RawServer.scripted([_ENDLESS_HEAD, Drip(drip, 0.0005)]).start()
    out = tmp_path / "out"
    # Small bounds so the test is quick; the one under test is the lowest.
    answer_bytes = 8192 if bound == "max_answer_bytes" else 256 * 1024
    event_bytes = 8192 if bound == "max_event_bytes" else 256 * 1024
    try:
        async with llmbatch.Client(
            "vllm",
            base_url=server.url,
            client=adapter,
            max_answer_bytes=answer_bytes,
            max_event_bytes=event_bytes,
        ) as llm:
            await llm.batch([{"id": "q", "prompt": "go on", **prompt}], out).wait()
        (rec,) = read_results(out)
        assert rec["error"]["code"] == "answer_too_large"
        assert rec["error"]["message"].startswith(f"{bound}: ")
        assert rec["error"]["message"].endswith("ended by the client")
        assert len(rec["llmbatch"]["attempts"]) == 1  # not retried: it would do the same
        await server.wait_for(lambda s: s.closed_by_client == 1)  # the stream was dropped
    finally:
        await server.close()


def test_the_event_bound_costs_nothing_for_whole_events() -> None:
    from llmbatch.errors import AnswerTooLarge
    from llmbatch.providers.sse import SSEDecoder

    dec = SSEDecoder(max_event_bytes=64)
    many = b"".join(b"data: %d\n\n" % i for i in range(1000))  # 10 KB of small events
    assert len(dec.feed_data(many)) == 1000
    for piece in (b"data: ", b"a" * 30, b"\n", b"data: ", b"b" * 20):  # one event: 56 bytes
        dec.feed_data(piece)
    with pytest.raises(AnswerTooLarge, match="max_event_bytes"):
        dec.feed_data(b"c" * 10)


# -- resume: changed prompts and a last line still being written -------------------------------
def test_a_changed_prompt_under_a_done_id_is_reported_and_rerun_on_request(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock]
) -> None:
    mock = start_mock(mocks)
    p = prompts(tmp_path)
    out = tmp_path / "out"
    args = ["-p", "vllm", "--base-url", mock.url, "--model", "m", "-o", str(out)]
    assert run_cli(runner, str(p), *args).exit_code == 0
    before = {r["custom_id"]: r for r in read_results(out)}
    assert all(len(r["llmbatch"]["request_hash"]) == 16 for r in before.values())
    rows = [{"id": i, "prompt": f"q{i}" if i < 2 else f"another question {i}"} for i in range(5)]
    p.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    res = run_cli(runner, str(p), *args)
    assert res.exit_code == 0, res.output
    assert "5 already done" in res.output
    assert (
        "llmbatch: warning: 3 done prompts changed since their answer was recorded (same id, "
        "another request: 2, 3, 4); the old answers are kept: --rerun-changed runs them again"
    ) in res.output
    assert mock.server.stats.requests == 5
    res = run_cli(runner, str(p), *args, "--rerun-changed")
    assert res.exit_code == 0, res.output
    assert mock.server.stats.requests == 8  # the three changed ones, nothing else
    after = {r["custom_id"]: r for r in read_results(out)}
    assert len(read_results(out)) == 5  # one record per id: the old ones were dropped
    assert after["0"] == before["0"] and after["4"] != before["4"]
    assert after["4"]["llmbatch"]["request_hash"] != before["4"]["llmbatch"]["request_hash"]
    text = (out / "text" / "4.txt").read_text()
    assert text == after["4"]["response"]["body"]["choices"][0]["message"]["content"]
    res = run_cli(runner, str(p), *args)
    assert res.exit_code == 0 and "--rerun-changed runs" not in res.output


def test_a_last_line_still_being_written_is_left_for_the_next_run(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock]
) -> None:
    mock = start_mock(mocks)
    p = prompts(tmp_path, 3)
    with open(p, "ab") as fh:
        fh.write(b'{"id": "late", "prompt": "half wr')  # a producer is still appending
    out = tmp_path / "out"
    args = ["-p", "vllm", "--base-url", mock.url, "--model", "m", "-o", str(out)]
    res = run_cli(runner, str(p), *args)
    assert res.exit_code == 0, res.output
    assert (
        f"llmbatch: warning: {p}:4: the last line has no newline and is not complete JSON "
        "(the file is still being written?): left for the next run"
    ) in res.output
    assert sorted(r["custom_id"] for r in read_results(out)) == ["0", "1", "2"]
    with open(p, "ab") as fh:
        fh.write(b'itten"}\n')
    res = run_cli(runner, str(p), *args)
    assert res.exit_code == 0, res.output
    assert sorted(r["custom_id"] for r in read_results(out)) == ["0", "1", "2", "late"]
    report = runner.invoke(app, ["report", str(out), "--json", "--recompute"])
    assert orjson.loads(report.output)["requests"]["run_total_failed"] == 0
    # A complete last line without its newline is a prompt like any other.
    with open(p, "ab") as fh:
        fh.write(b'{"id": "no-newline", "prompt": "fine"}')
    assert run_cli(runner, str(p), *args).exit_code == 0
    assert "no-newline" in {r["custom_id"] for r in read_results(out)}


# -- proxies: none is supported, on any client, and the user is told ------------------------------
@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_no_client_goes_through_a_proxy(
    tmp_path: Path, adapter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await RawServer.scripted(_answer(["from the proxy"])).start()
    target = await RawServer.scripted(_answer(["direct"])).start()
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
    try:
        rec = await _batch(tmp_path, target.url, adapter, provider="vllm")
        assert rec["response"]["body"]["choices"][0]["message"]["content"] == "direct"
        assert proxy.requests == [] and len(target.requests) == 1
    finally:
        await proxy.close()
        await target.close()


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("https://api.openai.com/v1", {"HTTPS_PROXY": "http://p:3128"}, "HTTPS_PROXY is set"),
        ("https://api.openai.com/v1", {"https_proxy": "http://p:3128"}, "https_proxy is set"),
        ("http://gpu-box:8000/v1", {"ALL_PROXY": "socks5://p:1080"}, "ALL_PROXY is set"),
        ("https://api.openai.com/v1", {"HTTP_PROXY": "http://p:3128"}, None),  # other scheme
        ("https://api.openai.com/v1", {"HTTPS_PROXY": "x", "NO_PROXY": ".openai.com"}, None),
        ("https://api.openai.com/v1", {"HTTPS_PROXY": "x", "no_proxy": "*"}, None),
        ("http://127.0.0.1:8000/v1", {"HTTP_PROXY": "http://p:3128"}, None),  # loopback
        ("http://localhost:8000/v1", {"HTTP_PROXY": "http://p:3128"}, None),
    ],
)
def test_a_proxy_variable_that_applies_is_named(
    url: str, env: dict[str, str], expected: str | None
) -> None:
    from llmbatch.http.proxy import ignored_proxy

    notice = ignored_proxy(url, env)
    if expected is None:
        assert notice is None
    else:
        assert notice is not None and notice.startswith(expected)
        assert "supports no proxy: it connects to" in notice


async def test_the_library_warns_when_a_proxy_would_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import llmbatch

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    client = llmbatch.Client("openai", api_key=KEY)
    with pytest.warns(llmbatch.ProxyIgnoredWarning, match="HTTPS_PROXY is set"):
        await client.start()
    await client.aclose()


async def test_the_library_reruns_changed_prompts_from_a_list(tmp_path: Path) -> None:
    import llmbatch

    out = tmp_path / "out"
    async with llmbatch.Client("mock", mock={"tokens": 4}) as llm:
        await llm.batch([{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"}], out).wait()
        batch = llm.batch([{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "TWO"}], out)
        end = await batch.wait()
        assert (end.changed, end.changed_ids) == (1, ("b",))
        changed = [{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "TWO"}]
        end = await llm.batch(changed, out, rerun_changed=True).wait()
        assert end.changed == 0 and end.metrics.succeeded == 1
        with pytest.raises(llmbatch.ConfigError, match="reads the prompts twice"):
            await llm.batch(iter(changed), out, rerun_changed=True).wait()
    assert [r["custom_id"] for r in read_results(out)] == ["a", "b"]


def test_the_ray_driver_leaves_changed_and_unfinished_prompts_as_one_process_does(
    tmp_path: Path,
) -> None:
    from llmbatch.errors import UnfinishedLine
    from llmbatch.ray.engine import _todo
    from llmbatch.rundir.identity import request_hash
    from llmbatch.rundir.reader import parse_item
    from llmbatch.rundir.results import ResumeIndex

    def rec(rid: str, prompt: str) -> Any:
        return parse_item({"id": rid, "prompt": prompt}, line_no=1, path="p")

    index = ResumeIndex()
    index.add("same", request_hash(rec("same", "one")))
    index.add("edited", request_hash(rec("edited", "two")))
    index.add("old", None)  # a record written before records kept a hash
    items = [
        rec("same", "one"),
        rec("edited", "TWO"),
        rec("old", "anything"),
        rec("new", "three"),
        UnfinishedLine("cut short", path="p", line_no=5),
    ]
    changed: list[str] = []
    assert [item.id for item in _todo(items, index, changed)] == ["new"]
    assert changed == ["edited"]
