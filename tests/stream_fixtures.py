"""Small hand-written streams, one per answer shape, for tests that need no corpus.

Each is a ``Recording`` (tests/replay.py) a ReplayServer can serve, written after the
real streams in ``../shared/replay-recordings/`` but small enough to read: the shapes
(several choices, refusal, logprobs, tool calls, reasoning in each provider's dialect,
Mistral's typed parts, Anthropic's content blocks) without the bulk.
"""

from __future__ import annotations

from typing import Any

import orjson

from .replay import Recording

__all__ = ["ANTHROPIC_FIXTURES", "FIXTURES", "OPENAI_FIXTURES", "anthropic_stream", "chat_stream"]


def chat_stream(chunks: list[dict[str, Any]], *, done: bool = True) -> bytes:
    """An OpenAI chat stream: one ``data:`` event per chunk, then ``[DONE]``."""
    out = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks]
    return b"".join(out) + (b"data: [DONE]\n\n" if done else b"")


def anthropic_stream(events: list[dict[str, Any]]) -> bytes:
    """An Anthropic Messages stream: ``event: <type>`` and ``data:`` per event."""
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )


def _chunk(choices: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    base = {"id": "chatcmpl-fx", "object": "chat.completion.chunk", "created": 0, "model": "fx"}
    return {**base, **top, "choices": choices}


def _c(index: int = 0, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish}


_USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 12,
    "total_tokens": 21,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 5},
}


def _cite(content: str, url: str) -> dict[str, Any]:
    """OpenRouter: the role again, and one url_citation annotation without an index."""
    citation = {"type": "url_citation", "url_citation": {"url": url}}
    return _c(role="assistant", content=content, annotations=[citation])


def _lp(*tokens: str) -> list[dict[str, Any]]:
    return [
        {"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": []} for t in tokens
    ]


def _with_lp(choice: dict[str, Any], content: Any = None, refusal: Any = None) -> dict[str, Any]:
    return {**choice, "logprobs": {"content": content, "refusal": refusal}}


