"""OpenAI-compatible chat completions (OpenAI, vLLM, llama.cpp, Ollama, Together, ...)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import orjson

from llmbatch.errors import MalformedResponse
from llmbatch.http.base import HTTPRequest
from llmbatch.providers.base import Provider, StreamAssembler, Usage, stream_error
from llmbatch.providers.deltas import finish_text, merge_delta, merge_parts
from llmbatch.providers.sse import Event
from llmbatch.records import PromptRecord

__all__ = [
    "REASONING_FIELDS",
    "ChatAssembler",
    "ChoiceState",
    "OpenAIChatProvider",
    "OpenAIStreamAssembler",
    "content_parts_text",
    "openai_stream_request",
]

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
    ``usage``, every choice by its ``index``, and ``[DONE]`` at the end.

    The body's top level is the first chunk's (``id``, ``created``, ``model`` as sent,
    provider extensions such as ``x_groq``, ``citations`` or ``provider`` included, as
    the SDK keeps them), with ``system_fingerprint`` from the last chunk (as the SDK) and
    ``usage`` from the last chunk that carried one. Subclasses accumulate each choice
    (``_new_choice``).
    """

    __slots__ = (
        "finished",
        "reasoning",
        "_top",
        "_last",
        "_usage",
        "_choices",
        "_whole",
        "_answer",
    )

    def __init__(self) -> None:
        super().__init__()
        self.finished = False
        self._top: dict[str, Any] | None = None
        self._last: dict[str, Any] | None = None
        self._usage: Any = None
        self._choices: dict[int, ChoiceState] = {}
        self._whole: dict[str, Any] | None = None  # a non-streamed answer, kept as sent
        # Chat: the text pieces of choice 0 once it streams text (the hot path's target).
        self._answer: list[str] | None = None

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

    def on_event(self, event: Event) -> str:
        data = event.data
        if data == _DONE:
            self.finished = True
            return ""
        return self._on_json(data)

    def _on_json(self, data: bytes) -> str:
        """One JSON chunk of the stream: the answer text it adds ("" if none)."""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise MalformedResponse(f"stream chunk is not valid JSON: {data[:120]!r}") from None
        if chunk.__class__ is not dict:
            raise MalformedResponse(f"stream chunk is not a JSON object: {data[:120]!r}")
        err = chunk.get("error")
        if err is not None:
            raise stream_error(err)
        if self._top is None:
            self._top = chunk
        self._last = chunk
        usage = chunk.get("usage")
        if usage is not None:
            self._usage = usage
        choices = chunk.get("choices")
        if not choices:
            return ""
        answer = self._answer
        if answer is not None and len(choices) == 1:
            # The hot path, inline: choice 0 again, with a delta that is only more text.
            choice = choices[0]
            delta = choice.get("delta")
            if (
                delta.__class__ is dict
                and len(delta) == 1
                and choice.get("index") == 0
                and not choice.get("finish_reason")
                and choice.get("logprobs") is None
            ):
                content = delta.get("content")
                if content.__class__ is str:
                    answer.append(content)
                    return content
        try:
            return self._on_choices(choices)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            raise MalformedResponse(f"unexpected chunk shape: {data[:120]!r}") from None

    def _on_choices(self, choices: list[dict[str, Any]]) -> str:
        """The choices of one chunk: the answer text they add."""
        if len(choices) == 1:
            return self._on_choice(choices[0])
        return "".join([self._on_choice(c) for c in choices])

    def _on_choice(self, choice: dict[str, Any]) -> str:
        index = choice.get("index", 0)
        acc = self._choices.get(index)
        if acc is None:
            acc = self._choices[index] = self._new_choice(choice, index == 0)
        else:
            reason = choice.get("finish_reason")
            if reason:
                acc.fields["finish_reason"] = reason
            logprobs = choice.get("logprobs")
            if logprobs is not None:
                acc.add_logprobs(logprobs)
        return acc.add(choice, self.reasoning)

    @abstractmethod
    def _new_choice(self, first: dict[str, Any], is_answer: bool) -> ChoiceState:
        """The accumulator of a choice first seen in ``first`` (its chunk's choice);
        ``is_answer``: its text is the answer (index 0)."""

    def accept_body(self, obj: Any) -> str:
        if obj.__class__ is not dict:
            raise MalformedResponse("JSON answer is not an object")
        err = obj.get("error")
        if err is not None:
            raise stream_error(err)
        choices = obj.get("choices")
        if choices.__class__ is not list or not choices or choices[0].__class__ is not dict:
            raise MalformedResponse("JSON answer has no choices")
        text = self._whole_text(choices[0])
        if text is not None and text.__class__ is not str:
            raise MalformedResponse("answer text is not a string")
        self._whole = obj
        self._usage = obj.get("usage")
        self.finished = True
        return text or ""

    @abstractmethod
    def _whole_text(self, choice: dict[str, Any]) -> Any:
        """The answer text of a choice of a non-streamed answer."""

    def _object(self, kind: str) -> dict[str, Any]:
        """The body: the first chunk's top level, every choice, usage."""
        if self._whole is not None:
            return self._whole
        top = self._top or {}
        body: dict[str, Any] = {
            "id": top.get("id"),
            "object": kind,
            "created": top.get("created"),
            "model": top.get("model"),
            "choices": [self._choices[i].body(i) for i in sorted(self._choices)],
            "usage": self._usage,
            "system_fingerprint": (self._last or top).get("system_fingerprint"),
        }
        for key, value in top.items():
            if key not in body and key not in _NOT_CARRIED:
                body[key] = value
        return body

    def usage(self) -> Usage:
        u = self._usage
        if u.__class__ is not dict:
            return (None, None)
        pt, ct = u.get("prompt_tokens"), u.get("completion_tokens")
        return (pt if pt.__class__ is int else None, ct if ct.__class__ is int else None)

    def reasoning_tokens(self) -> int | None:
        u = self._usage
        if u.__class__ is not dict:
            return None
        details = u.get("completion_tokens_details")
        n = details.get("reasoning_tokens") if details.__class__ is dict else None
        if n is None:
            n = u.get("reasoning_tokens")  # Azure's DeepSeek: at the top of usage
        return n if n.__class__ is int else None


