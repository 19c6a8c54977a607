"""A response body as it arrives: delivered to ``chunks()`` or ``push()``, idle-timed.

What the HTTP/1.1 exchange (exchange.py) and the HTTP/2 stream (h2connection.py) share
once their framing has produced body bytes: one delivery per read to the caller's
``on_chunk`` (push) or to one future (chunks), the push contract of
base.StreamingResponse, and the idle timeout as one watchdog entry per response, moved
lazily (watchdog.py), not a timer per read. Back-pressure is the subclass's: HTTP/1.1
stops reading the socket, HTTP/2 withholds the stream's flow-control credit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from llmbatch.errors import ReadTimeout, RequestError
from llmbatch.http.native.wire import Inflate, inflater
from llmbatch.http.watchdog import _Watchdog, watch, within

__all__ = ["Body"]

# Timers firing this close to a deadline count as at it (uvloop's clock has 1 ms steps).
_SLACK_S = 1e-3


class Body:
    """The delivery state of one response body (see the module's docstring).

    It is also its response's idle-timeout entry in the watchdog (``when``, ``fire``):
    ``last`` moves with every read, ``when`` only when the entry comes due.
    """

    __slots__ = (
        "loop",
        "head_fut",
        "inflate",
        "bad_encoding",
        "pending",
        "pending_size",
        "waiter",
        "on_chunk",
        "push_fut",
        "finished",
        "muted",
        "error",
        "body_done",
        "idle_s",
        "last",
        "when",
        "dog",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_s: float) -> None:
        self.loop = loop
        self.head_fut: asyncio.Future[None] = loop.create_future()  # the response head is in
        self.inflate: Inflate | None = None
        self.bad_encoding = ""  # a content-encoding we cannot decode (the adapter refuses)
        self.pending: list[bytes] = []  # body bytes not yet taken (chunks mode, or before push)
        self.pending_size = 0
        self.waiter: asyncio.Future[None] | None = None  # chunks(): waiting for data
        self.on_chunk: Callable[[bytes], bool] | None = None  # push(): the callback
        self.push_fut: asyncio.Future[None] | None = None  # push(): the end of delivery
        self.finished = False  # the callback said the answer is complete
        self.muted = False  # nothing more goes to the callback (it raised)
        self.error: BaseException | None = None  # the body failed (mapped)
        self.body_done = False
        self.idle_s = idle_s
        self.last = 0.0
        self.when = 0.0
        self.dog: _Watchdog | None = None  # the watchdog holding this entry, while armed

    def decode_as(self, encoding: str | None) -> None:
        """The response's Content-Encoding: decode gzip / deflate, note any other."""
        if encoding is not None:
            inflate = inflater(encoding)
            if isinstance(inflate, str):
                self.bad_encoding = inflate  # raised by the adapter; the body stays raw
            else:
                self.inflate = inflate

    def _buffered(self) -> None:
        """Body bytes wait in ``pending`` (``pending_size`` in all): back-pressure here."""

    def _taken(self) -> None:
        """The caller took every pending byte: lift any back-pressure."""

    # -- delivery -----------------------------------------------------------------

    def _deliver(self, payload: bytes) -> None:
        on_chunk = self.on_chunk
        if on_chunk is None:
            self.pending.append(payload)
            self.pending_size += len(payload)
            self._buffered()
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if self.finished or self.muted:
            return  # after the end marker the rest is drained unread
        try:
            finished = on_chunk(payload)
        except Exception as exc:  # noqa: BLE001 - raised from push() as it is
            self.muted = True
            fut = self.push_fut
            if fut is not None and not fut.done():
                fut.set_exception(exc)
            return
        if finished:
            self.finished = True
            fut = self.push_fut
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _end_body(self) -> None:
        if self.inflate is not None:
            tail = self.inflate.flush()
            self.inflate = None
            if tail:
                self._deliver(tail)
        self.body_done = True
        self._wake()

    def _fail(self, err: BaseException) -> None:
        """The body failed: chunks() raises ``err``; push() too, unless already complete."""
        if self.error is None:
            self.error = err
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        fut = self.push_fut
        if fut is not None and not fut.done():
            if self.error is None or self.finished:
                fut.set_result(None)
            else:
                fut.set_exception(self.error)

    def _fail_head(self, err: BaseException) -> None:
        fut = self.head_fut
        if not fut.done():
            fut.set_exception(err)

    def take(self) -> bytes:
        """Every pending body byte (there are some)."""
        pending = self.pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self.pending = []
        self.pending_size = 0
        self._taken()
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as an async iterator of decoded chunks."""
        loop = self.loop
        try:
            while True:
                if self.pending:
                    yield self.take()
                    continue
                if self.error is not None:
                    raise self.error
                if self.body_done:
                    return
                self.watch_idle()
                fut = self.waiter = loop.create_future()
                try:
                    await fut
                finally:
                    self.waiter = None
        finally:
            self.unwatch_idle()

    async def push(self, on_chunk: Callable[[bytes], bool], drain_s: float) -> None:
        """The push contract (base.StreamingResponse.push), from ``feed``."""
        if self.pending and on_chunk(self.take()):  # what came with the head
            self.finished = True
        elif self.error is not None:
            raise self.error
        if self.body_done or (self.finished and self.error is not None):
            return
        fut = self.push_fut = self.loop.create_future()
        self.on_chunk = on_chunk  # from here each read goes to it (none after the answer)
        self.watch_idle()
        try:
            if not self.finished:
                await fut
            if self.finished and not self.body_done and self.error is None:
                # The end of the body did not come with the end marker: wait a little for
                # it so the connection is reused; whatever happens to it now does not count.
                fut = self.push_fut = self.loop.create_future()
                with contextlib.suppress(TimeoutError, RequestError), within(drain_s):
                    await fut
        finally:
            self.on_chunk = None
            self.push_fut = None
            self.unwatch_idle()

    def detach(self) -> None:
        """The caller is done with this response: nothing more is delivered or timed."""
        self.on_chunk = None
        self.waiter = None
        self.push_fut = None
        self.unwatch_idle()

    # -- the idle timeout (a watchdog entry) -------------------------------------------

    def watch_idle(self) -> None:
        """Arm the idle timeout of this response (one watchdog entry)."""
        if self.dog is None:
            self.when = self.last + self.idle_s
            self.dog = watch(self, self.loop)

    def unwatch_idle(self) -> None:
        dog, self.dog = self.dog, None
        if dog is not None:
            dog.discard(self)

    def fire(self, now: float) -> bool:
        """The idle deadline came due: time out, or move it after the last read."""
        if self.body_done or self.error is not None or self.finished:
            self.dog = None  # the watchdog drops the entry
            return True
        due = self.last + self.idle_s
        if now >= due - _SLACK_S:
            if self.on_chunk is None and self.waiter is None:
                # chunks mode and the reader is busy with what it has: not idle.
                self.when = now + self.idle_s
                return False
            self.dog = None
            self._fail(ReadTimeout("no data for longer than the idle timeout"))
            return True
        self.when = due
        return False
