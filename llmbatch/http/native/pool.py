"""The native client's connection pool: at most ``limit`` connections, every origin.

Like the aiohttp connector's limit (shared by every host), sized to the run's
concurrency. Idle connections are kept at most KEEPALIVE_S and reused newest first (the
least likely to have been closed by the server); a request finding none and no free
slot waits in FIFO order for a released connection or a freed slot.
"""

from __future__ import annotations

import asyncio
from collections import deque

from llmbatch.http.native.connection import Connection
from llmbatch.http.native.wire import Origin

__all__ = ["KEEPALIVE_S", "Pool"]

# An idle connection is closed after this long: below common server idle timeouts
# (uvicorn 5 s, nginx 75 s, Node 5 s), so we rarely send on one the server is closing.
KEEPALIVE_S = 4.0


class Pool:
    """Connections per origin, at most ``limit`` in all (open or being opened)."""

    __slots__ = ("loop", "limit", "open", "idle", "waiters", "conns")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.loop = loop
        self.limit = max(1, limit)
        self.open = 0
        self.idle: dict[Origin, list[Connection]] = {}
        # (origin, future): a connection of that origin, or None for a free slot.
        self.waiters: deque[tuple[Origin, asyncio.Future[Connection | None]]] = deque()
        self.conns: set[Connection] = set()

    def take_idle(self, origin: Origin) -> Connection | None:
        """The newest idle connection of ``origin`` that is still open, if any."""
        conns = self.idle.get(origin)
        if not conns:
            return None
        stale = self.loop.time() - KEEPALIVE_S
        while conns and conns[0].idle_since < stale:
            conns[0].abort()  # drop() takes it off the list
        while conns:
            conn = conns.pop()
            if conn.usable():
                return conn
            conn.abort()
        return None

    def close_idle_elsewhere(self, origin: Origin) -> bool:
        """Close an idle connection of another origin to free its slot for ``origin``."""
        for other, conns in self.idle.items():
            if other != origin and conns:
                conns[0].abort()
                return True
        return False

    async def wait(self, origin: Origin) -> Connection | None:
        """Wait for a released connection of ``origin`` or a free slot (None)."""
        fut: asyncio.Future[Connection | None] = self.loop.create_future()
        self.waiters.append((origin, fut))
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                handed = fut.result()  # handed over just as we were cancelled
                if handed is None:
                    self.free_slot()
                else:
                    self.release(handed)
            raise

    def release(self, conn: Connection) -> None:
        """``conn`` finished an exchange: keep it, hand it on, or close it."""
        if not conn.finish():
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        waiters = self.waiters
        while waiters and waiters[0][1].done():
            waiters.popleft()
        if waiters:
            for i, (origin, fut) in enumerate(waiters):
                if origin == conn.origin and not fut.done():
                    del waiters[i]
                    fut.set_result(conn)
                    return
            conn.abort()  # someone waits for another origin: its slot goes to them
            return
        self.idle.setdefault(conn.origin, []).append(conn)

    def drop(self, conn: Connection) -> None:
        """``conn`` is gone: off the idle list, and its slot to a waiter or back."""
        conns = self.idle.get(conn.origin)
        if conns and conn in conns:
            conns.remove(conn)
        if not conn.counted:
            return
        conn.counted = False
        self.conns.discard(conn)
        self.free_slot()

    def free_slot(self) -> None:
        """A slot is free: the first live waiter gets it, else the count goes down."""
        waiters = self.waiters
        while waiters:
            _, fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes on (``open`` unchanged)
                return
        self.open -= 1

    def close_all(self) -> None:
        """Close every connection, busy or idle."""
        for conn in list(self.conns):
            conn.abort()
        self.idle.clear()
