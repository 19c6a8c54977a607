"""llmbatch's exception hierarchy.

Every error that crosses a module boundary is one of these; library exceptions
(aiohttp, httpx, OSError, ...) are mapped at the edge where they occur. Only the
CLI turns them into messages and exit codes.

    LLMBatchError
    ├── ConfigError                 bad config.toml / flags / missing API key env var
    ├── InputError(path, line_no)   a JSONL line or file that cannot become requests
    │   └── UnfinishedLine          the last line, still being written: left for the next run
    ├── RunDirError                 run directory locked, unreadable or from another job
    ├── OutputError                 writing results failed during a run (disk full, ...)
    ├── WrongEventLoop              a Client used from an event loop other than its own
    ├── BudgetExceeded              the next request could pass --max-cost (nothing sent)
    └── RequestError                one attempt of one request failed
        ├── TransportError
        │   ├── ConnectError        could not connect (refused, DNS, TLS handshake)
        │   │   └── CertificateError  server's TLS certificate not trusted (fatal for the run)
        │   ├── PoolTimeout         no connection of the client's pool came free in time
        │   ├── ReadTimeout         no first byte / idle gap exceeded between chunks
        │   ├── DeadlineExceeded    the per-request total deadline passed
        │   └── StreamInterrupted   connection dropped mid-response
        ├── StatusError(status, retry_after_s, request_id, body)  (not httpx's HTTPStatusError:
        │                           this one is a RequestError, retried by its subclass)
        │   ├── RateLimited         429 (transient)
        │   ├── QuotaExhausted      429 insufficient_quota (fatal for the run)
        │   ├── AuthError           401 / 403 (fatal for the run)
        │   ├── ServerError         5xx, 408, 409 (transient)
        │   ├── Redirected          3xx: never followed (fatal for the request)
        │   └── BadRequest          400, 404, 413, 422, other 4xx (fatal for the request)
        └── ProviderError           bad answer inside a 2xx response
            ├── ProviderOverloaded  provider said "overloaded" in the stream (transient)
            ├── TruncatedStream     the stream ended without its end marker (transient)
            ├── MalformedResponse   a chunk that is not valid JSON / not the expected shape
            ├── RejectedInStream    a 4xx-class error inside the stream (fatal for the request)
            ├── AnswerTooLarge      the answer passed a size bound: max_answer_bytes,
            │                       max_event_bytes or max_tokens (fatal for the request)
            └── UnexpectedContentType  a 2xx that is neither an event stream nor a JSON
                                    answer, e.g. a proxy's HTML page (fatal for the request)
        UnexpectedError             anything else an attempt raised (fatal for the request)

Whether a RequestError is retried is decided by its type alone (see retry.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "AnswerTooLarge",
    "AuthError",
    "BadRequest",
    "BudgetExceeded",
    "CertificateError",
    "ConcurrencyCappedWarning",
    "ConfigError",
    "ConnectError",
    "DeadlineExceeded",
    "StatusError",
    "InputError",
    "InsecureTLSWarning",
    "LLMBatchError",
    "LLMBatchWarning",
    "MalformedResponse",
    "OutputError",
    "PoolTimeout",
    "ProviderError",
    "ProviderOverloaded",
    "ProxyIgnoredWarning",
    "QuotaExhausted",
    "RateLimited",
    "Redirected",
    "RejectedInStream",
    "ReadTimeout",
    "RequestError",
    "RunDirError",
    "ServerError",
    "StreamInterrupted",
    "TransportError",
    "TruncatedStream",
    "UnexpectedContentType",
    "UnexpectedError",
    "UnfinishedLine",
    "WrongEventLoop",
    "http_status_error",
]


class LLMBatchError(Exception):
    """Base of every error llmbatch raises on purpose."""


class LLMBatchWarning(UserWarning):
    """Base of the warnings the library gives where the CLI prints a warning line."""


class InsecureTLSWarning(LLMBatchWarning):
    """A Client was made with ``insecure=True``: TLS certificates are not verified."""


class ConcurrencyCappedWarning(LLMBatchWarning):
    """The open-file limit allows fewer requests in flight than asked: capped."""


class ProxyIgnoredWarning(LLMBatchWarning):
    """A proxy variable applies to the base URL, but llmbatch supports no proxy."""


class ConfigError(LLMBatchError):
    """The configuration (file, environment or flags) is unusable; nothing was sent."""


class InputError(LLMBatchError):
    """A prompt file or one of its lines cannot become a request."""

    def __init__(self, message: str, *, path: str, line_no: int | None = None) -> None:
        self.path = path
        self.line_no = line_no
        self.reason = message
        where = f"{path}:{line_no}" if line_no is not None else path
        super().__init__(f"{where}: {message}")


class UnfinishedLine(InputError):
    """The file's last line has no newline yet and is not complete JSON: a writer is
    still appending it. Not an error of the input: it is left for the next run."""


class RunDirError(LLMBatchError):
    """The run directory cannot be used (locked by another run, or made by another job)."""


class OutputError(LLMBatchError):
    """Writing to the run directory failed mid-run; the run stops (resumable)."""


class WrongEventLoop(LLMBatchError):
    """A Client (its connection pool, limiter and governor) belongs to the event loop that
    started it; it was used from another one. Nothing was sent or recorded."""


class BudgetExceeded(LLMBatchError):
    """The next request does not fit the cost budget (``max_cost``) even with nothing else
    in flight, or its model has no price to budget with; it was not sent."""


class RequestError(LLMBatchError):
    """One attempt of one request failed. ``code`` is the stable name used in records."""

    code = "request_error"


class TransportError(RequestError):
    """The connection failed; no usable HTTP response."""

    code = "transport_error"


class ConnectError(TransportError):
    """The connection could not be opened."""

    code = "connect_error"


class CertificateError(ConnectError):
    """TLS certificate verification failed: untrusted CA, wrong host name, expired.

    Systematic (every request to the host fails the same way), so the run stops
    instead of retrying; the message names the certificate problem.
    """

    code = "certificate_error"


class PoolTimeout(TransportError):
    """Every connection of the client's pool stayed busy for the whole wait (connect_s)."""

    code = "pool_timeout"


