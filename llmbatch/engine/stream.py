"""One attempt of one request: send it, read the answer, time it.

The answer is an SSE stream fed chunk by chunk to the provider's assembler (which decodes
it); the content deltas of each chunk go to ``on_text`` together, as they arrive. Two
other 2xx shapes are recognised by their content type: ``application/json`` (a server
that ignored ``stream: true``) is read whole and accepted when it is a completion;
anything else (an HTML page from a proxy or captive portal) fails the request with
UnexpectedContentType, never retried.

Every answer is bounded whatever the server sends (AnswerBounds): the bytes of the body,
one server-sent event (the decoder), and, when the request sets max_tokens, the text:
MAX_CHARS_PER_TOKEN characters per token plus TOKEN_MARGIN_CHARS, far above any tokenizer's
average, so only a server that ignores max_tokens (an endless answer) reaches it. The
attempt then fails with AnswerTooLarge, whose ``bound`` and message name the bound.

Keepalive is not progress: once content has started, SSE comments or empty events alone
do not count as activity, so a stream that only pings fails after ``idle_s`` without
content. Before the first token, queueing servers may ping for as long as they like
(llama.cpp sends ``: ping`` while a request waits); ``total_s`` still bounds the attempt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from llmbatch.clock import now
from llmbatch.config.model import Timeouts
from llmbatch.errors import (
    AnswerTooLarge,
    DeadlineExceeded,
    MalformedResponse,
    ProviderError,
    ReadTimeout,
    UnexpectedContentType,
)
from llmbatch.http.base import ClientAdapter, HTTPRequest, feed_chunks
from llmbatch.http.watchdog import within
from llmbatch.providers.base import StreamAssembler
from llmbatch.records import RequestMetrics

__all__ = ["JSON_ANSWER_LIMIT", "AnswerBounds", "LiveCounts", "stream_attempt"]

# After the end marker, how long the rest of a response may take to arrive (for reuse).
DRAIN_AFTER_END_S = 1.0
# Gaps of the deltas that came in the same read as the one before them.
_ZEROS = [0.0] * 256
# The largest non-streamed JSON answer read into memory.
JSON_ANSWER_LIMIT = 16 * 1024 * 1024
# The text a request's max_tokens allows, client-side: generous, so only a server that
# ignores max_tokens meets it (real tokens average ~4 characters; the longest are ~100).
MAX_CHARS_PER_TOKEN = 32
TOKEN_MARGIN_CHARS = 1024
# Where a request says how many tokens it may get (OpenAI chat, Responses, Anthropic).
_MAX_TOKENS_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class AnswerBounds:
    """What one attempt's answer may take before the client ends it (None: no bound)."""

    max_bytes: int | None = None
    max_event_bytes: int | None = None
    max_text_chars: int | None = None
    max_tokens: int | None = None  # the request's own, for the message

    @classmethod
    def for_request(
        cls,
        body: Mapping[str, Any],
        defaults: Mapping[str, Any],
        max_bytes: int,
        max_event_bytes: int,
    ) -> AnswerBounds:
        """The bounds of a request: its ``body``'s max_tokens, else the profile's
        ``defaults`` (as the request is sent), plus the byte bounds."""
        cap: Any = None
        for params in (body, defaults):
            for key in _MAX_TOKENS_KEYS:
                if key in params:
                    cap = params[key]
                    break
            else:
                continue
            break
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            cap = None
        chars = cap * MAX_CHARS_PER_TOKEN + TOKEN_MARGIN_CHARS if cap is not None else None
        return cls(max_bytes, max_event_bytes, chars, cap)


NO_BOUNDS = AnswerBounds()


class LiveCounts:
    """Counters a progress display reads while requests run (shared by one engine)."""

    __slots__ = ("tokens", "in_flight", "retrying", "failed_attempts", "last_error")

    def __init__(self) -> None:
        self.tokens = 0  # content events received, failed attempts subtracted
        self.in_flight = 0  # requests holding a slot
        self.retrying = 0  # requests waiting to retry after a failed attempt
        self.failed_attempts = 0  # attempts that failed (retried or not)
        self.last_error: str | None = None  # error class of the last failed attempt


def _ignore(texts: list[str]) -> None:
    """The default ``on_reasoning``: reasoning text goes nowhere."""


