"""Whole answers on hand-written streams of every shape (tests/stream_fixtures.py).

The same check as the corpus (tests/replay_checks.py: body = the official SDK's
object, text files = answer and reasoning), with every client and both write modes, so
the suite covers each shape without the recordings; then what the SDK says nothing of:
reasoning reaching the disk while it streams, the metrics of a reasoning answer, and the
errors of a stream cut before its end marker.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

import llmbatch

from .conftest import ADAPTERS, read_results
from .replay import MODES, ReplayServer, replay_prompt
from .replay_checks import ReplayRuns
from .sdk_oracle import ORACLES
from .stream_fixtures import FIXTURES, anthropic_stream, chat_stream

PROFILES = {"openai": "openai", "anthropic": "anthropic"}
RUNS = {
    kind: ReplayRuns([f for f in FIXTURES if f.kind == kind], profile, ORACLES[kind], kind)
    for kind, profile in PROFILES.items()
}
CASES = [pytest.param(f.kind, f.name, id=f.name) for f in FIXTURES]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("client", ADAPTERS)
@pytest.mark.parametrize(("kind", "name"), CASES)
def test_fixture_assembles_as_the_sdk_does(kind: str, name: str, client: str, mode: str) -> None:
    RUNS[kind].check(name, client, mode)


def test_what_the_fixtures_come_out_as() -> None:
    """A few fields spelled out, so a reader sees what "whole" means without the SDK."""
    two = RUNS["openai"].record("fx-oai-two-choices", "aiohttp", "events")
    body = two["response"]["body"]
    assert [c["message"]["content"] for c in body["choices"]] == ["Hello", "Bonjour"]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length"]
    assert body["created"] == 0 and body["service_tier"] == "default"
    assert two["texts"] == ("Hello", None)  # the text file holds choice 0 alone

    refusal = RUNS["openai"].record("fx-oai-refusal", "aiohttp", "events")["response"]["body"]
    message = refusal["choices"][0]["message"]
    assert message["content"] is None and message["refusal"] == "I can't help."
    assert [t["token"] for t in refusal["choices"][0]["logprobs"]["refusal"]] == [
        "I",
        " can't",
        " help.",
    ]

    routed = RUNS["openai"].record("fx-oai-openrouter", "aiohttp", "random")
    message = routed["response"]["body"]["choices"][0]["message"]
    assert message["role"] == "assistant"  # sent in every delta, kept once
    assert message["reasoning_details"] == [
        {
            "type": "reasoning.text",
            "text": "Thinking.",
            "format": "fmt-v1",
            "index": 0,
            "signature": "sig==",
        }
    ]
    assert [a["url_citation"]["url"] for a in message["annotations"]] == [
        "https://a.example",
        "https://b.example",
    ]
    assert routed["response"]["body"]["provider"] == "Acme"
    assert routed["texts"] == ("See [1].", "Thinking.")

    mistral = RUNS["openai"].record("fx-mistral-parts", "aiohttp", "events")
    assert mistral["response"]["body"]["choices"][0]["message"]["content"] == [
        {"type": "thinking", "thinking": [{"type": "text", "text": "Add them."}]},
        {"type": "text", "text": "4."},
    ]
    assert mistral["texts"] == ("4.", "Add them.")

    tool = RUNS["anthropic"].record("fx-ant-thinking-tool", "aiohttp", "events")
    content = tool["response"]["body"]["content"]
    assert [b["type"] for b in content] == ["thinking", "text", "tool_use"]
    assert content[0]["signature"] == "EqQBCkYIBx=="
    assert content[2]["input"] == {"city": "Oslo", "days": [1, 2]}
    assert tool["response"]["body"]["usage"]["cache_read_input_tokens"] == 3
    assert tool["llmbatch"]["metrics"]["reasoning_tokens"] == 6  # output_tokens_details

    only = RUNS["anthropic"].record("fx-ant-tool-only", "aiohttp", "events")
    assert [b["type"] for b in only["response"]["body"]["content"]] == ["tool_use"]
    assert only["response"]["body"]["usage"]["input_tokens"] == 25


# -- reasoning on disk while it streams ------------------------------------------------------


def _reasoning_then_answer(kind: str) -> tuple[list[bytes], list[bytes]]:
    """(reasoning events, answer events and the end) of a stream in ``kind``'s format."""
    if kind == "openai":
        head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}

        def ev(delta: dict[str, Any], **extra: Any) -> bytes:
            chunk = {**head, "choices": [{"index": 0, "delta": delta, **extra}]}
            return chat_stream([chunk], done=False)

        usage = {
            "prompt_tokens": 3,
            "completion_tokens": 9,
            "total_tokens": 12,
            "completion_tokens_details": {"reasoning_tokens": 7},
        }
        first = [
            ev({"role": "assistant", "reasoning_content": "Hmm, "}),
            ev({"reasoning_content": "two."}),
        ]
        rest = [
            ev({"content": "Two"}),
            ev({}, finish_reason="stop"),
            chat_stream([{**head, "choices": [], "usage": usage}]),
        ]
        return first, rest
    msg = {
        "id": "msg",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }

    def start(i: int, kind: str) -> dict[str, Any]:
        block = {"type": kind, kind: ""}
        return {"type": "content_block_start", "index": i, "content_block": block}

    def delta(i: int, kind: str, text: str) -> dict[str, Any]:
        d = {"type": f"{kind}_delta", kind: text}
        return {"type": "content_block_delta", "index": i, "delta": d}

    first = [
        anthropic_stream([{"type": "message_start", "message": msg}]),
        anthropic_stream([start(0, "thinking"), delta(0, "thinking", "Hmm, ")]),
        anthropic_stream([delta(0, "thinking", "two.")]),
    ]
    rest = [
        anthropic_stream(
            [
                {"type": "content_block_stop", "index": 0},
                start(1, "text"),
                delta(1, "text", "Two"),
                {"type": "content_block_stop", "index": 1},
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": 9, "output_tokens_details": {"thinking_tokens": 7}},
                },
                {"type": "message_stop"},
            ]
        )
    ]
    return first, rest


