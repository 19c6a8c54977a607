"""Anthropic Messages and legacy completions: literal stream grammars, request mapping,
contract runs over real sockets against the mock (faults included), endpoint routing of
a mixed OpenAI Batch file, and ``llmbatch providers``."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from typer.testing import CliRunner

from llmbatch.cli.app import app
from llmbatch.cli.job import execute_run
from llmbatch.config.model import ProviderConfig, RetryPolicy, RunConfig
from llmbatch.errors import MalformedResponse, ProviderError, ProviderOverloaded
from llmbatch.mockserver import MockConfig, MockServer, expected_text, start_mock_server
from llmbatch.providers import make_provider
from llmbatch.providers.anthropic import AnthropicProvider, MessagesAssembler
from llmbatch.providers.base import StreamAssembler
from llmbatch.providers.completions import CompletionsAssembler, CompletionsProvider
from llmbatch.providers.openai import ChatAssembler
from llmbatch.providers.sse import SSEDecoder
from llmbatch.records import PromptRecord

from .conftest import config_for, read_results, write_jsonl

TOKENS = 16  # the mock_server fixture's answer length

# -- literal stream fixtures -------------------------------------------------------------
ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":'
    b'"assistant","model":"claude-x","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hello"}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":", w\xc3\xb6rld"}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":3}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)

COMPLETIONS_STREAM = (
    b'data: {"id":"cmpl-1","object":"text_completion","created":7,"model":"m",'
    b'"choices":[{"index":0,"text":"Hello","logprobs":null,"finish_reason":null}]}\n\n'
    b'data: {"id":"cmpl-1","object":"text_completion","created":7,"model":"m",'
    b'"choices":[{"index":0,"text":" there","logprobs":null,"finish_reason":null}]}\n\n'
    b'data: {"id":"cmpl-1","object":"text_completion","created":7,"model":"m",'
    b'"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":"length"}]}\n\n'
    b'data: {"id":"cmpl-1","object":"text_completion","created":7,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}\n\n'
    b"data: [DONE]\n\n"
)

CHAT_STREAM = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


def feed(asm: StreamAssembler, stream: bytes, step: int = 7) -> str:
    """Feed ``stream`` in ``step``-byte pieces through an SSEDecoder; return the text."""
    dec = SSEDecoder()
    out = []
    for i in range(0, len(stream), step):
        for event in dec.feed(stream[i : i + step]):
            out.append(asm.on_event(event))
    return "".join(out)


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_anthropic_grammar(step: int) -> None:
    asm = MessagesAssembler()
    assert feed(asm, ANTHROPIC_STREAM, step) == "Hello, wörld"
    assert asm.finished
    assert asm.usage() == (25, 3)
    assert asm.body() == {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello, wörld"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 3},
    }


def test_anthropic_stream_without_message_stop_is_not_finished() -> None:
    asm = MessagesAssembler()
    cut = ANTHROPIC_STREAM.index(b"event: message_stop")
    assert feed(asm, ANTHROPIC_STREAM[:cut]) == "Hello, wörld"
    assert not asm.finished


@pytest.mark.parametrize(
    ("etype", "exc_type"),
    [("overloaded_error", ProviderOverloaded), ("api_error", ProviderError)],
)
def test_anthropic_error_event(etype: str, exc_type: type[ProviderError]) -> None:
    head = ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: content_block_stop")]
    err = (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"' + etype.encode() + b'","message":"busy"}}\n\n'
    )
    asm = MessagesAssembler()
    with pytest.raises(ProviderError) as info:
        feed(asm, head + err)
    assert type(info.value) is exc_type
    assert etype in str(info.value)


def test_anthropic_malformed_event() -> None:
    with pytest.raises(MalformedResponse):
        feed(MessagesAssembler(), b"event: content_block_delta\ndata: {nope\n\n")
    with pytest.raises(MalformedResponse):
        feed(
            MessagesAssembler(),
            b'event: content_block_delta\ndata: {"type":"content_block_delta"}\n\n',
        )


def test_completions_grammar() -> None:
    asm = CompletionsAssembler()
    assert feed(asm, COMPLETIONS_STREAM) == "Hello there"
    assert asm.finished
    assert asm.usage() == (4, 2)
    body = asm.body()
    assert body["object"] == "text_completion"
    assert body["choices"] == [
        {"index": 0, "text": "Hello there", "logprobs": None, "finish_reason": "length"}
    ]
    assert (body["id"], body["created"], body["model"]) == ("cmpl-1", 7, "m")


def test_completions_error_payload_and_missing_done() -> None:
    with pytest.raises(ProviderOverloaded):
        feed(
            CompletionsAssembler(), b'data: {"error":{"type":"overloaded_error","message":"x"}}\n\n'
        )
    asm = CompletionsAssembler()
    feed(asm, COMPLETIONS_STREAM[: COMPLETIONS_STREAM.index(b"data: [DONE]")])
    assert not asm.finished


# -- request mapping -----------------------------------------------------------------------
def record(body: dict[str, Any], endpoint: str | None = None) -> PromptRecord:
    return PromptRecord(id="r", line_no=1, shape="messages", body=body, endpoint=endpoint)


def test_anthropic_request_mapping() -> None:
    profile = ProviderConfig(
        name="a", kind="anthropic", model="claude-x", headers={"anthropic-version": "2024-01-01"}
    )
    prov = AnthropicProvider(profile, "sk-ant", "http://h/v1/")
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "More"}]},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "top_k": 5,
    }
    req = prov.build_request(record(body))
    assert req.url == "http://h/v1/messages"
    assert req.headers["x-api-key"] == "sk-ant"
    assert req.headers["anthropic-version"] == "2024-01-01"
    assert req.headers["content-type"] == "application/json"
    assert "authorization" not in req.headers
    sent = orjson.loads(req.body)
    assert sent == {
        "model": "claude-x",
        "system": "Be brief.",
        "messages": body["messages"][1:],
        "max_tokens": 1024,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "top_k": 5,
        "stream": True,
    }


@pytest.mark.parametrize(
    ("params", "line", "want"),
    [({}, {}, 1024), ({"max_tokens": 300}, {}, 300), ({"max_tokens": 300}, {"max_tokens": 7}, 7)],
)
def test_anthropic_max_tokens_precedence(
    params: dict[str, Any], line: dict[str, Any], want: int
) -> None:
    prov = AnthropicProvider(
        ProviderConfig(name="a", kind="anthropic", params=params), None, "http://h/v1"
    )
    body = {"messages": [{"role": "user", "content": "Hi"}], "model": "m", **line}
    sent = orjson.loads(prov.build_request(record(body)).body)
    assert sent["max_tokens"] == want
    assert sent["model"] == "m"
    assert "anthropic-version" in prov.build_request(record(body)).headers


def test_completions_request_prompt() -> None:
    prov = CompletionsProvider(ProviderConfig(name="c", model="base"), "k", "http://h/v1")
    req = prov.build_request(record({"prompt": "Once upon", "max_tokens": 5}, "/v1/completions"))
    sent = orjson.loads(req.body)
    assert req.url == "http://h/v1/completions"
    assert req.headers["authorization"] == "Bearer k"
    assert sent == {
        "prompt": "Once upon",
        "max_tokens": 5,
        "model": "base",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    sent = orjson.loads(prov.build_request(record({"messages": msgs})).body)
    assert sent["prompt"] == "S\n\nU" and "messages" not in sent


def test_routing_by_endpoint() -> None:
    prov = make_provider(ProviderConfig(name="v", model="m"), None, "http://h/v1")
    msgs = {"messages": [{"role": "user", "content": "Hi"}]}
    assert prov.build_request(record(msgs)).url == "http://h/v1/chat/completions"
    assert isinstance(prov.new_assembler(record(msgs)), ChatAssembler)
    assert prov.build_request(record({"prompt": "x"}, "/v1/completions")).url.endswith(
        "/v1/completions"
    )
    assert prov.build_request(record(msgs, "/v1/messages")).url.endswith("/v1/messages")
    assert isinstance(prov.new_assembler(record(msgs, "/v1/messages")), MessagesAssembler)
    assert isinstance(
        prov.new_assembler(record({"prompt": "x"}, "/v1/completions")), CompletionsAssembler
    )


# -- over real sockets ---------------------------------------------------------------------
def with_profile(cfg: RunConfig, **changes: Any) -> RunConfig:
    """``cfg`` with its provider profile changed, and quick retries."""
    return dataclasses.replace(
        cfg,
        provider=dataclasses.replace(cfg.provider, **changes),
        retry=RetryPolicy(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05),
    )


def anthropic_cfg(server: MockServer, tmp_path: Path, **headers: str) -> RunConfig:
    cfg = config_for(server, tmp_path, provider="anthropic", base_url=server.url, model="claude-x")
    return with_profile(cfg, headers={"anthropic-version": "2023-06-01", **headers})


@pytest.fixture
def anthropic_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


PROMPTS = [
    {"id": "a", "prompt": "Tell me about tides.", "system": "Be brief."},
    {"id": "b", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5},
    {"id": "c", "prompt": "Name a color.", "temperature": 0.1},
]


def user_only(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages the Anthropic mock answers from: everything but system."""
    if "prompt" in row:
        return [{"role": "user", "content": row["prompt"]}]
    return list(row["messages"])


