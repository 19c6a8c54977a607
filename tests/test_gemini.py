"""Gemini's native API: the merge of streamed GenerateContentResponses (text, thoughts with
signatures, function calls whole and with streamed partialArgs), the end of a stream
without an end marker, errors and their retry delay, request mapping and input lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch.config.profiles import BUILTIN_PROVIDERS
from llmbatch.errors import (
    AuthError,
    MalformedResponse,
    ProviderError,
    RateLimited,
    RejectedInStream,
    TruncatedStream,
    http_status_error,
)
from llmbatch.providers import make_provider
from llmbatch.providers.gemini import GeminiAssembler, set_json_path, to_gemini_body
from llmbatch.records import PromptRecord
from llmbatch.rundir.reader import iter_records
from llmbatch.rundir.resultline import answer_text, finish_reason

from .conftest import write_jsonl


def event(parts: list[Any], finish: str | None = None, **top: Any) -> dict[str, Any]:
    cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    return {"candidates": [cand], "modelVersion": "gemini-x", "responseId": "r1", **top}


def sse(*events: dict[str, Any], sep: bytes = b"\n\n") -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + sep for e in events)


def run(data: bytes, step: int = 4096) -> tuple[GeminiAssembler, str]:
    asm = GeminiAssembler()
    out: list[str] = []
    for i in range(0, len(data), step):
        out.extend(asm.feed(data[i : i + step]))
    asm.end_of_body()
    return asm, "".join(out)


FINAL_USAGE = {
    "promptTokenCount": 9,
    "candidatesTokenCount": 5,
    "thoughtsTokenCount": 7,
    "totalTokenCount": 21,
}
THINKING = sse(
    event([{"text": "Let me ", "thought": True}], usageMetadata={"promptTokenCount": 9}),
    event([{"text": "think.", "thought": True}]),
    event([{"text": "Hello", "thoughtSignature": "sig1"}]),
    event([{"text": ", wörld"}]),
    event([{"text": "", "thoughtSignature": "sig2"}]),
    event(
        [{"text": ""}],
        "STOP",
        usageMetadata=FINAL_USAGE,
        x_vendor={"kept": True},
    ),
    sep=b"\r\n\r\n",
)


@pytest.mark.parametrize("step", [1, 13, 4096])
def test_text_and_thoughts_merge_into_one_response(step: int) -> None:
    asm, text = run(THINKING, step)
    assert text == "Hello, wörld"
    assert asm.take_reasoning() == ["Let me ", "think."]
    body = asm.body()
    assert body == {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Let me think.", "thought": True},
                        # Both pieces carry a signature: the second starts a part of its own.
                        {"text": "Hello, wörld", "thoughtSignature": "sig1"},
                        {"text": "", "thoughtSignature": "sig2"},
                    ],
                },
                "index": 0,
                "finishReason": "STOP",
            }
        ],
        "modelVersion": "gemini-x",
        "responseId": "r1",
        "usageMetadata": FINAL_USAGE,
        "x_vendor": {"kept": True},
    }
    assert asm.usage() == (9, 12)  # thinking tokens are output tokens
    assert answer_text(body) == "Hello, wörld"
    assert finish_reason(body) == "STOP"


def test_a_trailing_signature_goes_on_the_part_it_ends() -> None:
    asm, _ = run(
        sse(
            event([{"text": "Hi"}]),
            event([{"text": " there"}]),
            event([{"text": "", "thoughtSignature": "s"}], "STOP"),
        )
    )
    parts = asm.body()["candidates"][0]["content"]["parts"]
    assert parts == [{"text": "Hi there", "thoughtSignature": "s"}]


def test_streamed_function_call_arguments() -> None:
    def partial(path: str, willc: bool = True, **value: Any) -> dict[str, Any]:
        arg = {"jsonPath": path, **value}
        if willc:
            arg["willContinue"] = True
        return {"functionCall": {"partialArgs": [arg], "willContinue": True}}

    data = sse(
        event([{"text": "plan", "thought": True}]),
        event([{"functionCall": {"name": "noargs"}, "thoughtSignature": "s1"}]),
        event([{"functionCall": {"name": "write", "willContinue": True}}]),
        event([partial("$.items[0].name", stringValue="red ")]),
        event([partial("$.items[0].name", stringValue="apple")]),
        event([partial("$.items[0].name", False, stringValue="")]),
        event([partial("$.items[0].price", False, numberValue=0.5)]),
        event([partial("$.items[1]['in stock']", False, boolValue=True)]),
        event([partial("$.note", False, nullValue=None)]),
        event([{"functionCall": {}}]),
        event([{"functionCall": {"name": "last", "willContinue": True}}]),
        event([{"functionCall": {"partialArgs": [{"jsonPath": "$.n", "numberValue": 1}]}}]),
        event([{"text": ""}], "STOP"),
    )
    asm, text = run(data, 11)
    assert text == ""
    parts = asm.body()["candidates"][0]["content"]["parts"]
    assert parts == [
        {"text": "plan", "thought": True},
        {"functionCall": {"name": "noargs"}, "thoughtSignature": "s1"},
        {
            "functionCall": {
                "name": "write",
                "args": {
                    "items": [{"name": "red apple", "price": 0.5}, {"in stock": True}],
                    "note": None,
                },
            }
        },
        {"functionCall": {"name": "last", "args": {"n": 1}}},
    ]


def test_other_parts_and_candidate_metadata_are_kept() -> None:
    grounding = {"groundingChunks": [{"web": {"uri": "https://x"}}]}
    asm, text = run(
        sse(
            event([{"executableCode": {"code": "print(1)"}}]),
            event([{"text": "One."}], citationMetadata={}),
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": " Two."}]},
                        "finishReason": "STOP",
                        "groundingMetadata": grounding,
                    }
                ]
            },
            event([], None, usageMetadata={"promptTokenCount": 3}),
        )
    )
    cand = asm.body()["candidates"][0]
    assert text == "One. Two."
    assert cand["content"]["parts"] == [
        {"executableCode": {"code": "print(1)"}},
        {"text": "One. Two."},
    ]
    assert cand["groundingMetadata"] == grounding
    assert cand["finishReason"] == "STOP"


def test_several_candidates_merge_apart_and_the_text_file_gets_the_first() -> None:
    def two(a: str, b: str, finish: str | None = None) -> dict[str, Any]:
        cands = [
            {"content": {"role": "model", "parts": [{"text": t}]}, "index": i}
            for i, t in enumerate((a, b))
        ]
        if finish:
            for c in cands:
                c["finishReason"] = finish
        return {"candidates": cands}

    asm, text = run(sse(two("A1", "B1"), two(" A2", " B2", "STOP")))
    assert text == "A1 A2"
    cands = asm.body()["candidates"]
    assert [c["content"]["parts"] for c in cands] == [[{"text": "A1 A2"}], [{"text": "B1 B2"}]]


def test_no_finish_reason_is_a_cut_stream_and_a_block_is_whole() -> None:
    asm = GeminiAssembler()
    asm.feed(sse(event([{"text": "Hi"}])))
    assert not asm.finished
    with pytest.raises(TruncatedStream, match="finishReason"):
        asm.end_of_body()
    blocked, _ = run(sse({"promptFeedback": {"blockReason": "SAFETY"}}))
    assert blocked.finished and blocked.body() == {"promptFeedback": {"blockReason": "SAFETY"}}


@pytest.mark.parametrize(
    ("err", "exc_type"),
    [
        (
            {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"},
            ProviderError,
        ),
        ({"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}, RejectedInStream),
        ({"message": "bad", "status": "INVALID_ARGUMENT"}, RejectedInStream),
    ],
)
def test_error_in_the_stream(err: dict[str, Any], exc_type: type[ProviderError]) -> None:
    asm = GeminiAssembler()
    with pytest.raises(exc_type) as info:
        asm.feed(sse(event([{"text": "Hi"}]), {"error": err}))
    assert type(info.value) is exc_type and err["message"] in str(info.value)
    with pytest.raises(MalformedResponse):
        GeminiAssembler().feed(b"data: {nope\n\n")


def test_a_whole_json_array_answer_is_accepted() -> None:
    asm = GeminiAssembler()
    text = asm.accept_body([event([{"text": "Hi"}]), event([{"text": "!"}], "STOP")])
    assert text == "Hi!" and asm.finished
    assert asm.body()["candidates"][0]["content"]["parts"] == [{"text": "Hi!"}]


def test_http_errors_in_googles_shape() -> None:
    body = orjson.dumps(
        {
            "error": {
                "code": 429,
                "message": "Resource has been exhausted",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"},
                ],
            }
        }
    )
    err = http_status_error(429, {}, body)
    assert isinstance(err, RateLimited) and err.retry_after_s == 1.5
    assert http_status_error(429, {"retry-after": "3"}, body).retry_after_s == 3.0
    key = orjson.dumps(
        {
            "error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                    }
                ],
            }
        }
    )
    assert isinstance(http_status_error(400, {}, key), AuthError)


def test_set_json_path() -> None:
    root: dict[str, Any] = {}
    set_json_path(root, "$.a[1].b", "x")
    set_json_path(root, "$.a[1].b", "y", append=True)
    set_json_path(root, "$['k']", 1)
    assert root == {"a": [None, {"b": "xy"}], "k": 1}
    with pytest.raises(ValueError):
        set_json_path(root, "$", 1)


# -- requests ------------------------------------------------------------------------------
def record(body: dict[str, Any], shape: Any = "messages") -> PromptRecord:
    return PromptRecord(id="r", line_no=1, shape=shape, body=body)


def test_builtin_profile_and_request() -> None:
    profile = BUILTIN_PROVIDERS["gemini"]
    assert profile.base_url.endswith("/v1beta") and profile.api_key_env == "GEMINI_API_KEY"
    prov = make_provider(profile, "gk-test", profile.base_url)
    line = record({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}, "contents")
    req = prov.build_request(line)
    assert req.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/"
        f"{profile.model}:streamGenerateContent?alt=sse"
    )
    assert req.headers["x-goog-api-key"] == "gk-test"
    assert "authorization" not in req.headers
    assert orjson.loads(req.body) == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    assert isinstance(prov.new_assembler(line), GeminiAssembler)


def test_messages_are_converted() -> None:
    body = to_gemini_body(
        {
            "model": "gemini-x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                },
                {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": "Sure?"},
            ],
            "max_tokens": 50,
            "temperature": 0.2,
            "stop": "END",
            "stream_options": {"include_usage": True},
            "response_format": {
                "type": "json_schema",
                "json_schema": {"schema": {"type": "object"}},
            },
            "safetySettings": [],
        }
    )
    assert body == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is this?"},
                    {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
                ],
            },
            {"role": "model", "parts": [{"text": "A cat."}]},
            {"role": "user", "parts": [{"text": "Sure?"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "maxOutputTokens": 50,
            "temperature": 0.2,
            "stopSequences": ["END"],
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object"},
        },
        "safetySettings": [],
    }


def test_reader_accepts_contents_lines_and_gemini_batch_lines(tmp_path: Path) -> None:
    contents = [{"role": "user", "parts": [{"text": "Hi"}]}]
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "contents": contents, "generationConfig": {"temperature": 0}},
            {"key": "b", "request": {"contents": contents}},
            {"id": "c", "contents": []},
            {"key": "d", "request": {"contents": [{"role": "user"}]}},
            {"key": "e", "request": 5},
        ],
    )
    out = list(iter_records(path))
    assert [(getattr(r, "id", None), getattr(r, "shape", None)) for r in out[:2]] == [
        ("a", "contents"),
        ("b", "contents"),
    ]
    assert [getattr(r, "reason", "") for r in out[2:]] == [
        '"contents" must be a non-empty list',
        'contents[0] must be an object with a "parts" list',
        '"request" must be a JSON object',
    ]