# Top-level keys of a chunk that are not the completion's: its choices, and the random
# padding OpenAI adds against length side channels (the SDK drops it too).
_NOT_CARRIED = frozenset({"choices", "obfuscation"})
# Keys of a chunk's choice that are deltas, not the choice's own fields.
_DELTA_KEYS = frozenset({"delta", "text"})


class ChoiceState(ABC):
    """One choice being accumulated, subclassed per stream grammar: the keys of its
    first chunk (``finish_reason`` updated, ``logprobs`` extended) and what its deltas
    add."""

    __slots__ = ("fields", "is_answer")

    def __init__(self, first: dict[str, Any], is_answer: bool) -> None:
        self.fields = {k: v for k, v in first.items() if k not in _DELTA_KEYS}
        self.is_answer = is_answer

    def add_logprobs(self, new: dict[str, Any]) -> None:
        """Extend the choice's logprobs lists (``content``, ``refusal``, ...) with ``new``'s."""
        have = self.fields.get("logprobs")
        if have is None:
            self.fields["logprobs"] = new
            return
        if have.__class__ is not dict or new.__class__ is not dict:
            return
        for key, items in new.items():
            if items:
                if have.get(key) is None:
                    have[key] = items
                elif have[key].__class__ is list and items.__class__ is list:
                    have[key].extend(items)

    @abstractmethod
    def add(self, choice: dict[str, Any], reasoning: list[str]) -> str:
        """Take one chunk's choice; the answer text it adds."""

    @abstractmethod
    def body(self, index: int) -> dict[str, Any]:
        """The choice in the non-streaming shape."""


class ChatAssembler(OpenAIStreamAssembler):
    """Accumulates ``chat.completion.chunk`` events into one ``chat.completion`` body.

    Each choice's message is merged from its deltas: ``content`` (null if only null was
    sent; Mistral's list of typed parts kept as a list), ``role`` only if sent, and
    every other field (``refusal``, ``tool_calls``, ``reasoning_content``,
    ``reasoning``, ``reasoning_details``, ``annotations``, extensions) by the SDK's
    merge rule (deltas.py). Reasoning text (``reasoning_content``, ``reasoning``,
    Mistral thinking parts) also goes to ``reasoning`` as it arrives.
    """

    __slots__ = ()

    def _on_choices(self, choices: list[dict[str, Any]]) -> str:
        text = super()._on_choices(choices)
        if self._answer is None:
            first = self._choices.get(0)
            if isinstance(first, _ChatChoice) and first.state == _TEXT:
                # From now on, more text of choice 0 takes the envelope's hot path.
                self._answer = first.text
        return text

    def _new_choice(self, first: dict[str, Any], is_answer: bool) -> ChoiceState:
        return _ChatChoice(first, is_answer)

    def _whole_text(self, choice: dict[str, Any]) -> Any:
        message = choice.get("message") or {}
        content = message.get("content")
        thought = ""
        if content.__class__ is list:
            content, thought = content_parts_text(content)
        for key in REASONING_FIELDS:
            value = message.get(key)
            if value and value.__class__ is str:
                thought += value
                break
        if thought:
            self.reasoning.append(thought)
        return content

    def body(self) -> dict[str, Any]:
        return self._object("chat.completion")