@pytest.mark.usefixtures("anthropic_key")
async def test_anthropic_run_exact_text(tmp_path: Path, mock_server: MockServer) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    out = await execute_run(
        anthropic_cfg(mock_server, tmp_path), prompts, install_signal_handlers=False
    )
    assert (out.result.metrics.succeeded, out.result.metrics.failed) == (3, 0)
    by_id = {r["custom_id"]: r for r in read_results(out.run_dir)}
    for row in PROMPTS:
        n = min(TOKENS, row.get("max_tokens", TOKENS))
        want = expected_text(user_only(row), n)
        rec = by_id[row["id"]]
        body = rec["response"]["body"]
        assert body["type"] == "message" and body["model"] == "claude-x"
        assert body["content"] == [{"type": "text", "text": want}]
        assert body["stop_reason"] == ("max_tokens" if n < TOKENS else "end_turn")
        assert body["usage"]["output_tokens"] == n
        assert rec["llmbatch"]["metrics"]["output_tokens_estimated"] is False
        assert rec["response"]["request_id"].startswith("req_mock-")
        assert (out.run_dir / rec["llmbatch"]["text_file"]).read_text() == want


@pytest.mark.usefixtures("anthropic_key")
@pytest.mark.parametrize("fault", ["overloaded", "error_payload", "429", "503", "disconnect"])
async def test_anthropic_transient_faults_are_retried(
    tmp_path: Path, mock_server: MockServer, fault: str
) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:1])
    cfg = anthropic_cfg(
        mock_server, tmp_path, **{"x-mock-fault": fault, "x-mock-fault-attempts": "1"}
    )
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    assert out.result.metrics.succeeded == 1
    (rec,) = read_results(out.run_dir)
    attempts = rec["llmbatch"]["attempts"]
    assert len(attempts) == 2 and attempts[1]["status"] == 200
    if fault == "overloaded":
        assert attempts[0]["error"] == "provider_overloaded"
        assert "overloaded_error" in attempts[0]["message"]
    want = expected_text(user_only(PROMPTS[0]), TOKENS)
    assert rec["response"]["body"]["content"][0]["text"] == want


