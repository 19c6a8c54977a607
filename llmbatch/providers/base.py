"""The provider contract: build a request, parse its event stream, assemble a body.

A provider knows one wire format (OpenAI chat, Anthropic Messages, ...), nothing of
HTTP libraries or files. Parsing state lives in a StreamAssembler, one per attempt.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import orjson

from llmbatch.config.model import ProviderConfig
from llmbatch.errors import (
    MalformedResponse,
    ProviderError,
    ProviderOverloaded,
    RejectedInStream,
    TruncatedStream,
)
from llmbatch.http.base import HTTPRequest
from llmbatch.providers.sse import Event, SSEDecoder
from llmbatch.records import PromptRecord

__all__ = ["Provider", "StreamAssembler", "Usage", "json_event", "stream_error"]

Usage = tuple[int | None, int | None]  # (input_tokens, output_tokens) as the server reported


class StreamAssembler(ABC):
    """Consumes the events of one streamed answer and builds the final body.

    ``feed`` takes raw body chunks (it owns the attempt's SSE decoder); ``on_event``
    takes events decoded elsewhere. Both return the answer's text deltas; reasoning
    deltas (a thinking block, ``reasoning_content``, a summary, ...) are appended to
    ``reasoning``, which the engine empties after each read (``take_reasoning``).
    Subclasses call ``super().__init__()``.
    """

    finished: bool = False
    # What ends a whole answer in this format, named when a stream is cut before it.
    end_marker: str = "[DONE]"

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self.reasoning: list[str] = []

    def limit_events(self, max_event_bytes: int) -> None:
        """Bound what one server-sent event may hold (AnswerTooLarge past it)."""
        self._decoder.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[str]:
        """Decode one body chunk; the content texts of the events it completes, in order
        (events that add no text are left out). Events after the end marker are ignored.

        Raises ProviderError (or a subclass) like ``on_event``.
        """
        texts: list[str] = []
        for event in self._decoder.feed(chunk):
            if self.finished:
                break
            text = self.on_event(event)
            if text:
                texts.append(text)
        return texts

    @abstractmethod
    def on_event(self, event: Event) -> str:
        """Take one event; return the content text it adds ("" if none).

        Raises ProviderError (or a subclass) for an error inside the stream or an
        event that cannot be parsed. Sets ``finished`` when the end marker arrives.
        """

    def end_of_body(self) -> None:
        """The body ended before ``finished`` was set.

        Formats with an end marker raise TruncatedStream naming it; a format without
        one (Gemini) decides here whether what arrived is a whole answer, and sets
        ``finished`` when it is.
        """
        raise TruncatedStream(f"stream ended without its end marker ({self.end_marker})")

    def take_reasoning(self) -> list[str]:
        """The reasoning texts (thinking, summaries) decoded since the last call, in order.

        Kept apart from the answer text ``feed`` returns; formats without reasoning
        return an empty list.
        """
        out = self.reasoning[:]
        self.reasoning.clear()
        return out

    def accept_body(self, obj: Any) -> str:
        """Take a whole non-streamed answer (a server that ignored ``stream: true``).

        Returns its text and sets ``finished``; raises ProviderError when ``obj`` is not
        an answer in this provider's shape.
        """
        raise MalformedResponse("this provider cannot read a non-streamed JSON answer")

    @abstractmethod
    def body(self) -> dict[str, Any]:
        """The assembled response body, in the provider's non-streaming shape."""

    @abstractmethod
    def usage(self) -> Usage:
        """Token usage reported by the server, (None, None) when it sent none."""

    def reasoning_tokens(self) -> int | None:
        """Reasoning tokens as the server's usage details count them (None if not sent)."""
        return None


class Provider(ABC):
    """One wire format. Instances are cheap and hold the profile and the API key."""

    kind: str = "base"

    def __init__(self, profile: ProviderConfig, api_key: str | None, base_url: str) -> None:
        self.profile = profile
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")

    @abstractmethod
    def build_request(self, record: PromptRecord) -> HTTPRequest:
        """The streaming POST for ``record`` (model and default params filled in)."""

    @abstractmethod
    def new_assembler(self, record: PromptRecord) -> StreamAssembler:
        """A fresh parser for one attempt's stream of ``record``."""

    def _merged_body(self, record: PromptRecord) -> dict[str, Any]:
        """Profile defaults, then the record's own parameters (the record wins)."""
        body: dict[str, Any] = {**self.profile.params, **record.body}
        if not body.get("model"):
            body["model"] = self.profile.model
        return body


def json_event(data: bytes) -> dict[str, Any]:
    """An event's data as a JSON object; MalformedResponse when it is not one."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MalformedResponse(f"stream event is not valid JSON: {data[:120]!r}") from None
    if not isinstance(obj, dict):
        raise MalformedResponse(f"stream event is not a JSON object: {data[:120]!r}")
    return obj


def stream_error(err: Any) -> ProviderError:
    """The exception for an error object found inside a 2xx stream (any provider).

    Overload is transient; a 4xx-class code (other than 429) or an invalid-request type
    means this request cannot succeed as written; anything else is retried.
    """
    if isinstance(err, dict):
        code = err.get("code")
        etype = str(err.get("type") or code or "error")
        msg = str(err.get("message") or etype)
    else:
        code, etype, msg = None, "error", str(err)
    text = f"error in stream: {etype}: {msg[:300]}"
    if "overloaded" in etype:
        return ProviderOverloaded(text)
    if (isinstance(code, int) and 400 <= code < 500 and code != 429) or etype in (
        "invalid_request_error",
        "BadRequestError",
    ):
        return RejectedInStream(text)
    return ProviderError(text)