OPENAI_FIXTURES = [
    Recording(
        "fx-oai-two-choices",
        "openai",
        "n=2 interleaved; created 0 kept; service_tier and system_fingerprint; usage details",
        "text/event-stream",
        chat_stream(
            [
                _chunk(
                    [_c(0, role="assistant", content=""), _c(1, role="assistant", content="")],
                    service_tier="default",
                    system_fingerprint="fp_1",
                ),
                _chunk([_c(0, content="Hel"), _c(1, content="Bon")], system_fingerprint="fp_1"),
                _chunk([_c(1, content="jour"), _c(0, content="lo")], system_fingerprint="fp_1"),
                _chunk([_c(0, "stop"), _c(1, "length")], system_fingerprint="fp_1"),
                _chunk([], usage=_USAGE, system_fingerprint="fp_1"),
            ]
        ),
    ),
    Recording(
        "fx-oai-refusal",
        "openai",
        "content null, refusal deltas with refusal logprobs",
        "text/event-stream",
        chat_stream(
            [
                _chunk([_with_lp(_c(role="assistant", content=None, refusal=""), refusal=[])]),
                _chunk([_with_lp(_c(refusal="I can't"), refusal=_lp("I", " can't"))]),
                _chunk([_with_lp(_c(refusal=" help."), refusal=_lp(" help."))]),
                _chunk([{**_c(finish="stop"), "logprobs": None}]),
            ]
        ),
    ),
    Recording(
        "fx-oai-logprobs",
        "openai",
        "content logprobs over several chunks",
        "text/event-stream",
        chat_stream(
            [
                _chunk([_with_lp(_c(role="assistant", content="Foo"), content=_lp("Foo"))]),
                _chunk([_with_lp(_c(content="!"), content=_lp("!"))]),
                _chunk([_c(finish="stop")]),
            ]
        ),
    ),
    Recording(
        "fx-oai-tools",
        "openai",
        "two parallel tool calls with streamed arguments; content null",
        "text/event-stream",
        chat_stream(
            [
                _chunk(
                    [
                        _c(
                            role="assistant",
                            content=None,
                            tool_calls=[
                                {
                                    "index": 0,
                                    "id": "call_a",
                                    "type": "function",
                                    "function": {"name": "weather", "arguments": ""},
                                }
                            ],
                        )
                    ]
                ),
                _chunk([_c(tool_calls=[{"index": 0, "function": {"arguments": '{"city":'}}])]),
                _chunk(
                    [
                        _c(
                            tool_calls=[
                                {"index": 0, "function": {"arguments": '"Oslo"}'}},
                                {
                                    "index": 1,
                                    "id": "call_b",
                                    "type": "function",
                                    "function": {"name": "time", "arguments": "{}"},
                                },
                            ]
                        )
                    ]
                ),
                _chunk([_c(finish="tool_calls")]),
            ]
        ),
    ),
    Recording(
        "fx-oai-reasoning-content",
        "openai",
        "DeepSeek style: reasoning_content, then content; reasoning tokens in usage",
        "text/event-stream",
        chat_stream(
            [
                _chunk([_c(role="assistant", content=None, reasoning_content="")]),
                _chunk([_c(reasoning_content="Two and two")]),
                _chunk([_c(reasoning_content=" make four.")]),
                _chunk([_c(content="4", reasoning_content=None)]),
                _chunk([_c(finish="stop")]),
                _chunk([], usage=_USAGE),
            ]
        ),
    ),
    Recording(
        "fx-oai-openrouter",
        "openai",
        "OpenRouter style: role in every delta, reasoning + reasoning_details with a "
        "signature and a repeated format, annotations one per chunk, provider extension",
        "text/event-stream",
        b": OPENROUTER PROCESSING\n\n"
        + chat_stream(
            [
                _chunk(
                    [
                        {
                            **_c(
                                role="assistant",
                                content="",
                                reasoning="Think",
                                reasoning_details=[
                                    {
                                        "type": "reasoning.text",
                                        "text": "Think",
                                        "format": "fmt-v1",
                                        "index": 0,
                                    }
                                ],
                            ),
                            "native_finish_reason": None,
                        }
                    ],
                    provider="Acme",
                ),
                _chunk(
                    [
                        {
                            **_c(
                                role="assistant",
                                content="",
                                reasoning="ing.",
                                reasoning_details=[
                                    {
                                        "type": "reasoning.text",
                                        "text": "ing.",
                                        "signature": "sig==",
                                        "format": "fmt-v1",
                                        "index": 0,
                                    }
                                ],
                            ),
                            "native_finish_reason": None,
                        }
                    ],
                    provider="Acme",
                ),
                _chunk([_cite("See [1].", "https://a.example")], provider="Acme"),
                _chunk([_cite("", "https://b.example")], provider="Acme"),
                _chunk(
                    [
                        {
                            **_c(role="assistant", content="", finish="stop"),
                            "native_finish_reason": "end_turn",
                        }
                    ],
                    provider="Acme",
                    usage=_USAGE,
                ),
            ]
        ),
    ),
    Recording(
        "fx-mistral-parts",
        "openai",
        "Mistral magistral: content as a list of thinking and text parts",
        "text/event-stream",
        chat_stream(
            [
                _chunk(
                    [
                        _c(
                            role="assistant",
                            content=[
                                {"type": "thinking", "thinking": [{"type": "text", "text": "Add "}]}
                            ],
                        )
                    ]
                ),
                _chunk(
                    [
                        _c(
                            content=[
                                {
                                    "type": "thinking",
                                    "thinking": [{"type": "text", "text": "them."}],
                                }
                            ]
                        )
                    ]
                ),
                _chunk([_c(content=[{"type": "text", "text": "4"}])]),
                _chunk([_c(content=[{"type": "text", "text": "."}])]),
                _chunk([_c(content="", finish="stop")]),
            ]
        ),
    ),
    Recording(
        "fx-oai-error",
        "openai",
        "an error object inside the 200 stream after some text",
        "text/event-stream",
        chat_stream(
            [
                _chunk([_c(role="assistant", content="Par")]),
                {"error": {"message": "Token limit reached", "code": 500}},
            ],
            done=False,
        ),
    ),
]


