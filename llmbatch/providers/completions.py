"""Legacy OpenAI text completions (``POST {base_url}/completions`` with a ``prompt``).

Kind ``openai-completions``; also used for OpenAI Batch lines whose url is
``/v1/completions``. The prompt is the record's ``prompt`` when it has one (Batch
lines keep it in the body), else the messages' texts joined by blank lines.
The stream is ``text_completion`` chunks (``choices[0].text``) ending in ``[DONE]``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..clients.base import HTTPRequest
from ..errors import MalformedResponse
from ..records import PromptRecord
from ..sse import Event
from .anthropic import content_text
from .base import Provider, StreamAssembler, Usage, stream_error

__all__ = ["CompletionsAssembler", "CompletionsProvider", "prompt_of"]

_DONE = b"[DONE]"


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
        body["stream"] = True
        opts = body.get("stream_options")
        body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        headers.update(self.profile.headers)
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return HTTPRequest(
            url=f"{self.base_url}/completions", headers=headers, body=orjson.dumps(body)
        )

    def new_assembler(self, record: PromptRecord) -> StreamAssembler:
        return CompletionsAssembler()


class CompletionsAssembler(StreamAssembler):
    """Accumulates ``text_completion`` chunks into one ``text_completion`` body."""

    __slots__ = ("finished", "_parts", "_finish", "_usage", "_id", "_model", "_created")

    def __init__(self) -> None:
        self.finished = False
        self._parts: list[str] = []
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._id = ""
        self._model = ""
        self._created = 0

    def on_event(self, event: Event) -> str:
        data = event.data
        if data == _DONE:
            self.finished = True
            return ""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise MalformedResponse(f"stream chunk is not valid JSON: {data[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise MalformedResponse(f"stream chunk is not a JSON object: {data[:120]!r}")
        err = chunk.get("error")
        if err is not None:
            raise stream_error(err)
        if not self._id:
            self._id = chunk.get("id") or ""
            self._model = chunk.get("model") or ""
            self._created = chunk.get("created") or 0
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
        choices = chunk.get("choices")
        if not choices:
            return ""
        try:
            choice = choices[0]
            fr = choice.get("finish_reason")
            text = choice.get("text")
        except (AttributeError, IndexError, KeyError, TypeError):
            raise MalformedResponse(f"unexpected chunk shape: {data[:120]!r}") from None
        if fr:
            self._finish = fr
        if text:
            if not isinstance(text, str):
                raise MalformedResponse("choices[0].text is not a string")
            self._parts.append(text)
            return text
        return ""

    def body(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "text_completion",
            "created": self._created or int(time.time()),
            "model": self._model,
            "choices": [
                {
                    "index": 0,
                    "text": "".join(self._parts),
                    "logprobs": None,
                    "finish_reason": self._finish,
                }
            ],
            "usage": self._usage,
        }

    def usage(self) -> Usage:
        u = self._usage
        if not u:
            return (None, None)
        pt, ct = u.get("prompt_tokens"), u.get("completion_tokens")
        return (pt if isinstance(pt, int) else None, ct if isinstance(ct, int) else None)
