"""Incremental, byte-level Server-Sent Events decoder (no I/O).

Follows the WHATWG "event stream interpretation" rules:
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation

Data stays as bytes so providers can hand it straight to orjson; ``Event.text``
decodes it as UTF-8 with U+FFFD replacement, as the spec asks. There is no line
length limit and the cost is linear in the bytes fed: pending partial lines are
kept as a list of pieces and joined once, when their line ends.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """Feed raw body bytes in chunks of any size; get complete events back."""

    __slots__ = ("_pending", "_skip_lf", "_started", "_data", "_event", "_last_id", "_retry")

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._skip_lf = False
        self._started = False
        self._data: list[bytes] = []
        self._event = ""
        self._last_id = ""
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """Decode ``chunk``; return the events completed by it (possibly none)."""
        if not chunk:
            return []
        if not self._started:
            # Strip one leading BOM, which may itself arrive split over chunks.
            head = b"".join(self._pending) + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._pending = [head] if head else []
                return []
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
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending = []
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
        events: list[Event] = []
        data = self._data
        for line in lines:
            # The hot path: "data: ..." lines and the blank line that ends an event.
            if line[:6] == b"data: ":
                data.append(line[6:])
            elif not line:
                if data:
                    events.append(
                        Event(
                            data[0] if len(data) == 1 else b"\n".join(data),
                            self._event or "message",
                            self._last_id,
                            self._retry,
                        )
                    )
                    data.clear()
                self._event = ""
            else:
                self._process_line(line, events)
        return events

    def close(self) -> list[Event]:
        """End of stream. An event without its terminating blank line is discarded."""
        self._pending = []
        self._data.clear()
        self._event = ""
        return []

    def _process_line(self, line: bytes, events: list[Event]) -> None:
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
        elif field == b"event":
            self._event = value.decode("utf-8", errors="replace")
        elif field == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8", errors="replace")
        elif field == b"retry":
            if value and value.isdigit():
                self._retry = int(value)
        # Unknown fields are ignored.

    def _dispatch(self, events: list[Event]) -> None:
        data = self._data  # cleared in place: feed() holds an alias to this list
        event_type = self._event
        self._event = ""
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