class ReadTimeout(TransportError):
    """No first byte in time, or the gap between two chunks exceeded the idle timeout."""

    code = "read_timeout"


class DeadlineExceeded(TransportError):
    """The whole request took longer than its total deadline."""

    code = "deadline_exceeded"


class StreamInterrupted(TransportError):
    """The connection dropped while the response was streaming."""

    code = "stream_interrupted"


class StatusError(RequestError):
    """The server answered with a non-2xx status."""

    code = "http_error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        retry_after_s: float | None = None,
        request_id: str | None = None,
        body: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        self.request_id = request_id
        self.body = body
        self.headers: Mapping[str, str] = headers or {}


class RateLimited(StatusError):
    """429: slow down and try again."""

    code = "rate_limited"


class QuotaExhausted(StatusError):
    """429 with insufficient_quota: retrying cannot help."""

    code = "quota_exhausted"


class AuthError(StatusError):
    """401/403: the key is wrong or lacks permission."""

    code = "auth_error"


class ServerError(StatusError):
    """5xx, 408 or 409: the server may succeed on another try."""

    code = "server_error"


class Redirected(StatusError):
    """3xx: a redirect, which llmbatch never follows (the request carries the API key and
    the prompt); ``location`` is where the server pointed."""

    code = "redirected"

    def __init__(self, message: str, *, location: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.location = location


class BadRequest(StatusError):
    """4xx other than the above: this request will never succeed as written."""

    code = "bad_request"


class ProviderError(RequestError):
    """The response was 2xx but its content is an error or unusable.

    ``status`` and ``request_id`` are those of the response it came in (set where the
    response is read; None when raised apart from one).
    """

    code = "provider_error"
    status: int | None = None
    request_id: str | None = None


class ProviderOverloaded(ProviderError):
    """The provider reported overload inside the stream."""

    code = "provider_overloaded"


class TruncatedStream(ProviderError):
    """The stream ended before its end marker."""

    code = "truncated_stream"


class MalformedResponse(ProviderError):
    """A chunk was not valid JSON or not of the expected shape."""

    code = "malformed_response"


class RejectedInStream(ProviderError):
    """The stream carried an error saying the request itself is invalid (a 4xx code)."""

    code = "rejected_in_stream"


class AnswerTooLarge(ProviderError):
    """The answer passed one of the bounds that keep memory finite whatever a server
    sends; ``bound`` names it (max_answer_bytes, max_event_bytes or max_tokens)."""

    code = "answer_too_large"

    def __init__(self, message: str, *, bound: str) -> None:
        super().__init__(message)
        self.bound = bound


class UnexpectedContentType(ProviderError):
    """A 2xx answer that is neither an event stream nor a JSON completion (an HTML page
    from a proxy or captive portal, a wrong base URL): retrying cannot help."""

    code = "unexpected_content_type"


class UnexpectedError(RequestError):
    """An attempt failed in a way no adapter or provider mapped; recorded, not retried."""

    code = "unexpected_error"


def _parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (delta-seconds or an HTTP-date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    secs = headers.get("retry-after")
    if secs is not None:
        try:
            return max(0.0, float(secs))
        except ValueError:
            return _seconds_until_http_date(secs)
    return None


def _seconds_until_http_date(value: str) -> float | None:
    """Seconds from now to an HTTP-date (RFC 9110 10.2.3), None when it is not one."""
    # Imported here: rare from LLM APIs, and email.utils is not free at start-up.
    from datetime import UTC
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # a date without a zone is in GMT, as HTTP-dates are
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def http_status_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    request_id: str | None = None,
    *,
    url: str = "",
) -> StatusError:
    """Build the right StatusError subclass for a non-2xx response to ``url``.

    ``headers`` must have lower-case keys; the message names ``url`` when given. The
    class is chosen from the status and, for 429, from the structured error code in the
    body (OpenAI's ``insufficient_quota``), so retry decisions never need to read messages.
    """
    # Kept whole (adapters read at most ERROR_BODY_LIMIT): messages are shortened only
    # after the engine redacted them (redaction.py), so no cut ever splits a key.
    text = body.decode("utf-8", errors="replace")
    retry_after_s = _parse_retry_after(headers)
    if retry_after_s is None and status in (429, 503):
        retry_after_s = _retry_delay_in_body(body)
    snippet = " ".join(text.split())
    if 300 <= status < 400:
        location = headers.get("location", "")
        return Redirected(
            f"HTTP {status} redirect to {location or '(no Location)'} not followed: llmbatch "
            "never follows redirects (the request carries the API key and the prompt); "
            "if the new address is right, use it as the base URL",
            status=status,
            request_id=request_id,
            body=text,
            headers=headers,
            location=location,
        )
    cls: type[StatusError]
    if status == 429:
        cls = QuotaExhausted if _is_quota_error(body) else RateLimited
    elif status in (401, 403) or (status == 400 and b"API_KEY_INVALID" in body):
        # Google APIs (Gemini) answer a wrong key with 400 INVALID_ARGUMENT, reason
        # API_KEY_INVALID: a bad key all the same, so the run stops.
        cls = AuthError
    elif status >= 500 or status in (408, 409):
        cls = ServerError
    else:
        cls = BadRequest
    head = f"HTTP {status} from {url}" if url else f"HTTP {status}"
    return cls(
        f"{head}: {snippet}" if snippet else head,
        status=status,
        retry_after_s=retry_after_s,
        request_id=request_id,
        body=text,
        headers=headers,
    )


def _retry_delay_in_body(body: bytes) -> float | None:
    """Seconds from a Google API error's ``RetryInfo`` detail (Gemini's 429s carry no
    Retry-After header): ``{"error": {"details": [{"@type": ".../google.rpc.RetryInfo",
    "retryDelay": "23s"}]}}``, the delay a protobuf Duration ("1.5s")."""
    if b"RetryInfo" not in body:
        return None
    import orjson

    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = payload.get("error") if isinstance(payload, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict) or not str(detail.get("@type", "")).endswith(
            "google.rpc.RetryInfo"
        ):
            continue
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                return None
    return None


def _is_quota_error(body: bytes) -> bool:
    import orjson

    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(payload, dict):
        return False
    err = payload.get("error")
    if isinstance(err, dict):
        return err.get("code") == "insufficient_quota" or err.get("type") == "insufficient_quota"
    return False
