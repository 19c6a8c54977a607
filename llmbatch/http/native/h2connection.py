"""One HTTP/2 connection of ``--client native --http2``: many streams on one socket.

The protocol is the ``h2`` library (python-hyper, sans-I/O); this module moves its
bytes and turns its events into responses (``H2Stream``, whose body is delivered as the
HTTP/1.1 exchange's is: body.py).

GOAWAY is read here, not by h2: h2 (4.x) puts its whole connection in the CLOSED state
when GOAWAY arrives and then refuses every later frame ("Invalid input
ConnectionInputs.RECV_DATA in state ConnectionState.CLOSED"), also the frames of the
streams the server promised to finish, which is how httpcore loses them. So the bytes
read are cut at frame boundaries (the 9-byte frame header gives the length) and a
GOAWAY frame is kept from h2: the connection takes no new stream, the streams above its
``last_stream_id`` fail with ``Refused`` (never processed, RFC 9113 6.8: the adapter
sends them again on another connection, not counted as a failed attempt), the others go
on, and the connection closes once they are done.

Flow control: each stream may receive ``STREAM_WINDOW`` bytes ahead of its reader and
the connection ``CONNECTION_WINDOW``; data is acknowledged as it is delivered (push) or
taken (chunks), so a slow reader holds back its own stream only.

Errors: a stream reset by the server is StreamInterrupted, unless with REFUSED_STREAM
before any answer (``Refused``, re-sent); a protocol error or a connection lost fails
its streams with StreamInterrupted. Nothing of h2's own escapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from typing import TYPE_CHECKING, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from llmbatch.errors import StreamInterrupted
from llmbatch.http.base import merge_headers
from llmbatch.http.native.body import Body
from llmbatch.http.native.wire import Origin

if TYPE_CHECKING:
    from llmbatch.http.native.h2pool import H2Pool

__all__ = ["CONNECTION_WINDOW", "STREAM_WINDOW", "H2Connection", "H2Stream", "Refused"]

# Bytes a stream may receive ahead of its reader (SETTINGS_INITIAL_WINDOW_SIZE), and the
# connection-wide window: large, so one slow reader never holds back the others.
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 256 * 1024 * 1024
_GOAWAY = 0x7  # the frame type
_REFUSED = h2.errors.ErrorCodes.REFUSED_STREAM
_CANCEL = h2.errors.ErrorCodes.CANCEL


class Refused(Exception):
    """The server never processed this stream (above GOAWAY's last_stream_id, or reset
    with REFUSED_STREAM): it may be sent again, and it was no failed attempt."""


class H2Stream(Body):
    """One request on an HTTP/2 connection: its head, then its body, as they arrive."""

    __slots__ = ("conn", "sid", "status", "headers", "out", "unacked", "closed")

    http_version = "HTTP/2"

    def __init__(self, conn: H2Connection, sid: int, idle_s: float) -> None:
        super().__init__(conn.loop, idle_s)
        self.conn = conn
        self.sid = sid
        self.status = 0
        self.headers: dict[str, str] = {}
        self.out = memoryview(b"")  # request body not yet sent (flow control)
        self.unacked = 0  # flow-controlled bytes received, not yet handed back
        self.closed = False  # gone from the connection (ended, reset or refused)

    # -- from the connection -----------------------------------------------------------

    def on_head(self, raw: list[tuple[bytes, bytes]]) -> None:
        """The response's HEADERS (``raw``: h2's pairs, pseudo-headers included)."""
        status = 0
        fields = []
        for name, value in raw:
            if name == b":status":
                status = int(value)
            elif not name.startswith(b":"):
                fields.append((name.decode("latin-1"), value.decode("utf-8", "replace")))
        headers = self.headers = merge_headers(fields)
        self.status = status
        self.decode_as(headers.get("content-encoding"))
        self.last = self.loop.time()
        if not self.head_fut.done():
            self.head_fut.set_result(None)

    def on_data(self, data: bytes, flow_length: int) -> None:
        """A DATA frame's payload (``flow_length``: what it counted against the windows)."""
        self.last = self.loop.time()
        self.unacked += flow_length
        if self.inflate is not None:
            try:
                data = self.inflate.decompress(data)
            except zlib.error as exc:
                self.fail(StreamInterrupted(f"invalid response body: {exc}"))
                self.conn.cancel(self)
                return
        if data:
            self._deliver(data)
        if self.on_chunk is not None or self.error is not None:
            self._taken()  # delivered to the caller: the credit goes back now

    def on_end(self) -> None:
        """END_STREAM: the body is complete."""
        if not self.head_fut.done():
            self.fail(StreamInterrupted("HTTP/2 stream ended without a response"))
            return
        self._end_body()

    def fail(self, err: BaseException) -> None:
        """The stream failed: before the head, the adapter's wait raises ``err``."""
        if not self.head_fut.done():
            self.head_fut.set_exception(err)
        elif not self.body_done:
            self._fail(err)

    def _taken(self) -> None:
        n, self.unacked = self.unacked, 0
        if n:
            self.conn.acknowledge(self, n)

    def cancel(self) -> None:
        """The caller is done with it before its end: reset it (CANCEL), once."""
        self.conn.cancel(self)