async def stream_attempt(
    client: ClientAdapter,
    request: HTTPRequest,
    asm: StreamAssembler,
    on_text: Callable[[list[str]], None],
    m: RequestMetrics,
    timeouts: Timeouts,
    on_headers: Callable[[Mapping[str, str]], None],
    live: LiveCounts,
    bounds: AnswerBounds = NO_BOUNDS,
    on_reasoning: Callable[[list[str]], None] = _ignore,
    timer: Callable[[], float] = now,
) -> str | None:
    """Run one attempt into ``asm`` and ``m``; return the provider's request id.

    ``on_text`` gets the answer deltas of each read, in order, ``on_reasoning`` its
    reasoning deltas. ``on_headers`` sees the response headers as soon as they arrive
    (rate limits, the admission ramp); ``live.tokens`` counts token events of either kind as
    they arrive (progress display); ``timer`` times it all. ``bounds``: past one of them the
    attempt fails with AnswerTooLarge. A ProviderError raised from the body carries the
    response's status and request id.
    """
    perf = timer
    if bounds.max_event_bytes is not None:
        asm.limit_events(bounds.max_event_bytes)
    # Counted down per read: one subtraction and one comparison each.
    bytes_left = bounds.max_bytes if bounds.max_bytes is not None else -1
    chars_left = bounds.max_text_chars if bounds.max_text_chars is not None else -1
    total_s = timeouts.total_s
    idle_s = timeouts.idle_s
    sent = perf()
    first = last = answer_at = 0.0
    itl = m.itl_s
    status: int | None = None
    rid: str | None = None
    try:
        # One watchdog entry, not a timer per attempt (watchdog.py).
        with within(total_s):
            async with client.stream(request) as resp:
                rid = resp.request_id
                status = resp.status
                m.http_version = resp.http_version
                on_headers(resp.headers)
                chunks = resp.chunks
                ctype = resp.headers.get("content-type", "")
                if ctype and not _is_event_stream(ctype):
                    text = await _whole_answer(ctype, chunks, asm)
                    first = last = answer_at = perf()
                    if asm.reasoning:
                        m.chunks = m.reasoning_chunks = 1
                        on_reasoning(asm.reasoning[:])
                        asm.reasoning.clear()
                    if text:
                        m.chunks += 1
                        live.tokens += 1
                        on_text([text])
                else:
                    feed = asm.feed
                    thoughts = asm.reasoning  # emptied in place after each read

                    def on_chunk(chunk: bytes) -> bool:
                        """One read: its deltas arrived together, so they share one timestamp
                        (the gaps between them are 0) and one write. True once complete."""
                        nonlocal first, last, answer_at, bytes_left, chars_left
                        if bytes_left >= 0:
                            bytes_left -= len(chunk)
                            if bytes_left < 0:
                                raise _too_large(bounds, "max_answer_bytes")
                        texts = feed(chunk)
                        if texts or thoughts:
                            now = perf()
                            n = len(texts) + len(thoughts)
                            if chars_left >= 0:  # reasoning counts against max_tokens too
                                used = len(texts[0]) if n == 1 and texts else sum(map(len, texts))
                                if thoughts:
                                    used += sum(map(len, thoughts))
                                chars_left -= used
                                if chars_left < 0:
                                    raise _too_large(bounds, "max_tokens")
                            if m.chunks:
                                itl.append(now - last)
                            else:
                                first = now
                            if n > 1:
                                itl.extend(_ZEROS[: n - 1] if n <= len(_ZEROS) else [0.0] * (n - 1))
                            last = now
                            m.chunks += n
                            live.tokens += n
                            if thoughts:
                                m.reasoning_chunks += len(thoughts)
                                on_reasoning(thoughts[:])
                                thoughts.clear()
                            if texts:
                                if not answer_at:
                                    answer_at = now
                                on_text(texts)
                        elif m.chunks and perf() - last > idle_s:
                            raise ReadTimeout(
                                f"no content for {idle_s:g}s (only keepalive pings) after "
                                f"{m.chunks} tokens"
                            )
                        return asm.finished

                    if resp.push is not None:
                        # Each chunk handled where it arrives, no await per read; the adapter
                        # drains the rest after the end marker.
                        await resp.push(on_chunk, DRAIN_AFTER_END_S)
                    else:
                        await feed_chunks(chunks, on_chunk, DRAIN_AFTER_END_S)
            if not asm.finished:
                asm.end_of_body()  # names the format's end marker, or accepts (Gemini)
    except TimeoutError:
        raise DeadlineExceeded(f"request took longer than {total_s:g}s") from None
    except ProviderError as exc:
        # An error inside a 2xx answer: the record says which status it came with.
        exc.status, exc.request_id = status, rid
        raise
    if m.chunks:
        m.ttft_s = first - sent
        m.e2el_s = last - sent
    if answer_at:
        m.answer_ttft_s = answer_at - sent
    return rid


def _too_large(bounds: AnswerBounds, bound: str) -> AnswerTooLarge:
    """The error that ends an answer at ``bound``, saying which bound and its value."""
    if bound == "max_tokens":
        what = (
            f"the answer's text passed {bounds.max_text_chars} characters, far more than the "
            f"request's max_tokens ({bounds.max_tokens}) allows "
            f"({MAX_CHARS_PER_TOKEN} per token + {TOKEN_MARGIN_CHARS})"
        )
    else:
        what = f"the answer passed {bounds.max_bytes} bytes"
    return AnswerTooLarge(f"{bound}: {what}; ended by the client", bound=bound)


def media_type(ctype: str) -> str:
    """The media type of a Content-Type value, lower-cased: type and subtype are
    case-insensitive (RFC 9110 8.3.1), and parameters such as charset do not count."""
    return ctype.partition(";")[0].strip().lower()


def _is_event_stream(ctype: str) -> bool:
    # The usual spelling first: one C call per response.
    return ctype.startswith("text/event-stream") or media_type(ctype) == "text/event-stream"


async def _whole_answer(ctype: str, chunks: AsyncIterator[bytes], asm: StreamAssembler) -> str:
    """A 2xx that is not an event stream: a JSON completion is the answer, else an error."""
    if media_type(ctype) not in ("application/json", "application/problem+json"):
        raise UnexpectedContentType(
            f"the server answered 200 with content type {ctype!r}, not an event stream "
            "(a proxy or login page, or a wrong base URL?)"
        )
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size > JSON_ANSWER_LIMIT:
            raise UnexpectedContentType(
                f"non-streamed JSON answer larger than {JSON_ANSWER_LIMIT} bytes"
            )
    raw = b"".join(parts)
    try:
        return asm.accept_body(orjson.loads(raw))
    except (orjson.JSONDecodeError, MalformedResponse):
        # Not a completion (a JSON error page from a gateway, a wrong endpoint): fatal.
        raise UnexpectedContentType(
            f"the server answered 200 with {ctype!r} that is not a completion: {raw[:120]!r}"
        ) from None
