"""Legacy OpenAI text completions (``POST {base_url}/completions`` with a ``prompt``).

Kind ``openai-completions``; also used for OpenAI Batch lines whose url is
``/v1/completions``. The prompt is the record's ``prompt`` when it has one (Batch
lines keep it in the body), else the messages' texts joined by blank lines.
The stream is ``text_completion`` chunks (``choices[0].text``) ending in ``[DONE]``.
"""

from __future__ import annotations

from typing import Any

from llmbatch.errors import MalformedResponse
from llmbatch.http.base import HTTPRequest
from llmbatch.providers.anthropic import content_text
from llmbatch.providers.base import Provider, StreamAssembler
from llmbatch.providers.openai import ChoiceState, OpenAIStreamAssembler, openai_stream_request
from llmbatch.records import PromptRecord

__all__ = ["CompletionsAssembler", "CompletionsProvider", "prompt_of"]


def prompt_of(body: dict[str, Any]) -> str:
    """The completion prompt: ``body["prompt"]`` or the messages' texts joined."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    texts = (content_text(m.get("content")) for m in body.get("messages") or [])
    return "\n\n".join(t for t in texts if t)


class CompletionsProvider(Provider):
    """``POST {base_url}/completions`` with ``stream: true`` and usage included."""

    kind = "openai-completions"

    def build_request(self, record: PromptRecord) -> HTTPRequest:
        body = self._merged_body(record)
        body["prompt"] = prompt_of(body)
        body.pop("messages", None)
        cap = body.pop("max_completion_tokens", None)
        if cap is not None and "max_tokens" not in body:
            body["max_tokens"] = cap
        return openai_stream_request(self, "/completions", body)

    def new_assembler(self, record: PromptRecord) -> StreamAssembler:
        return CompletionsAssembler()


class CompletionsAssembler(OpenAIStreamAssembler):
    """Accumulates ``text_completion`` chunks into one ``text_completion`` body, every
    choice by its index (text concatenated, logprobs lists extended)."""

    __slots__ = ()

    def _new_choice(self, first: dict[str, Any], is_answer: bool) -> ChoiceState:
        return _TextChoice(first, is_answer)

    def _whole_text(self, choice: dict[str, Any]) -> Any:
        return choice.get("text")

    def body(self) -> dict[str, Any]:
        return self._object("text_completion")


class _TextChoice(ChoiceState):
    __slots__ = ("text",)

    def __init__(self, first: dict[str, Any], is_answer: bool) -> None:
        super().__init__(first, is_answer)
        self.text: list[str] = []

    def add(self, choice: dict[str, Any], reasoning: list[str]) -> str:
        text = choice.get("text")
        if not text:
            return ""
        if text.__class__ is not str:
            raise MalformedResponse("streamed text is not a string")
        self.text.append(text)
        return text if self.is_answer else ""

    def body(self, index: int) -> dict[str, Any]:
        out: dict[str, Any] = {"index": index, "text": "", "logprobs": None, "finish_reason": None}
        out.update(self.fields)
        out["text"] = "".join(self.text)
        return out