class H2Connection(asyncio.Protocol):
    """An asyncio Protocol: one TLS connection to ``origin`` speaking h2 (ALPN)."""

    def __init__(self, pool: H2Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.streams: dict[int, H2Stream] = {}
        # Done when the server's SETTINGS came (or the connection closed before: ``closed``).
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.alpn: str | None = None
        self.draining = False  # GOAWAY came (or the connection failed): no new stream
        self.closed = False
        self.counted = False  # holds one of the pool's connection slots
        self.begun = 0  # streams opened on this connection
        self.idle_since = self.loop.time()
        self._rest = b""  # the start of a frame not yet whole

    # -- what the pool and the adapter call --------------------------------------------

    def room(self) -> int:
        """Streams this connection may still open (0 while draining or closed)."""
        if self.draining or self.closed:
            return 0
        return self.h2.remote_settings.max_concurrent_streams - len(self.streams)

    @property
    def max_streams(self) -> int:
        """Streams this connection carries at once: the server's SETTINGS, and at most
        the streams the origin serves per connection before its GOAWAY (when learned)."""
        return min(self.h2.remote_settings.max_concurrent_streams, self.pool.budget(self.origin))

    def begin(self, headers: list[tuple[bytes, bytes]], body: bytes, idle_s: float) -> H2Stream:
        """Open a stream with this request; raises Refused when that cannot be done."""
        try:
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, headers, end_stream=not body)
        except (h2.exceptions.NoAvailableStreamIDError, h2.exceptions.TooManyStreamsError):
            self.retire()
            raise Refused("no stream available on this connection") from None
        except h2.exceptions.ProtocolError as exc:  # the connection is not usable
            self._failed(f"HTTP/2 protocol error: {exc}")
            raise Refused("connection failed") from None
        stream = self.streams[sid] = H2Stream(self, sid, idle_s)
        if body:
            stream.out = memoryview(body)
            self._send_body(stream)
        self._flush()
        self.begun += 1
        if self.begun >= self.pool.budget(self.origin):
            self.retire()  # its last stream before the server's GOAWAY: connect anew now
        return stream

    def acknowledge(self, stream: H2Stream, n: int) -> None:
        """``n`` flow-controlled bytes of ``stream`` were read: credit them back."""
        if self.closed:
            return
        self.h2.acknowledge_received_data(n, stream.sid)
        self._flush()

    def cancel(self, stream: H2Stream) -> None:
        """Reset ``stream`` (the caller gave up on it) unless it is already over."""
        if stream.closed:
            return
        self._forget(stream)
        if not self.closed:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.reset_stream(stream.sid, _CANCEL)
            if stream.unacked:  # what it never read still counts against the connection
                with contextlib.suppress(h2.exceptions.H2Error):
                    self.h2.acknowledge_received_data(stream.unacked, stream.sid)
                stream.unacked = 0
            self._flush()

    def retire(self) -> None:
        """Take no new stream; close once the streams in flight are done."""
        if not self.draining:
            self.draining = True
            self.pool.retired(self)
        if not self.streams:
            self.close()

    def close(self) -> None:
        """Close at once (streams still open fail as the connection is lost)."""
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True
        self.draining = True
        self.pool.drop(self)

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self.alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if self.alpn != "h2":
            return  # the adapter sees it and speaks HTTP/1.1 to this origin
        codes = h2.settings.SettingCodes
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                codes.ENABLE_PUSH: 0,
                codes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                codes.MAX_CONCURRENT_STREAMS: 0,  # nothing pushed to us
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
            self._rest = b""
        # Cut at frame boundaries; a GOAWAY frame is ours, the rest goes to h2.
        end = len(data)
        pos = start = 0
        while pos + 9 <= end:
            stop = pos + 9 + int.from_bytes(data[pos : pos + 3], "big")
            if stop > end:
                break
            if data[pos + 3] == _GOAWAY:
                if pos > start and not self._feed(data[start:pos]):
                    return
                self._goaway(data[pos + 9 : stop])
                start = stop
            pos = stop
        if pos < end:
            self._rest = data[pos:]
        if pos > start:
            self._feed(data if start == 0 and pos == end else data[start:pos])

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.draining = True
        why = f": {exc}" if exc else ""
        self._fail_all(f"connection closed{why}")
        if not self.ready.done():
            self.ready.set_result(None)  # whoever waits for it sees ``closed``
        self.pool.drop(self)

    # -- h2's events -------------------------------------------------------------------

    def _feed(self, data: bytes) -> bool:
        """Give ``data`` (whole frames) to h2 and act on its events; False if it failed."""
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._failed(f"HTTP/2 protocol error: {exc}")
            return False
        streams = self.streams
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.on_data(ev.data or b"", ev.flow_controlled_length or 0)
                else:  # a stream we reset: its data still counts against the connection
                    with contextlib.suppress(h2.exceptions.H2Error):
                        self.h2.acknowledge_received_data(
                            ev.flow_controlled_length or 0,
                            ev.stream_id,
                        )
            elif isinstance(ev, h2.events.ResponseReceived):
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.on_head(ev.headers or [])
            elif isinstance(ev, h2.events.StreamEnded):
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    self._forget(stream)
                    stream.on_end()
            elif isinstance(ev, h2.events.StreamReset):
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    self._forget(stream)
                    if ev.error_code == _REFUSED and not stream.head_fut.done():
                        stream.fail(Refused("stream refused by the server"))
                    else:
                        code = _code_name(ev.error_code)
                        stream.fail(StreamInterrupted(f"HTTP/2 stream reset by the server: {code}"))
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                if not self.ready.done():
                    self.ready.set_result(None)
                self._send_pending()
                self.pool.room_changed(self)
            elif isinstance(ev, h2.events.WindowUpdated):
                self._send_pending()
            elif isinstance(ev, h2.events.ConnectionTerminated):  # not cut out above
                self._goaway_to(ev.last_stream_id or 0, ev.error_code == 0)
        self._flush()
        return True

    def _goaway(self, payload: bytes) -> None:
        last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        self._goaway_to(last, int.from_bytes(payload[4:8], "big") == 0)

    def _goaway_to(self, last: int, graceful: bool = True) -> None:
        """GOAWAY(last_stream_id=``last``): streams above it were never processed.

        A graceful GOAWAY that refused streams is a limit of streams per connection
        (nginx's keepalive_requests): the pool learns it, so later connections carry no
        more than that and are replaced before their GOAWAY, instead of having streams
        refused each time (client stream ids are odd: ``last`` covers (last + 1) / 2).
        """
        refused = [s for sid, s in self.streams.items() if sid > last]
        for stream in refused:
            self._forget(stream)
            stream.fail(Refused(f"above the server's GOAWAY (last stream {last})"))
        if refused and graceful:
            self.pool.learn_budget(self.origin, (last + 1) // 2)
        self.retire()

    # -- internals ---------------------------------------------------------------------

    def _forget(self, stream: H2Stream) -> None:
        """``stream`` is over for this connection: its slot frees (and maybe the socket)."""
        if stream.closed:
            return
        stream.closed = True
        self.streams.pop(stream.sid, None)
        if not self.streams:
            self.idle_since = self.loop.time()
            if self.draining:
                self.close()
                return
        self.pool.room_changed(self)

    def _send_body(self, stream: H2Stream) -> None:
        """Send what the flow-control windows allow of ``stream``'s request body."""
        h2c = self.h2
        out = stream.out
        while out:
            room = min(h2c.local_flow_control_window(stream.sid), h2c.max_outbound_frame_size)
            if room <= 0:
                break
            piece, out = out[:room], out[room:]
            h2c.send_data(stream.sid, piece.tobytes(), end_stream=not out)
        stream.out = out

    def _send_pending(self) -> None:
        for stream in list(self.streams.values()):
            if stream.out:
                try:
                    self._send_body(stream)
                except h2.exceptions.H2Error as exc:
                    self._forget(stream)
                    stream.fail(StreamInterrupted(f"HTTP/2: cannot send the request: {exc}"))

    def _failed(self, why: str) -> None:
        """A protocol error: every stream fails, the connection goes."""
        self._flush()  # h2's GOAWAY naming the error, if it made one
        self._fail_all(why)
        self.close()

    def _fail_all(self, why: str) -> None:
        for stream in list(self.streams.values()):
            self._forget(stream)
            stream.fail(StreamInterrupted(why))

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        transport = self.transport
        if data and transport is not None and not self.closed:
            transport.write(data)


def _code_name(code: int | h2.errors.ErrorCodes | None) -> str:
    try:
        return h2.errors.ErrorCodes(int(code or 0)).name
    except ValueError:
        return f"error code {code}"
