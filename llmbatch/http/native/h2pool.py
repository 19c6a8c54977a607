"""The HTTP/2 connections of ``--client native --http2``, per origin, within ``limit``.

A request takes a stream on the oldest connection with room (the server's
SETTINGS_MAX_CONCURRENT_STREAMS, minus the streams in flight; and no more streams in
all than the origin serves per connection, once a GOAWAY that refused streams told);
when none has room it
waits, and a new connection is opened when the waiting requests outnumber what the
connections being opened will carry (the first connection to an origin opens alone:
until its SETTINGS arrive nobody knows how many streams a connection carries). A
connection that got GOAWAY is retired at once: no request waits on it, the next ones
go to a new connection. When the server's ALPN chose http/1.1, the origin is marked so
and its requests go to the HTTP/1.1 pool (``acquire`` returns None).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from llmbatch.errors import ConnectError, PoolTimeout
from llmbatch.http.native.h2connection import H2Connection
from llmbatch.http.native.pool import KEEPALIVE_S
from llmbatch.http.native.wire import Origin
from llmbatch.http.watchdog import within

__all__ = ["H2Pool"]

_UNLIMITED = 1 << 31

Connect = Callable[["H2Pool", Origin], Awaitable[H2Connection | None]]


class _Origin:
    """The connections of one origin, those being opened, and the requests waiting."""

    __slots__ = ("conns", "connecting", "waiters", "h1", "streams_hint", "budget")

    def __init__(self) -> None:
        self.conns: list[H2Connection] = []  # open, not retired
        self.connecting = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.h1 = False  # the server chose HTTP/1.1 in ALPN
        self.streams_hint = 0  # streams a connection carries at once (0: not known yet)
        self.budget = _UNLIMITED  # streams a connection serves before GOAWAY (learned)


class H2Pool:
    """HTTP/2 connections of every origin, at most ``limit`` open or being opened."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int, connect: Connect) -> None:
        self.loop = loop
        self.limit = max(1, limit)
        self.open = 0
        self._connect = connect
        self._origins: dict[Origin, _Origin] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._all: set[H2Connection] = set()  # retired ones too, until closed

    async def acquire(self, origin: Origin, wait_s: float) -> H2Connection | None:
        """A connection with a free stream; None when the origin speaks HTTP/1.1.

        Raises ConnectError (the connection this request waited for failed, or took
        longer than ``wait_s``) or PoolTimeout (no stream came free within ``wait_s``).
        """
        st = self._origins.get(origin)
        if st is None:
            st = self._origins[origin] = _Origin()
        deadline = self.loop.time() + wait_s
        while True:
            if st.h1:
                return None
            conn = self._with_room(st)
            if conn is not None:
                return conn
            waiting = len(st.waiters) + 1
            hint = st.streams_hint
            more = st.connecting == 0 if hint == 0 else waiting > st.connecting * hint
            if more and self.open < self.limit:
                self._start(origin, st)
            fut: asyncio.Future[None] = self.loop.create_future()
            st.waiters.append(fut)
            try:
                with within(max(0.0, deadline - self.loop.time())):
                    await fut
            except TimeoutError:
                if st.connecting:
                    raise ConnectError(
                        f"cannot connect to {origin.display}: timed out after {wait_s:g}s"
                    ) from None
                raise PoolTimeout(
                    f"no HTTP/2 stream came free within {wait_s:g}s "
                    f"(all {self.limit} connections full; max_connections)"
                ) from None
            finally:
                if not fut.done():
                    fut.cancel()
                    st.waiters.remove(fut)

    def _with_room(self, st: _Origin) -> H2Connection | None:
        stale = self.loop.time() - KEEPALIVE_S
        for conn in list(st.conns):
            if not conn.streams and conn.idle_since < stale:
                conn.close()  # idle too long: the server may be closing it
            elif conn.room() > 0:
                return conn
        return None

    def _start(self, origin: Origin, st: _Origin) -> None:
        st.connecting += 1
        self.open += 1
        task = self.loop.create_task(self._open(origin, st))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, origin: Origin, st: _Origin) -> None:
        try:
            conn = await self._connect(self, origin)
        except BaseException as exc:
            st.connecting -= 1
            self.open -= 1
            if isinstance(exc, asyncio.CancelledError):
                raise
            # Every request waiting now waited for this connection: each gets the error.
            waiters, st.waiters = st.waiters, deque()
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(_copy(exc))
            return
        st.connecting -= 1
        if conn is None:
            self.open -= 1
            st.h1 = True
        else:
            conn.counted = True
            self._all.add(conn)
            st.conns.append(conn)
            st.streams_hint = max(1, conn.max_streams)
        self._wake(st, len(st.waiters))

    def _wake(self, st: _Origin, n: int) -> None:
        """Let ``n`` waiters look again (they wait again if there is nothing for them)."""
        waiters = st.waiters
        while n > 0 and waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                n -= 1

    def budget(self, origin: Origin) -> int:
        """Streams a connection to ``origin`` may carry in all (learned from GOAWAYs)."""
        st = self._origins.get(origin)
        return _UNLIMITED if st is None else st.budget

    def learn_budget(self, origin: Origin, streams: int) -> None:
        """``origin`` sent GOAWAY after ``streams`` streams of a connection, refusing more."""
        st = self._origins.get(origin)
        if st is not None and streams >= 1:
            st.budget = min(st.budget, streams)
            st.streams_hint = min(st.streams_hint or streams, streams)

    def room_changed(self, conn: H2Connection) -> None:
        """A stream of ``conn`` ended, or its server changed its stream limit."""
        st = self._origins.get(conn.origin)
        if st is not None and st.waiters:
            self._wake(st, max(1, conn.room()))

    def retired(self, conn: H2Connection) -> None:
        """``conn`` takes no new stream (GOAWAY): waiters look elsewhere or connect."""
        st = self._origins.get(conn.origin)
        if st is not None:
            if conn in st.conns:
                st.conns.remove(conn)
            self._wake(st, len(st.waiters))

    def drop(self, conn: H2Connection) -> None:
        """``conn`` is closed: its slot is free."""
        self.retired(conn)
        self._all.discard(conn)
        if conn.counted:
            conn.counted = False
            self.open -= 1

    def close_all(self) -> None:
        """Close every connection; stop the ones being opened."""
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._all):
            conn.close()
        self._origins.clear()


def _copy(exc: BaseException) -> BaseException:
    """The same error for another waiter (one exception object raised in many tasks
    would collect all their tracebacks)."""
    try:
        return type(exc)(*exc.args)
    except TypeError:
        return exc
