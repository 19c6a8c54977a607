"""One keep-alive connection: its socket, its place in the pool, the exchange it carries.

The state of a response lives in its Exchange (exchange.py); a connection only knows
whether it is open, how often it was used, since when it is idle, and which exchange
(if any) the bytes it reads belong to. Bytes on an idle connection are nobody's: the
connection is closed.
"""

from __future__ import annotations

import asyncio
import select
from typing import TYPE_CHECKING, cast

from llmbatch.http.native.exchange import Exchange
from llmbatch.http.native.wire import Origin

if TYPE_CHECKING:
    from llmbatch.http.native.pool import Pool

__all__ = ["Connection"]


class Connection(asyncio.Protocol):
    """An asyncio Protocol: one TCP (or TLS) connection to ``origin``."""

    __slots__ = (
        "pool",
        "origin",
        "loop",
        "transport",
        "counted",
        "closed",
        "used",
        "idle_since",
        "exchange",
    )

    def __init__(self, pool: Pool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.counted = False  # holds one of the pool's connection slots
        self.closed = False
        self.used = 0  # exchanges begun on this connection
        self.idle_since = 0.0
        self.exchange: Exchange | None = None

    def begin(self, request: bytes, idle_s: float) -> Exchange:
        """Send ``request``; its Exchange receives what the connection reads from now."""
        self.used += 1
        exchange = self.exchange = Exchange(self, idle_s)
        assert self.transport is not None
        self.transport.write(request)
        return exchange

    def finish(self) -> bool:
        """The exchange is over; True when the connection may carry another one."""
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return False
        exchange.detach()
        return not self.closed and exchange.reusable()

    def usable(self) -> bool:
        """Open as far as we know (not closed, not closing), and nothing waiting unread.

        A server's close can already be in the socket while the loop has not yet run the
        read that would tell us (its callbacks run on its next turn): an idle keep-alive
        socket with something to read holds a FIN or bytes nobody asked for, and a request
        sent on it is lost. So, as httpcore and urllib3 do before reusing a connection, the
        socket is polled once, without waiting (poll, not select: descriptors above 1024).
        """
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        sock = transport.get_extra_info("socket")
        if sock is None:
            return True
        try:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    def abort(self) -> None:
        """Close at once (the connection is mid-exchange or untrustworthy)."""
        if self.transport is not None and not self.closed:
            self.transport.abort()  # connection_lost follows, from the loop
        self.closed = True
        self.pool.drop(self)

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.abort()  # bytes on an idle connection, nobody asked for them
            return
        exchange.feed(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.drop(self)
        exchange = self.exchange
        if exchange is not None:
            exchange.connection_lost(exc)