def _msg(**extra: Any) -> dict[str, Any]:
    message = {
        "id": "msg_fx",
        "type": "message",
        "role": "assistant",
        "model": "claude-fx",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 11,
            "output_tokens": 1,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 3,
        },
    }
    return {"type": "message_start", "message": {**message, **extra}}


def _start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def _delta(index: int, **delta: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def _stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def _end(reason: str, **usage: Any) -> list[dict[str, Any]]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"output_tokens": 40, **usage},
        },
        {"type": "message_stop"},
    ]


ANTHROPIC_FIXTURES = [
    Recording(
        "fx-ant-thinking-tool",
        "anthropic",
        "thinking + signature, text, tool_use input from input_json_delta, cache usage",
        "text/event-stream",
        anthropic_stream(
            [
                _msg(),
                _start(0, {"type": "thinking", "thinking": "", "signature": ""}),
                _delta(0, type="thinking_delta", thinking="The user wants"),
                {"type": "ping"},
                _delta(0, type="thinking_delta", thinking=" the weather."),
                _delta(0, type="signature_delta", signature="EqQBCkYIBx=="),
                _stop(0),
                _start(1, {"type": "text", "text": ""}),
                _delta(1, type="text_delta", text="Let me check."),
                _stop(1),
                _start(2, {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}),
                _delta(2, type="input_json_delta", partial_json=""),
                _delta(2, type="input_json_delta", partial_json='{"city": "Os'),
                _delta(2, type="input_json_delta", partial_json='lo", "days": [1, 2]}'),
                _stop(2),
                *_end(
                    "tool_use",
                    input_tokens=11,
                    cache_read_input_tokens=3,
                    output_tokens_details={"thinking_tokens": 6},
                ),
            ]
        ),
    ),
    Recording(
        "fx-ant-server-tools",
        "anthropic",
        "redacted_thinking, server_tool_use, web_search_tool_result, citations, server tool usage",
        "text/event-stream",
        anthropic_stream(
            [
                _msg(),
                _start(0, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va=="}),
                _stop(0),
                _start(
                    1,
                    {
                        "type": "server_tool_use",
                        "id": "srvtoolu_1",
                        "name": "web_search",
                        "input": {},
                    },
                ),
                _delta(1, type="input_json_delta", partial_json='{"query": "oslo weather"}'),
                _stop(1),
                _start(
                    2,
                    {
                        "type": "web_search_tool_result",
                        "tool_use_id": "srvtoolu_1",
                        "content": [
                            {
                                "type": "web_search_result",
                                "url": "https://w.example",
                                "title": "Oslo",
                                "encrypted_content": "Ep8B",
                            }
                        ],
                    },
                ),
                _stop(2),
                _start(3, {"type": "text", "text": "", "citations": None}),
                _delta(
                    3,
                    type="citations_delta",
                    citation={
                        "type": "web_search_result_location",
                        "url": "https://w.example",
                        "title": "Oslo",
                        "cited_text": "Rain.",
                    },
                ),
                _delta(3, type="text_delta", text="It rains."),
                _stop(3),
                *_end("end_turn", server_tool_use={"web_search_requests": 1}),
            ]
        ),
    ),
    Recording(
        "fx-ant-tool-only",
        "anthropic",
        "a tool_use block and no text block at all; input_tokens only in message_delta",
        "text/event-stream",
        anthropic_stream(
            [
                _msg(usage={"input_tokens": 0, "output_tokens": 0}),
                _start(0, {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}}),
                _stop(0),
                *_end("tool_use", input_tokens=25),
            ]
        ),
    ),
    Recording(
        "fx-ant-error",
        "anthropic",
        "an overloaded_error event after some text",
        "text/event-stream",
        anthropic_stream(
            [
                _msg(),
                _start(0, {"type": "text", "text": ""}),
                _delta(0, type="text_delta", text="Hel"),
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "Bad input"},
                },
            ]
        ),
    ),
]

FIXTURES = OPENAI_FIXTURES + ANTHROPIC_FIXTURES