def _live_reasoning(run: Path, layout: str) -> tuple[str, str]:
    """(reasoning, answer) a reader of the run directory sees now, mid-stream."""
    if layout == "files":
        texts = []
        for name in ("q.reasoning.partial", "q.partial"):
            f = run / "text" / name
            texts.append(f.read_text() if f.exists() else "")
        return texts[0], texts[1]
    texts = []
    for name in ("reasoning.partial.log", "text.partial.log"):
        f = run / name
        raw = f.read_bytes() if f.exists() else b""
        out, pos = [], 0
        while pos < len(raw):
            nl = raw.index(b"\n", pos)
            head = orjson.loads(raw[pos:nl])
            n = head.get("bytes")
            if n is None:
                pos = nl + 1
                continue
            out.append(raw[nl + 1 : nl + 1 + n].decode())
            pos = nl + 2 + n
        texts.append("".join(out))
    return texts[0], texts[1]


@pytest.mark.parametrize("layout", ["files", "log"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_reasoning_reaches_the_disk_while_it_streams(
    tmp_path: Path, kind: str, layout: str, flushed: asyncio.Queue[None]
) -> None:
    """The reasoning grows in its own file before any answer comes; the answer's file
    holds the answer alone; the metrics tell the first token from the first answer token."""
    first, rest = _reasoning_then_answer(kind)
    answer_may_come = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for event in first:
            await resp.write(event)
        await answer_may_come.wait()  # until the test has seen the reasoning on disk
        for event in rest:
            await resp.write(event)
        return resp

    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    run_dir = tmp_path / "run"
    try:
        async with llmbatch.Client(
            PROFILES[kind],
            base_url=f"http://127.0.0.1:{port}/v1",
            model="m",
            api_key="sk-test-answers",
        ) as llm:
            batch = asyncio.ensure_future(
                llm.batch([{"id": "q", "prompt": "2?"}], run_dir, text_layout=layout).wait()
            )
            seen: tuple[str, str] = ("", "")
            while seen[0] != "Hmm, two.":
                tick = asyncio.ensure_future(flushed.get())
                await asyncio.wait([tick, batch], return_when=asyncio.FIRST_COMPLETED)
                assert not batch.done()
                seen = _live_reasoning(run_dir, layout)
                assert "Hmm, two.".startswith(seen[0]) and seen[1] == ""
            answer_may_come.set()
            await batch
    finally:
        await runner.cleanup()
    (rec,) = read_results(run_dir)
    lb = rec["llmbatch"]
    if layout == "files":
        assert (run_dir / lb["text_file"]).read_text() == "Two"
        assert lb["reasoning_file"] == "text/q.reasoning.txt"
        assert (run_dir / lb["reasoning_file"]).read_text() == "Hmm, two."
        assert not list((run_dir / "text").glob("*.partial"))
    else:
        log = (run_dir / "reasoning.log").read_bytes()
        start, n = lb["reasoning_offset"], lb["reasoning_bytes"]
        assert log[start : start + n] == b"Hmm, two."
        assert b"Hmm" not in (run_dir / "text.log").read_bytes()
    m = lb["metrics"]
    assert m["ttft_s"] < m["answer_ttft_s"] <= m["e2el_s"]
    assert m["reasoning_tokens"] == 7 and not m["reasoning_tokens_estimated"]
    assert m["output_tokens"] == 9
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    assert summary["tokens"]["reasoning"] == 7
    assert summary["tokens"]["requests_with_reasoning"] == 1
    assert summary["latency_s"]["answer_ttft"]["p50"] is not None


# -- a stream cut before its end marker ----------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "stream", "marker"),
    [
        ("openai", next(f for f in FIXTURES if f.name == "fx-oai-logprobs").data, "[DONE]"),
        (
            "anthropic",
            next(f for f in FIXTURES if f.name == "fx-ant-thinking-tool").data,
            "message_stop",
        ),
    ],
)
@pytest.mark.parametrize("client", ADAPTERS)
async def test_a_cut_stream_names_its_own_end_marker(
    tmp_path: Path, profile: str, stream: bytes, marker: str, client: str
) -> None:
    end = b"data: [DONE]" if marker == "[DONE]" else b"event: message_stop"
    cut = stream[: stream.rindex(end)]
    fixture = dataclasses.replace(next(f for f in FIXTURES if f.data == stream), data=cut)
    async with ReplayServer([fixture]) as server:
        async with llmbatch.Client(
            profile,
            base_url=f"{server.origin}/v1",
            model="m",
            api_key="sk-test-answers",
            client=client,
            retry={"max_attempts": 1},
        ) as llm:
            result = await llm.complete(replay_prompt(fixture.name))
    assert not result.ok and result.error is not None
    assert result.error.code == "truncated_stream"
    assert f"without its end marker ({marker})" in result.error.message
    assert [a["status"] for a in result.output_line["llmbatch"]["attempts"]] == [200]
