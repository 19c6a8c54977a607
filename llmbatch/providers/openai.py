"""OpenAI-compatible chat completions (OpenAI, vLLM, llama.cpp, Ollama, Together, ...)."""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any

import orjson

from llmbatch.errors import MalformedResponse
from llmbatch.http.base import HTTPRequest
from llmbatch.providers.base import Provider, StreamAssembler, Usage, stream_error
from llmbatch.providers.sse import Event
from llmbatch.records import PromptRecord

__all__ = ["ChatAssembler", "OpenAIChatProvider", "OpenAIStreamAssembler", "openai_stream_request"]

_DONE = b"[DONE]"


def openai_stream_request(provider: Provider, path: str, body: dict[str, Any]) -> HTTPRequest:
    """A streaming POST in OpenAI's conventions: usage included, bearer key, profile headers."""
    body["stream"] = True
    opts = body.get("stream_options")
    body["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    headers.update(provider.profile.headers)
    if provider.api_key:
        headers["authorization"] = f"Bearer {provider.api_key}"
    return HTTPRequest(url=f"{provider.base_url}{path}", headers=headers, body=orjson.dumps(body))


class OpenAIChatProvider(Provider):
    """``POST {base_url}/chat/completions`` with ``stream: true`` and usage included."""

    kind = "openai"

    def build_request(self, record: PromptRecord) -> HTTPRequest:
        return openai_stream_request(self, "/chat/completions", self._merged_body(record))

    def new_assembler(self, record: PromptRecord) -> StreamAssembler:
        return ChatAssembler()


class OpenAIStreamAssembler(StreamAssembler):
    """The envelope both OpenAI stream grammars share: JSON chunks, an ``error`` key,
    id/model/created, ``usage``, ``choices[0]``, and ``[DONE]`` at the end.
    Subclasses read one choice (``_on_choice``) and build the body."""

    __slots__ = ("finished", "_parts", "_finish", "_usage", "_id", "_model", "_created")

    def feed(self, chunk: bytes) -> list[str]:
        # The hot path: event data straight from the decoder, no Event objects (the
        # OpenAI grammar does not use event types).
        if self.finished:
            return []
        texts: list[str] = []
        on_json = self._on_json
        for data in self._decoder.feed_data(chunk):
            if data == _DONE:
                self.finished = True
                break
            text = on_json(data)
            if text:
                texts.append(text)
        return texts

    def __init__(self) -> None:
        super().__init__()
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
        return self._on_json(data)

    def _on_json(self, data: bytes) -> str:
        """One JSON chunk of the stream: its text ("" if none)."""
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
        if usage and isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices")
        if not choices:
            return ""
        try:
            choice = choices[0]
            fr = choice.get("finish_reason")
            if fr:
                self._finish = fr
            text = self._on_choice(choice)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            raise MalformedResponse(f"unexpected chunk shape: {data[:120]!r}") from None
        if text:
            if not isinstance(text, str):
                raise MalformedResponse("streamed text is not a string")
            self._parts.append(text)
            return text
        return ""

    @abstractmethod
    def _on_choice(self, choice: dict[str, Any]) -> Any:
        """The text a choice adds (anything else it carries is kept by the subclass)."""

    @abstractmethod
    def _on_whole_choice(self, choice: dict[str, Any]) -> Any:
        """The text of a non-streamed choice (anything else it carries is kept)."""

    def accept_body(self, obj: Any) -> str:
        if not isinstance(obj, dict):
            raise MalformedResponse("JSON answer is not an object")
        err = obj.get("error")
        if err is not None:
            raise stream_error(err)
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise MalformedResponse("JSON answer has no choices")
        self._id = obj.get("id") or ""
        self._model = obj.get("model") or ""
        self._created = obj.get("created") or 0
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choice = choices[0]
        self._finish = choice.get("finish_reason")
        try:
            text = self._on_whole_choice(choice)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise MalformedResponse("unexpected shape of the JSON answer") from None
        if text is not None and not isinstance(text, str):
            raise MalformedResponse("answer text is not a string")
        self._parts = [text] if text else []
        self.finished = True
        return text or ""

    def _created_s(self) -> int:
        return self._created or int(time.time())

    def usage(self) -> Usage:
        u = self._usage
        if not u:
            return (None, None)
        pt, ct = u.get("prompt_tokens"), u.get("completion_tokens")
        return (pt if isinstance(pt, int) else None, ct if isinstance(ct, int) else None)


class ChatAssembler(OpenAIStreamAssembler):
    """Accumulates chat.completion.chunk events into one chat.completion body."""

    __slots__ = ("_role", "_tools")

    def __init__(self) -> None:
        super().__init__()
        self._role = "assistant"
        self._tools: dict[int, dict[str, Any]] = {}  # streamed tool calls by index

    def _on_choice(self, choice: dict[str, Any]) -> Any:
        delta = choice.get("delta") or {}
        tool_calls = delta.get("tool_calls")
        if tool_calls:
            self._add_tool_calls(tool_calls)
        return delta.get("content")

    def _on_whole_choice(self, choice: dict[str, Any]) -> Any:
        message = choice.get("message") or {}
        for i, tc in enumerate(message.get("tool_calls") or []):
            self._tools[i] = tc
        return message.get("content")

    def _add_tool_calls(self, deltas: list[dict[str, Any]]) -> None:
        """Tool calls stream as fragments keyed by index: concatenate name and arguments."""
        for tc in deltas:
            entry = self._tools.setdefault(
                int(tc.get("index", 0)),
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if tc.get("id"):
                entry["id"] = tc["id"]
            if tc.get("type"):
                entry["type"] = tc["type"]
            fn = tc.get("function") or {}
            for key in ("name", "arguments"):
                if fn.get(key):
                    entry["function"][key] += fn[key]

    def body(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self._role, "content": "".join(self._parts)}
        if self._tools:
            message["tool_calls"] = [self._tools[i] for i in sorted(self._tools)]
        return {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created_s(),
            "model": self._model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self._finish,
                }
            ],
            "usage": self._usage,
        }