@pytest.mark.usefixtures("anthropic_key")
async def test_anthropic_401_aborts_the_run(tmp_path: Path, mock_server: MockServer) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    cfg = anthropic_cfg(mock_server, tmp_path, **{"x-mock-fault": "401"})
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    assert out.result.stop_reason == "aborted"
    assert "authentication_error" in (out.result.abort_message or "")
    assert "test-key" not in (out.result.abort_message or "")  # the mock echoed it
    assert read_results(out.run_dir) == []  # resumable: nothing recorded as done


async def test_completions_run_exact_text(tmp_path: Path, mock_server: MockServer) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    cfg = with_profile(config_for(mock_server, tmp_path), kind="openai-completions")
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    assert out.result.metrics.succeeded == 3
    by_id = {r["custom_id"]: r for r in read_results(out.run_dir)}
    prompt_text = {"a": "Be brief.\n\nTell me about tides.", "b": "Hi", "c": "Name a color."}
    for row in PROMPTS:
        n = min(TOKENS, row.get("max_tokens", TOKENS))
        want = expected_text([{"role": "user", "content": prompt_text[row["id"]]}], n)
        body = by_id[row["id"]]["response"]["body"]
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"] == want
        assert body["choices"][0]["finish_reason"] == ("length" if n < TOKENS else "stop")
        assert body["usage"]["completion_tokens"] == n


