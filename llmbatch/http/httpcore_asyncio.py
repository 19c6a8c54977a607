"""An httpcore network backend on a plain asyncio Protocol (no anyio on the read path).

httpcore's default backend wraps every socket read in anyio: a cancel scope per
``read(max_bytes, timeout)`` and, for every idle connection the pool looks at when a
request is added or released, a ``select()`` on its socket (``is_readable``). With one
token per read (20 ms between tokens) that was about 7% and 6% of the httpx adapter's
CPU (bench/RESULTS.md). Here a small Protocol keeps what arrived in a buffer: a read
returns what is buffered at once, or waits on one future with a ``call_later`` timer;
``is_readable`` is a look at the buffer and the EOF flag, which the event loop keeps
current. Errors are httpcore's own types (ReadTimeout, ReadError, WriteError,
ConnectError, ConnectTimeout...), chained to the cause as httpcore's anyio backend does,
so httpx maps them exactly as before. TLS is ``loop.start_tls`` with the caller's
context (ALPN included), so h2 negotiation works unchanged.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Coroutine, Iterable
from typing import Any, cast

from httpcore import (
    AsyncNetworkBackend,
    AsyncNetworkStream,
    ConnectError,
    ConnectTimeout,
    ReadError,
    ReadTimeout,
    WriteError,
    WriteTimeout,
)

__all__ = ["AsyncioBackend"]

# Stop reading from the socket while this much is buffered and unread (flow control).
_READ_HIGH_WATER = 256 * 1024

SocketOption = Any  # httpcore's SOCKET_OPTION tuples


class _Protocol(asyncio.Protocol):
    """Receives into a buffer; wakes the one pending reader; tracks write pausing."""

    __slots__ = (
        "_buffer",
        "_deadline",
        "_drain",
        "_eof",
        "_exc",
        "_loop",
        "_paused_reading",
        "_paused_writing",
        "_reader",
        "_size",
        "_timer",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._buffer: list[bytes] = []
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._reader: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._paused_writing = False
        # The pending read's deadline (loop time), and the one timer that checks it.
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer.append(data)
        self._size += len(data)
        if self._size > _READ_HIGH_WATER and not self._paused_reading and self.transport:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake_reader()
        return None  # close our side too (for TLS the loop ignores the value anyway)

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if exc is not None:
            self._exc = exc
        self._wake_reader()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            if exc is None:
                drain.set_result(None)
            else:
                drain.set_exception(exc)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _wake_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.set_result(None)

    # what the stream uses

    def arm(self, timeout: float) -> None:
        """Fail the pending read if nothing arrives within ``timeout`` seconds.

        One timer per connection, moved lazily: a read only sets the deadline, and
        the timer, when it fires early, sleeps on to the current one. A timer per
        read (one per token) would cost a schedule and a cancel each time.
        """
        self._deadline = deadline = self._loop.time() + timeout
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        reader, deadline = self._reader, self._deadline
        if reader is None or reader.done() or deadline is None:
            return  # no read waiting with a timeout; the next one re-arms
        if self._loop.time() >= deadline:
            reader.set_exception(TimeoutError())
        else:
            self._timer = self._loop.call_at(deadline, self._on_deadline)

    def take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of what is buffered (there is some)."""
        buf = self._buffer
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        if len(data) > max_bytes:
            self._buffer = [data[max_bytes:]]
            data = data[:max_bytes]
        else:
            self._buffer = []
        self._size -= len(data)
        if self._paused_reading and self._size <= _READ_HIGH_WATER // 4 and self.transport:
            self._paused_reading = False
            self.transport.resume_reading()
        return data


def _on_timeout(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _wait(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None], timeout: float | None
) -> None:
    """Await ``fut``, failing with TimeoutError after ``timeout`` seconds."""
    if timeout is None:
        await fut
        return
    timer = loop.call_later(timeout, _on_timeout, fut)
    try:
        await fut
    finally:
        timer.cancel()


class AsyncioStream(AsyncNetworkStream):
    """One TCP (or TLS) connection for httpcore."""

    __slots__ = ("_loop", "_proto", "_transport")

    def __init__(self, transport: asyncio.Transport, proto: _Protocol) -> None:
        self._transport = transport
        self._proto = proto
        self._loop = proto._loop

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        proto = self._proto
        while True:
            if proto._buffer:
                return proto.take(max_bytes)
            if proto._exc is not None:
                raise ReadError(str(proto._exc) or type(proto._exc).__name__) from proto._exc
            if proto._eof:
                return b""
            if self._transport.is_closing():
                raise ReadError("the connection is closed")
            fut = self._loop.create_future()
            proto._reader = fut
            if timeout is None:
                proto._deadline = None
            else:
                proto.arm(timeout)
            try:
                await fut
            except TimeoutError as exc:
                raise ReadTimeout("timed out") from exc
            finally:
                if proto._reader is fut:
                    proto._reader = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        proto = self._proto
        if proto._exc is not None:
            raise WriteError(str(proto._exc) or type(proto._exc).__name__) from proto._exc
        if self._transport.is_closing():
            raise WriteError("the connection is closed")
        try:
            self._transport.write(buffer)
        except (OSError, RuntimeError) as exc:
            raise WriteError(str(exc)) from exc
        if not proto._paused_writing:
            return
        fut = self._loop.create_future()
        proto._drain = fut
        try:
            await _wait(self._loop, fut, timeout)
        except TimeoutError as exc:
            raise WriteTimeout("timed out") from exc
        except OSError as exc:
            raise WriteError(str(exc)) from exc
        finally:
            if proto._drain is fut:
                proto._drain = None

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncNetworkStream:
        try:
            transport = await self._loop.start_tls(
                self._transport,
                self._proto,
                ssl_context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
            )
        except TimeoutError as exc:
            self._transport.close()
            raise ConnectTimeout(str(exc) or "TLS handshake timed out") from exc
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            self._transport.close()
            raise ConnectError(str(exc)) from exc
        if transport is None:  # the connection went away during the handshake
            self._transport.close()
            raise ConnectError("connection closed during the TLS handshake")
        self._proto.transport = transport
        return AsyncioStream(transport, self._proto)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # An idle connection is readable only when the server closed it or sent
            # something unasked: what the pool checks before reusing it.
            proto = self._proto
            return bool(proto._buffer) or proto._eof or self._transport.is_closing()
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


async def _connected(
    connecting: Coroutine[Any, Any, tuple[asyncio.Transport, Any]],
    proto: _Protocol,
    timeout: float | None,
    socket_options: Iterable[SocketOption] | None,
) -> AsyncNetworkStream:
    """The stream of a connection being made, with httpcore's errors for its failures."""
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await connecting
    except TimeoutError as exc:
        raise ConnectTimeout(str(exc) or "connect timed out") from exc
    except OSError as exc:
        raise ConnectError(str(exc)) from exc
    _apply(transport, socket_options)
    return AsyncioStream(transport, proto)


class AsyncioBackend(AsyncNetworkBackend):
    """httpcore's ``network_backend`` on the running asyncio (or uvloop) loop."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        proto = _Protocol(loop)
        local = (local_address, 0) if local_address else None
        connecting = loop.create_connection(lambda: proto, host, port, local_addr=local)
        return await _connected(connecting, proto, timeout, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        proto = _Protocol(loop)
        connecting = loop.create_unix_connection(lambda: proto, path)
        return await _connected(connecting, proto, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _apply(transport: asyncio.Transport, options: Iterable[SocketOption] | None) -> None:
    sock = transport.get_extra_info("socket")
    for option in options or ():
        sock.setsockopt(*option)
