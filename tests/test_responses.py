"""The Responses API: literal streams of each shape (text, reasoning summary, function
call, annotations, a gateway that omits the final output and changes item ids, errors,
incomplete answers, cut streams), request mapping, routing and input lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch.config.model import ProviderConfig
from llmbatch.errors import MalformedResponse, ProviderError, RejectedInStream, TruncatedStream
from llmbatch.providers import make_provider
from llmbatch.providers.base import StreamAssembler
from llmbatch.providers.openai import ChatAssembler
from llmbatch.providers.responses import ResponsesAssembler, to_responses_body
from llmbatch.records import PromptRecord
from llmbatch.rundir.reader import iter_records
from llmbatch.rundir.resultline import answer_text, finish_reason

from .conftest import write_jsonl


def sse(obj: dict[str, Any]) -> bytes:
    """One Responses event as OpenAI sends it: ``event:`` names the type."""
    return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


SNAPSHOT = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1700000000,
    "status": "in_progress",
    "model": "gpt-x",
    "output": [],
    "usage": None,
    "x_vendor": {"kept": True},  # a key llmbatch does not know
}
MESSAGE = {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant"}
TEXT_PART = {"type": "output_text", "text": "Hello, wörld", "annotations": []}
REASONING = {
    "type": "reasoning",
    "id": "rs_1",
    "summary": [{"type": "summary_text", "text": "Think. Then act."}],
}
CALL = {
    "type": "function_call",
    "id": "fc_1",
    "call_id": "call_1",
    "name": "get_weather",
    "arguments": '{"city":"Paris"}',
    "status": "completed",
}
USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 4},
    "output_tokens": 30,
    "output_tokens_details": {"reasoning_tokens": 20},
    "total_tokens": 42,
}


def final(output: list[Any] | None, status: str = "completed", **extra: Any) -> dict[str, Any]:
    body = {**SNAPSHOT, "status": status, "usage": USAGE, **extra}
    if output is not None:
        body["output"] = output
    else:
        del body["output"]
    return body


def text_events(oi: int = 0, item_id: str = "msg_1") -> list[dict[str, Any]]:
    base = {"item_id": item_id, "output_index": oi, "content_index": 0}
    empty_part = {**TEXT_PART, "text": ""}
    return [
        {
            "type": "response.output_item.added",
            "output_index": oi,
            "item": {**MESSAGE, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **base, "part": empty_part},
        {"type": "response.output_text.delta", **base, "delta": "Hello"},
        {"type": "response.output_text.delta", **base, "delta": ", wörld"},
        {"type": "response.output_text.done", **base, "text": "Hello, wörld"},
        {"type": "response.content_part.done", **base, "part": TEXT_PART},
        {
            "type": "response.output_item.done",
            "output_index": oi,
            "item": {**MESSAGE, "content": [TEXT_PART]},
        },
    ]


def reasoning_and_call_events() -> list[dict[str, Any]]:
    rs = {"item_id": "rs_1", "output_index": 0, "summary_index": 0}
    fc = {"item_id": "fc_1", "output_index": 1}
    return [
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"type": "reasoning", "id": "rs_1", "summary": []},
        },
        {
            "type": "response.reasoning_summary_part.added",
            **rs,
            "part": {"type": "summary_text", "text": ""},
        },
        {"type": "response.reasoning_summary_text.delta", **rs, "delta": "Think. "},
        {"type": "response.reasoning_summary_text.delta", **rs, "delta": "Then act."},
        {"type": "response.reasoning_summary_text.done", **rs, "text": "Think. Then act."},
        {"type": "response.output_item.done", "output_index": 0, "item": REASONING},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": {**CALL, "arguments": "", "status": "in_progress"},
        },
        {"type": "response.function_call_arguments.delta", **fc, "delta": '{"city":'},
        {"type": "response.function_call_arguments.delta", **fc, "delta": '"Paris"}'},
        {"type": "response.function_call_arguments.done", **fc, "arguments": CALL["arguments"]},
        {"type": "response.output_item.done", "output_index": 1, "item": CALL},
    ]


def stream(*middle: list[dict[str, Any]], end: dict[str, Any] | None) -> bytes:
    events = [{"type": "response.created", "response": SNAPSHOT}]
    events.append({"type": "response.in_progress", "response": SNAPSHOT})
    for group in middle:
        events.extend(group)
    if end is not None:
        events.append(end)
    return b"".join(sse({**e, "sequence_number": i}) for i, e in enumerate(events))


def feed(asm: StreamAssembler, data: bytes, step: int = 4096) -> str:
    out: list[str] = []
    for i in range(0, len(data), step):
        out.extend(asm.feed(data[i : i + step]))
    return "".join(out)


TEXT_STREAM = stream(
    text_events(),
    end={"type": "response.completed", "response": final([{**MESSAGE, "content": [TEXT_PART]}])},
)


@pytest.mark.parametrize("step", [1, 9, 4096])
def test_text_stream_body_is_the_final_response(step: int) -> None:
    asm = ResponsesAssembler()
    assert feed(asm, TEXT_STREAM, step) == "Hello, wörld"
    assert asm.finished
    body = asm.body()
    assert body["output"] == [{**MESSAGE, "content": [TEXT_PART]}]
    assert body["x_vendor"] == {"kept": True}
    assert body["usage"] == USAGE
    assert asm.usage() == (12, 30)
    assert answer_text(body) == "Hello, wörld"
    assert finish_reason(body) == "completed"


def test_reasoning_summary_and_function_call() -> None:
    output = [REASONING, CALL]
    data = stream(
        reasoning_and_call_events(), end={"type": "response.completed", "response": final(output)}
    )
    asm = ResponsesAssembler()
    assert feed(asm, data, 7) == ""  # no answer text: reasoning and a tool call
    assert asm.take_reasoning() == ["Think. ", "Then act."]
    assert asm.take_reasoning() == []
    assert asm.body()["output"] == output


def test_output_assembled_by_index_when_the_final_object_has_none() -> None:
    """A gateway whose response.completed has no output, and whose item ids change between
    events: the items are keyed by output_index, each as output_item.done gave it."""
    events = reasoning_and_call_events()
    renamed = text_events(oi=2, item_id="msg_other")
    data = stream(events, renamed, end={"type": "response.completed", "response": final(None)})
    asm = ResponsesAssembler()
    assert feed(asm, data, 5) == "Hello, wörld"
    assert asm.body()["output"] == [REASONING, CALL, {**MESSAGE, "content": [TEXT_PART]}]


def test_output_built_from_deltas_alone() -> None:
    """No .done events at all: the items are what their deltas built."""
    events = [e for e in text_events() if not e["type"].endswith(".done")]
    data = stream(events, end={"type": "response.completed", "response": final(None)})
    asm = ResponsesAssembler()
    assert feed(asm, data) == "Hello, wörld"
    [item] = asm.body()["output"]
    assert item["content"] == [{**TEXT_PART, "text": "Hello, wörld"}]


def test_text_only_in_done_event_still_reaches_the_text_file() -> None:
    events = [e for e in text_events() if e["type"] != "response.output_text.delta"]
    data = stream(events, end={"type": "response.completed", "response": final(None)})
    assert feed(ResponsesAssembler(), data) == "Hello, wörld"


def test_annotations_and_incomplete() -> None:
    note = {"type": "url_citation", "url": "https://example.org", "start_index": 0, "end_index": 5}
    events = text_events()[:4] + [
        {
            "type": "response.output_text.annotation.added",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "annotation_index": 0,
            "annotation": note,
        }
    ]
    end = {
        "type": "response.incomplete",
        "response": final(None, "incomplete", incomplete_details={"reason": "max_output_tokens"}),
    }
    asm = ResponsesAssembler()
    assert feed(asm, stream(events, end=end)) == "Hello, wörld"
    body = asm.body()
    assert body["status"] == "incomplete"
    assert body["output"][0]["content"][0]["annotations"] == [note]
    assert finish_reason(body) == "max_output_tokens"


@pytest.mark.parametrize(
    ("event", "exc_type", "words"),
    [
        (
            {"type": "error", "error": {"type": "insufficient_quota", "message": "no money"}},
            ProviderError,
            "no money",
        ),
        (
            {"type": "error", "code": "invalid_prompt", "message": "bad", "param": None},
            ProviderError,
            "invalid_prompt: bad",
        ),
        (
            {
                "type": "response.failed",
                "response": final(
                    None, "failed", error={"code": "server_error", "message": "it broke"}
                ),
            },
            ProviderError,
            "it broke",
        ),
        (
            {"type": "error", "error": {"code": 400, "message": "too long"}},
            RejectedInStream,
            "too long",
        ),
    ],
)
def test_errors_in_the_stream(
    event: dict[str, Any], exc_type: type[ProviderError], words: str
) -> None:
    with pytest.raises(exc_type) as info:
        feed(ResponsesAssembler(), stream(text_events()[:3], end=event))
    assert words in str(info.value)


def test_cut_stream_names_the_terminal_event() -> None:
    asm = ResponsesAssembler()
    feed(asm, stream(text_events(), end=None))
    assert not asm.finished
    with pytest.raises(TruncatedStream, match="response.completed"):
        asm.end_of_body()


def test_malformed_events() -> None:
    with pytest.raises(MalformedResponse):
        feed(ResponsesAssembler(), b"event: response.output_text.delta\ndata: {nope\n\n")
    with pytest.raises(MalformedResponse):
        feed(ResponsesAssembler(), sse({"type": "response.output_text.delta", "delta": "x"}))


def test_a_whole_json_answer_is_accepted() -> None:
    asm = ResponsesAssembler()
    body = final([{**MESSAGE, "content": [TEXT_PART]}])
    assert asm.accept_body(body) == "Hello, wörld"
    assert asm.finished and asm.body() == body
    with pytest.raises(MalformedResponse):
        ResponsesAssembler().accept_body({"choices": []})


# -- requests ------------------------------------------------------------------------------
def record(body: dict[str, Any], endpoint: str | None = None) -> PromptRecord:
    return PromptRecord(id="r", line_no=1, shape="messages", body=body, endpoint=endpoint)


def test_chat_shaped_body_becomes_input_items() -> None:
    body = to_responses_body(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "function": {"name": "look", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
            ],
            "max_tokens": 50,
            "stream_options": {"include_usage": True},
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {}}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {}}},
            "reasoning_effort": "low",
        }
    )
    assert body == {
        "model": "m",
        "input": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"},
                ],
            },
            {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "a cat"},
        ],
        "max_output_tokens": 50,
        "tools": [{"type": "function", "name": "look", "parameters": {}}],
        "text": {"format": {"type": "json_schema", "name": "n", "schema": {}}},
        "reasoning": {"effort": "low"},
        "stream": True,
    }


def test_chat_caps_in_an_input_body_become_max_output_tokens() -> None:
    assert to_responses_body({"input": "Hi", "max_tokens": 7}) == {
        "input": "Hi",
        "max_output_tokens": 7,
        "stream": True,
    }
    given = {"input": "Hi", "max_output_tokens": 3, "max_completion_tokens": 9}
    assert to_responses_body(given)["max_output_tokens"] == 3


def test_input_lines_route_to_responses_under_openai_profiles() -> None:
    prov = make_provider(ProviderConfig(name="v", model="m"), "sk-test", "http://h/v1")
    line = record({"input": "Hi", "instructions": "Be brief."})
    req = prov.build_request(line)
    assert req.url == "http://h/v1/responses"
    assert req.headers["authorization"] == "Bearer sk-test"
    assert orjson.loads(req.body) == {
        "input": "Hi",
        "instructions": "Be brief.",
        "model": "m",
        "stream": True,
    }
    assert isinstance(prov.new_assembler(line), ResponsesAssembler)
    batch = record({"input": [{"role": "user", "content": "Hi"}]}, "/v1/responses")
    assert prov.build_request(batch).url == "http://h/v1/responses"
    chat = record({"messages": [{"role": "user", "content": "Hi"}]})
    assert isinstance(prov.new_assembler(chat), ChatAssembler)
    # A profile of kind openai-responses sends chat-shaped lines there too.
    native = make_provider(
        ProviderConfig(name="r", kind="openai-responses", model="m"), None, "http://h/v1"
    )
    assert orjson.loads(native.build_request(chat).body)["input"] == [
        {"role": "user", "content": "Hi"}
    ]


def test_reader_accepts_input_lines_and_responses_batch_lines(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "input": "Hi", "instructions": "Be brief."},
            {"id": "b", "input": [{"role": "user", "content": "Hi"}], "max_output_tokens": 9},
            {
                "custom_id": "c",
                "method": "POST",
                "url": "/v1/responses",
                "body": {"model": "m", "input": "Hi"},
            },
            {"id": "d", "input": ""},
            {"id": "e", "input": "x", "messages": [{"role": "user", "content": "y"}]},
            {"custom_id": "f", "url": "/v1/responses", "body": {"input": 3}},
            {"id": "g", "input": "x", "instructions": 5},
        ],
    )
    out = list(iter_records(path))
    assert [getattr(r, "shape", None) for r in out[:3]] == ["input", "input", "batch"]
    assert out[2].endpoint == "/v1/responses"  # type: ignore[union-attr]
    reasons = [getattr(r, "reason", "") for r in out[3:]]
    assert reasons == [
        '"input" must not be empty',
        "give one of messages, input, not both",
        '"input" must be a string or a list of items',
        '"instructions" must be a string',
    ]