# What a chat message's content holds so far.
_ABSENT, _NULL, _TEXT, _PARTS = 0, 1, 2, 3
# Delta fields whose text is reasoning, in the shapes providers stream it.
REASONING_FIELDS = ("reasoning_content", "reasoning")


class _ChatChoice(ChoiceState):
    __slots__ = ("text", "state", "parts", "message")

    def __init__(self, first: dict[str, Any], is_answer: bool) -> None:
        super().__init__(first, is_answer)
        self.text: list[str] = []
        self.state = _ABSENT
        self.parts: list[Any] = []
        self.message: dict[str, Any] = {}

    def add(self, choice: dict[str, Any], reasoning: list[str]) -> str:
        delta = choice.get("delta")
        if not delta:
            return ""
        content = delta.get("content")
        if content.__class__ is str and len(delta) == 1 and self.state == _TEXT:
            self.text.append(content)  # only more text (of another choice than 0)
            return content if self.is_answer else ""
        answer = ""
        rest = delta
        if "content" in delta:
            answer = self._content(content, reasoning)
            rest = {k: v for k, v in delta.items() if k != "content"}
        for key in REASONING_FIELDS:  # the first one present (some send both, the same)
            thought = rest.get(key)
            if thought and thought.__class__ is str:
                if self.is_answer:
                    reasoning.append(thought)
                break
        if rest:
            merge_delta(self.message, rest)
        return answer if self.is_answer else ""

    def _content(self, content: Any, reasoning: list[str]) -> str:
        if content.__class__ is str:
            if self.state == _PARTS:
                if not content:
                    return ""
                content = [{"type": "text", "text": content}]
            else:
                self.state = _TEXT
                self.text.append(content)
                return content
        if content is None:
            if self.state == _ABSENT:
                self.state = _NULL
            return ""
        if content.__class__ is not list:
            raise MalformedResponse(f"delta content is neither text nor parts: {content!r:.80}")
        if self.state == _TEXT:  # text first, then parts: the text becomes a part
            self.parts = [{"type": "text", "text": "".join(self.text)}]
            self.text = []
        self.state = _PARTS
        merge_parts(self.parts, content)
        answer, thought = content_parts_text(content)
        if thought:
            reasoning.append(thought)
        return answer

    def body(self, index: int) -> dict[str, Any]:
        message: dict[str, Any] = {}
        merged = finish_text(self.message)  # text merged from deltas is kept as pieces
        role = merged.get("role")
        if role is not None:
            message["role"] = role
        if self.state == _TEXT:
            message["content"] = "".join(self.text)
        elif self.state == _PARTS:
            message["content"] = finish_text(self.parts)
        else:
            message["content"] = None
        for key, value in merged.items():
            if key != "role":
                message[key] = value
        out = {"index": index, "message": message, "finish_reason": None}
        out.update(self.fields)
        out["message"] = message
        return out


def content_parts_text(parts: list[Any]) -> tuple[str, str]:
    """(answer text, reasoning text) of a list of typed content parts: ``text`` parts
    are the answer; ``thinking`` parts (Mistral: a list of text parts, or a string)
    are reasoning."""
    answer: list[str] = []
    thought: list[str] = []
    for part in parts:
        if part.__class__ is not dict:
            continue
        kind = part.get("type")
        if kind == "text" and part.get("text").__class__ is str:
            answer.append(part["text"])
        elif kind == "thinking":
            inner = part.get("thinking")
            if inner.__class__ is str:
                thought.append(inner)
            elif inner.__class__ is list:
                thought.append(content_parts_text(inner)[0])
    return "".join(answer), "".join(thought)
