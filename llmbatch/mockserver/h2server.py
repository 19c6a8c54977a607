"""The mock's HTTP/2 server: the ``h2`` library on an asyncio Protocol, GOAWAY as nginx sends it.

Why not hypercorn's HTTP/2: hypercorn sends GOAWAY with h2's ``close_connection()``,
after which h2's connection state machine is CLOSED and refuses every frame it is asked
to send, so the streams that GOAWAY promised to finish (ids <= last_stream_id) never get
an answer (measured with hypercorn 0.18: no response headers, the connection closed at
its 30 s keep-alive timeout, while the handlers, unaware, counted their answers as sent).
nginx sends GOAWAY and goes on serving those streams. Here the GOAWAY frame is written to
the socket beside h2 (hyperframe's ``GoAwayFrame``), so h2 stays open for the streams in
flight; a stream opened after it is refused (RST_STREAM REFUSED_STREAM, never processed)
and the connection closes once its last stream ends.

Each stream runs the ASGI application of h2front.py (the aiohttp handlers), with
``send`` writing HEADERS and DATA within the client's flow-control windows; received
DATA is acknowledged at once. Writing to a stream the client reset raises
ConnectionResetError into the handler, so an answer is counted complete only when its
last byte went to the socket. A connection whose ALPN chose http/1.1 is handed to
aiohttp's server protocol for the same application.

Stopping (``H2Server.close``) is graceful: GOAWAY naming the last stream received on
every connection, the streams in flight finish (for up to ``grace_s``), then the rest
is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

__all__ = ["H2Server"]

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


class _Stream:
    """One request: its body as it arrives, and whether it can still be answered."""

    __slots__ = ("sid", "body", "body_done", "reset", "ended", "wake", "task")

    def __init__(self, sid: int, loop: asyncio.AbstractEventLoop) -> None:
        self.sid = sid
        self.body: list[bytes] = []
        self.body_done = False
        self.reset = False  # the client reset it (or the connection went)
        self.ended = False  # END_STREAM sent: the answer is complete
        self.wake = asyncio.Event()  # body data, a window update, a reset
        self.task: asyncio.Task[None] | None = None


class _H2Connection(asyncio.Protocol):
    """One client connection: h2 when ALPN chose it, else aiohttp's HTTP/1.1 protocol."""

    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.streams: dict[int, _Stream] = {}
        self.received = 0  # streams received (and served)
        self.goaway_sent = False
        self.closed = asyncio.Event()
        self.peer: Any = None

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn != "h2":
            http1 = self.server.http1_protocol()
            transport.set_protocol(http1)
            http1.connection_made(transport)
            return
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self.server.conns.add(self)
        settings = h2.settings.SettingCodes
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                settings.MAX_CONCURRENT_STREAMS: self.server.max_streams,
                settings.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self.h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()  # h2's GOAWAY naming the error
            self._close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._request(ev.stream_id, ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.body.append(ev.data)
                    st.wake.set()
            elif isinstance(ev, h2.events.StreamEnded):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.body_done = True
                    st.wake.set()
            elif isinstance(ev, h2.events.StreamReset):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.reset = True
                    st.wake.set()
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                for st in self.streams.values():
                    st.wake.set()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._close()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        for st in self.streams.values():
            st.reset = True
            st.wake.set()
        self.closed.set()

    # -- streams -----------------------------------------------------------------------

    def _request(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.goaway_sent:
            # Above the GOAWAY's last_stream_id: never processed (RFC 9113 6.8).
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            self.server.on_refused()
            return
        self.received += 1
        st = self.streams[sid] = _Stream(sid, self.loop)
        st.task = self.loop.create_task(self._serve(st, headers))
        after = self.server.goaway_after
        if after is not None and self.received >= after:
            self.goaway(sid)

    def goaway(self, last: int | None = None) -> None:
        """GOAWAY naming ``last`` (default: the last stream received) as the last stream
        served; written beside h2, so h2 stays open for the streams in flight."""
        if self.goaway_sent or self.transport is None:
            return
        self.goaway_sent = True
        self._flush()
        frame = GoAwayFrame(stream_id=0)
        # Not h2's highest_inbound_stream_id: h2 has parsed the whole read, maybe with
        # streams behind this one, which are refused.
        frame.last_stream_id = self.h2.highest_inbound_stream_id if last is None else last
        frame.error_code = 0
        self.transport.write(frame.serialize())
        if not self.streams:
            self._close()

    async def _serve(self, st: _Stream, headers: list[tuple[bytes, bytes]]) -> None:
        pseudo = {k: v for k, v in headers if k.startswith(b":")}
        path, _, query = pseudo.get(b":path", b"/").partition(b"?")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "2",
            "method": pseudo.get(b":method", b"GET").decode("latin-1"),
            "scheme": "https",
            "path": path.decode("latin-1"),
            "raw_path": path,
            "query_string": query,
            "headers": [(k, v) for k, v in headers if not k.startswith(b":")],
            "client": self.peer,
        }

        async def receive() -> MutableMapping[str, Any]:
            while not st.body and not st.body_done and not st.reset:
                st.wake.clear()
                await st.wake.wait()
            if st.reset:
                return {"type": "http.disconnect"}
            body = b"".join(st.body)
            st.body.clear()
            return {"type": "http.request", "body": body, "more_body": not st.body_done}

        async def send(message: MutableMapping[str, Any]) -> None:
            if st.reset:
                raise ConnectionResetError("stream reset by the client")
            if message["type"] == "http.response.start":
                status = str(message["status"]).encode()
                self.h2.send_headers(st.sid, [(b":status", status), *message.get("headers", [])])
                self._flush()
            elif message["type"] == "http.response.body":
                await self._send_body(st, message.get("body", b""), message.get("more_body"))

        try:
            await self.server.app(scope, receive, send)
        except Exception:  # noqa: BLE001 - a handler error, or a write to a reset stream
            pass
        finally:
            if not st.ended and not st.reset and self.transport is not None:
                with contextlib.suppress(h2.exceptions.H2Error):
                    self.h2.reset_stream(st.sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    self._flush()
            self.streams.pop(st.sid, None)
            if self.goaway_sent and not self.streams:
                self._close()

    async def _send_body(self, st: _Stream, data: bytes, more: bool | None) -> None:
        view = memoryview(data)
        while view:
            room = min(self.h2.local_flow_control_window(st.sid), self.h2.max_outbound_frame_size)
            if room <= 0:
                st.wake.clear()
                await st.wake.wait()
                if st.reset:
                    raise ConnectionResetError("stream reset by the client")
                continue
            piece, view = view[:room], view[room:]
            self.h2.send_data(st.sid, piece.tobytes(), end_stream=not more and not view)
        if not data and not more:
            self.h2.end_stream(st.sid)
        if not more:
            st.ended = True
        self._flush()

    # -- the socket --------------------------------------------------------------------

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class H2Server:
    """A listening socket serving ``app`` over h2 (and HTTP/1.1 through ``http1_protocol``)."""

    def __init__(
        self,
        app: ASGIApp,
        http1_protocol: Callable[[], asyncio.Protocol],
        *,
        max_streams: int,
        goaway_after: int | None,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        self.app = app
        self.on_refused = on_refused  # a stream came after GOAWAY and was refused
        self.http1_protocol = http1_protocol
        self.max_streams = max_streams
        self.goaway_after = goaway_after
        self.loop = asyncio.get_running_loop()
        self.conns: set[_H2Connection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def listen(self, sock: Any, ssl_context: Any) -> None:
        """Serve the (bound, listening) socket ``sock`` with TLS ``ssl_context``."""
        self._server = await self.loop.create_server(
            lambda: _H2Connection(self), sock=sock, ssl=ssl_context, backlog=4096
        )

    async def close(self, grace_s: float) -> None:
        """Stop listening; GOAWAY everywhere; the streams in flight get ``grace_s``."""
        if self._server is not None:
            self._server.close()
        conns = list(self.conns)
        for conn in conns:
            conn.goaway()
        if conns:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await asyncio.gather(*(c.closed.wait() for c in conns))
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        tasks = [st.task for c in conns for st in c.streams.values() if st.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