@pytest.mark.parametrize(("fault", "retried"), [("overloaded", True), ("no_done", True)])
async def test_completions_faults_are_retried(
    tmp_path: Path, mock_server: MockServer, fault: str, retried: bool
) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[2:])
    cfg = with_profile(
        config_for(mock_server, tmp_path),
        kind="openai-completions",
        headers={"x-mock-fault": fault, "x-mock-fault-attempts": "1"},
    )
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    (rec,) = read_results(out.run_dir)
    assert rec["error"] is None and len(rec["llmbatch"]["attempts"]) == 2


async def test_completions_401_aborts_the_run(tmp_path: Path, mock_server: MockServer) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    cfg = with_profile(
        config_for(mock_server, tmp_path),
        kind="openai-completions",
        headers={"x-mock-fault": "401"},
    )
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    assert out.result.stop_reason == "aborted"
    assert read_results(out.run_dir) == []


@pytest.mark.virtualtime
@pytest.mark.usefixtures("anthropic_key")
@pytest.mark.parametrize("kind", ["anthropic", "openai-completions", "openai-responses"])
async def test_rpm_limit_learned_from_headers(tmp_path: Path, kind: str) -> None:
    # A scaled minute (3 s): 600 RPM is 200 requests/s; the limit comes from the mock's
    # anthropic-ratelimit-* (or x-ratelimit-*) headers, nothing is configured.
    window_s, n = 3.0, 300
    server = await start_mock_server(
        MockConfig(tokens=4, ttft_s=0.0, itl_s=0.0, rpm=600, limit_window_s=window_s)
    )
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(n)]
        )
        if kind == "anthropic":
            cfg = anthropic_cfg(server, tmp_path)
        else:
            cfg = with_profile(config_for(server, tmp_path), kind=kind)
        limits = dataclasses.replace(cfg.provider.limits, window_s=window_s)
        cfg = dataclasses.replace(
            cfg, provider=dataclasses.replace(cfg.provider, limits=limits), concurrency=16
        )
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        assert out.result.metrics.succeeded == n
        # On virtual time the pace is the pacer's alone: not one request refused.
        assert server.stats.rate_limited == 0, server.stats.rate_limited
    finally:
        await server.close()


async def test_mock_non_streaming_and_error_shapes(mock_server: MockServer) -> None:
    base = mock_server.url
    msgs = [{"role": "user", "content": "Hi"}]
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/messages", json={"messages": msgs, "max_tokens": 4}) as r:
            body = await r.json()
        assert body["type"] == "message" and body["stop_reason"] == "max_tokens"
        assert body["content"][0]["text"] == expected_text(msgs, 4)
        async with s.post(f"{base}/completions", json={"prompt": "Hi"}) as r:
            body = await r.json()
        assert body["object"] == "text_completion"
        assert body["choices"][0]["text"] == expected_text(msgs, TOKENS)
        async with s.post(f"{base}/messages", json={"messages": msgs}) as r:
            assert r.status == 400
            err = await r.json()
        assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
        hdr = {"x-mock-fault": "429"}
        req = {"messages": msgs, "max_tokens": 4, "stream": True}
        async with s.post(f"{base}/messages", json=req, headers=hdr) as r:
            assert r.status == 429 and "retry-after" in r.headers
            err = await r.json()
        assert err["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("native", ["vllm", "anthropic"])
async def test_mixed_openai_batch_file_routes_by_url(
    tmp_path: Path, mock_server: MockServer, monkeypatch: pytest.MonkeyPatch, native: str
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    msgs = [{"role": "user", "content": "What is a fjord?"}]
    rows = [
        {
            "custom_id": "chat-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "mock-model", "messages": msgs, "max_tokens": 6},
        },
        {
            "custom_id": "cmpl-1",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "mock-model", "prompt": "Once upon a time"},
        },
        {
            "custom_id": "msg-1",
            "method": "POST",
            "url": "/v1/messages",
            "body": {"model": "claude-x", "system": "Terse.", "max_tokens": 9, "messages": msgs},
        },
        {
            "custom_id": "chat-2",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "system", "content": "S"}, *msgs]},
        },
    ]
    prompts = write_jsonl(tmp_path / "batch.jsonl", rows)
    cfg = config_for(mock_server, tmp_path, provider=native, base_url=mock_server.url)
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    assert (out.result.metrics.succeeded, out.result.metrics.failed) == (4, 0)
    by_id = {r["custom_id"]: r for r in read_results(out.run_dir)}
    assert set(by_id) == {r["custom_id"] for r in rows}
    chat1 = by_id["chat-1"]["response"]["body"]
    assert chat1["object"] == "chat.completion"
    assert chat1["choices"][0]["message"]["content"] == expected_text(msgs, 6)
    chat2 = by_id["chat-2"]["response"]["body"]
    want2 = expected_text(rows[3]["body"]["messages"], TOKENS)
    assert chat2["choices"][0]["message"]["content"] == want2
    cmpl = by_id["cmpl-1"]["response"]["body"]
    assert cmpl["object"] == "text_completion"
    want = expected_text([{"role": "user", "content": "Once upon a time"}], TOKENS)
    assert cmpl["choices"][0]["text"] == want
    msg = by_id["msg-1"]["response"]["body"]
    assert msg["type"] == "message" and msg["model"] == "claude-x"
    assert msg["content"][0]["text"] == expected_text(msgs, 9)
    for rec in by_id.values():
        assert rec["llmbatch"]["metrics"]["output_tokens_estimated"] is False


