"""Incremental, byte-level Server-Sent Events decoder (no I/O).

Follows the WHATWG "event stream interpretation" rules:
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

Data stays as bytes so providers can hand it straight to orjson; ``Event.text``
decodes it as UTF-8 with U+FFFD replacement, as the spec asks. The cost is linear in the
bytes fed: pending partial lines are kept as a list of pieces and joined once, when their
line ends. What is held between chunks (a line not yet ended, the data lines of an event
not yet dispatched) is bounded by ``max_event_bytes``: a server sending one endless line
or event gets AnswerTooLarge, never unbounded memory. Whole events within one chunk (what
servers send) are never counted, so the bound costs nothing on the common path.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmbatch.errors import AnswerTooLarge

__all__ = ["Event", "SSEDecoder"]

_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class Event:
    """One dispatched event. ``event`` defaults to "message" as per the spec."""

    data: bytes
    event: str = "message"
    id: str = ""
    retry_ms: int | None = None

    @property
    def text(self) -> str:
        """The data decoded as UTF-8, invalid bytes replaced by U+FFFD."""
        return self.data.decode("utf-8", errors="replace")


class SSEDecoder:
    """Feed raw body bytes in chunks of any size; get complete events back.

    ``feed`` returns Event objects; ``feed_data`` only their data, for consumers that
    read the event type from the data itself (OpenAI, Anthropic), and skips building an
    object per event. Both follow the same rules and keep the same state.
    """

    __slots__ = (
        "_pending",
        "_skip_lf",
        "_started",
        "_data",
        "_event",
        "_last_id",
        "_retry",
        "_plain",
        "_held",
        "max_event_bytes",
    )

    def __init__(self, max_event_bytes: int | None = None) -> None:
        # Between events, with nothing pending: a chunk of whole "data: ..." events
        # (what servers send) can be split at once. True at the start too: such a chunk
        # begins with "data: ", so it has no BOM to strip.
        self._plain = True
        self._pending: list[bytes] = []
        self._skip_lf = False
        self._started = False
        self._data: list[bytes] = []
        self._event = ""
        self._last_id = ""
        self._retry: int | None = None
        # Bytes held for the event being built: pending line pieces and its data lines.
        self._held = 0
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[Event]:
        """Decode ``chunk``; return the events completed by it (possibly none)."""
        if self._plain and chunk[-2:] == b"\n\n" and chunk[:6] == b"data: ":
            body = chunk[6:-2]
            payloads = [body] if b"\n" not in body else _whole_data_events(body)
            if payloads is not None and b"\r" not in body:
                self._started = True
                last_id, retry = self._last_id, self._retry
                return [Event(data, "message", last_id, retry) for data in payloads]
        split = self._split(chunk)
        if split is None:
            return []
        blocks, rest = split
        events: list[Event] = []
        # Only the first block can continue an event begun in an earlier chunk.
        clean = not self._data and not self._event
        for block in blocks:
            # The hot path: a block that is one "data: ..." line, then the blank line.
            if clean and block[:6] == b"data: " and b"\n" not in block:
                events.append(Event(block[6:], "message", self._last_id, self._retry))
            else:
                self._block(block, events)
                clean = True
        if rest:
            self._rest(rest, events)
        self._plain = not (self._pending or self._data or self._event or self._skip_lf)
        return events

    def feed_data(self, chunk: bytes) -> list[bytes]:
        """Like ``feed``, but only the data of each event completed by ``chunk``."""
        if self._plain and chunk[-2:] == b"\n\n" and chunk[:6] == b"data: ":
            body = chunk[6:-2]
            payloads = [body] if b"\n" not in body else _whole_data_events(body)
            if payloads is not None and b"\r" not in body:
                self._started = True
                return payloads
        split = self._split(chunk)
        if split is None:
            return []
        blocks, rest = split
        out: list[bytes] = []
        clean = not self._data and not self._event
        for block in blocks:
            if clean and block[:6] == b"data: " and b"\n" not in block:
                out.append(block[6:])
            else:
                events: list[Event] = []
                self._block(block, events)
                out.extend([e.data for e in events])
                clean = True
        if rest:
            events = []
            self._rest(rest, events)
            out.extend([e.data for e in events])
        self._plain = not (self._pending or self._data or self._event or self._skip_lf)
        return out

    def close(self) -> list[Event]:
        """End of stream. An event without its terminating blank line is discarded."""
        self._pending = []
        self._data.clear()
        self._event = ""
        self._held = 0
        self._plain = False  # fed again after close(): the general rules decide
        return []

    def _split(self, chunk: bytes) -> tuple[list[bytes], bytes] | None:
        """Normalise line endings and cut ``chunk`` (with what was pending) into the
        blocks that a blank line ends, plus the rest; None when no line ended."""
        if not chunk:
            return None
        self._plain = False  # until the caller has seen the state clean again
        if not self._started:
            # Strip one leading BOM, which may itself arrive split over chunks.
            head = b"".join(self._pending) + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._pending = [head] if head else []
                return None
            self._pending = []
            self._started = True
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if self._skip_lf:
            # A CR ended the previous chunk; a LF opening this one belongs to it (CRLF).
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            # Only CRLF, CR and LF end lines (not the other Unicode separators).
            if chunk[-1:] == b"\r":
                self._skip_lf = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            if chunk:
                self._pending.append(chunk)
                self._hold(len(chunk))
            return None
        if self._pending:
            # Pending pieces are joined once, when their line ends: linear in the bytes.
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending = []
        blocks = chunk.split(b"\n\n")
        self._held = sum(map(len, self._data))  # the pending pieces were joined
        return blocks, blocks.pop()

    def _block(self, block: bytes, events: list[Event]) -> None:
        """The lines of ``block``, then the blank line that ended it."""
        for line in block.split(b"\n"):
            self._line(line, events)
        self._dispatch(events)

    def _rest(self, rest: bytes, events: list[Event]) -> None:
        """What follows the last blank line: whole lines now, the partial one pending."""
        end = rest.rfind(b"\n")
        if end >= 0:
            for line in rest[:end].split(b"\n"):
                self._line(line, events)
            rest = rest[end + 1 :]
        if rest:
            self._pending.append(rest)
            self._hold(len(rest))

    def _line(self, line: bytes, events: list[Event]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[0] == 0x3A:  # ":" starts a comment (keep-alive pings)
            return
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
            self._hold(len(value))
        elif field == b"event":
            self._event = value.decode("utf-8", errors="replace")
        elif field == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8", errors="replace")
        elif field == b"retry":
            if value and value.isdigit():
                self._retry = int(value)
        # Unknown fields are ignored.

    def _hold(self, n: int) -> None:
        """Count ``n`` more bytes held for the current event; past the bound, stop."""
        self._held += n
        limit = self.max_event_bytes
        if limit is not None and self._held > limit:
            raise AnswerTooLarge(
                f"max_event_bytes: one server-sent event passed {limit} bytes (a line or an "
                "event without its end); ended by the client",
                bound="max_event_bytes",
            )

    def _dispatch(self, events: list[Event]) -> None:
        data = self._data
        event_type = self._event
        self._event = ""
        self._held = 0
        if not data:
            return
        events.append(
            Event(
                data[0] if len(data) == 1 else b"\n".join(data),
                event_type or "message",
                self._last_id,
                self._retry,
            )
        )
        data.clear()


_SEP = b"\n\ndata: "


def _whole_data_events(body: bytes) -> list[bytes] | None:
    """The payloads when ``b"data: " + body + b"\\n\\n"`` is nothing but whole
    ``data: ...`` events of one line each (what streaming servers send); None otherwise.

    Every LF must then be one of the two that end each event, so counting them proves
    the shape: two scans and one split in C, no Python per event. (The caller checks
    that there is no CR.)
    """
    n_sep = body.count(_SEP)
    if body.count(b"\n") != 2 * n_sep:
        return None
    return body.split(_SEP)