# -- llmbatch providers ------------------------------------------------------------------
def test_providers_lists_profiles_and_never_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.endswith("_API_KEY"):
            monkeypatch.delenv(k)
    secret = "sk-SECRET-do-not-print-42"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("TOGETHER_KEY", secret + "-2")
    (tmp_path / "config.toml").write_text(
        '[providers.together]\nkind = "openai"\nbase_url = "https://api.together.xyz/v1"\n'
        'api_key_env = "TOGETHER_KEY"\nmodel = "meta-llama/Llama-3-8b"\n'
    )
    res = CliRunner().invoke(app, ["providers"])
    assert res.exit_code == 0, res.output
    assert secret not in res.output
    lines = {line.split()[0]: line for line in res.output.splitlines()[1:]}
    assert {"openai", "anthropic", "vllm", "llamacpp", "ollama", "mock", "together"} <= set(lines)
    assert "$OPENAI_API_KEY (set)" in lines["openai"]
    assert "$ANTHROPIC_API_KEY (not set)" in lines["anthropic"]
    assert "https://api.together.xyz/v1" in lines["together"]
    assert "$TOGETHER_KEY (set)" in lines["together"]
    assert "http://127.0.0.1:8000/v1" in lines["vllm"]
    res = CliRunner().invoke(app, ["providers", "--config", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and "config file not found" in res.output


def test_streamed_tool_calls_are_assembled() -> None:
    stream = (
        b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":'
        b'[{"index":0,"id":"call_1","type":"function","function":{"name":"get_w","arguments":""}}]}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":'
        b'{"arguments":"{\\"city\\": "}}]}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":'
        b'{"arguments":"\\"Paris\\"}"}}]},"finish_reason":"tool_calls"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    asm = ChatAssembler()
    assert feed(asm, stream) == ""
    msg = asm.body()["choices"][0]["message"]
    assert msg["tool_calls"] == [
        {
            "index": 0,  # kept, as the SDK's accumulated message keeps it
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_w", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert asm.body()["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("make", "stream"),
    [
        (ChatAssembler, CHAT_STREAM),
        (CompletionsAssembler, COMPLETIONS_STREAM),
        (MessagesAssembler, ANTHROPIC_STREAM),
    ],
)
@pytest.mark.parametrize("step", [1, 5, 64, 1 << 16])
def test_assembler_feed_matches_event_by_event(
    make: type[StreamAssembler], stream: bytes, step: int
) -> None:
    """feed(raw chunks) gives the texts, body and usage of the decode-then-on_event path,
    and ignores whatever follows the end marker."""
    reference = make()
    expected = feed(reference, stream)
    asm = make()
    texts: list[str] = []
    tail = b'data: {"not": "read"}\n\ndata: broken{\n\n'
    whole = stream + tail
    for i in range(0, len(whole), step):
        texts += asm.feed(whole[i : i + step])
    assert "".join(texts) == expected and all(texts)
    assert asm.finished
    assert asm.body() == reference.body()
    assert asm.usage() == reference.usage()
