"""aiohttp's response body pushed into a callback as it arrives: no await per read.

aiohttp gives a body to a ``StreamReader`` (``resp.content``) that a consumer drains with
``await readany()``: per socket read a future, a task wake-up, a chain of resumed
coroutines and a re-armed idle timer (``sock_read``). With one token per read (20 ms
between tokens) that was most of the client's CPU (bench/RESULTS.md). Here the reader of
one response is switched to a subclass (``__class__``; slots only, so the same layout)
whose ``feed_data`` hands each chunk to ``on_chunk`` at once, from the protocol's
``data_received``; the task awaits one future for the whole body. Whatever aiohttp signals
on the reader (the end of the body, a dropped connection, a payload error) resolves that
future, mapped to llmbatch's errors as ``_chunks`` maps them. The idle timeout is one
watchdog entry per response (watchdog.py), moved lazily after the last chunk.

Only a plain ``StreamReader`` is switched; anything else is read the usual way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp.streams import StreamReader

from llmbatch.errors import ReadTimeout, RequestError, StreamInterrupted
from llmbatch.http.base import feed_chunks
from llmbatch.http.watchdog import watch, within

__all__ = ["map_body_error", "push_body"]

# The push target of each switched reader, by id (a slotted reader holds no more state).
_TARGETS: dict[int, _Push] = {}
# Timers firing this close to the deadline count as at it (uvloop's clock has 1 ms steps).
_SLACK_S = 1e-3
# The message of an idle timeout, in aiohttp's own words as the pull path gives it.
_IDLE_TIMEOUT = "no data for longer than the idle timeout (Timeout on reading data from socket)"


def map_body_error(exc: BaseException) -> BaseException:
    """An exception met while reading a body, as llmbatch's own (others unchanged)."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return ReadTimeout(f"no data for longer than the idle timeout ({exc})")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return StreamInterrupted(f"stream interrupted: {type(exc).__name__}")
    if isinstance(exc, aiohttp.ClientError):
        return StreamInterrupted(f"{type(exc).__name__}: {exc}")
    return exc


class _PushReader(StreamReader):
    """A StreamReader whose data goes to its push target instead of its buffer."""

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        if data:
            self.total_bytes += len(data)
            _TARGETS[id(self)].data(data)
        return False  # never "more data pending": nothing is buffered

    # Chunk boundaries matter to readchunk() only; nothing reads this reader.
    def begin_http_chunk_receiving(self) -> None:
        pass

    def end_http_chunk_receiving(self) -> None:
        pass

    def feed_eof(self) -> None:
        super().feed_eof()  # its callbacks hand the connection back to the pool
        _TARGETS[id(self)].end(None)

    def set_exception(self, exc: BaseException, *cause: Any) -> None:
        super().set_exception(exc, *cause)
        _TARGETS[id(self)].end(exc)


class _Push:
    """The state of one pushed body: the callback, the future, the idle deadline.

    The idle deadline is a watchdog entry (watchdog.py) whose ``when`` is moved to
    ``last + idle_s`` only when it comes due: no timer is touched per read.
    """

    __slots__ = ("on_chunk", "fut", "loop", "last", "idle_s", "when", "done", "finished")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_chunk: Callable[[bytes], bool], idle_s: float
    ) -> None:
        self.on_chunk = on_chunk
        self.fut: asyncio.Future[None] = loop.create_future()
        self.loop = loop
        self.last = loop.time()
        self.idle_s = idle_s
        self.when = self.last + idle_s
        self.done = False  # nothing more is delivered (the answer is complete, or failed)
        self.finished = False  # the callback said the answer is complete

    def data(self, data: bytes) -> None:
        if self.done:
            return  # after the end marker: the rest is drained unread
        self.last = self.loop.time()
        try:
            finished = self.on_chunk(data)
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting task as it is
            self.end(exc)
            return
        if finished:
            # The answer is complete; the task wakes now and waits for the end of the
            # body only if it has not come with this same read (it nearly always has).
            self.finished = True
            self.end(None)

    def end(self, exc: BaseException | None) -> None:
        self.done = True
        fut = self.fut
        if fut.done():
            return
        if exc is None or self.finished:  # after the answer, errors do not matter
            fut.set_result(None)
        else:
            fut.set_exception(map_body_error(exc))

    def fire(self, now: float) -> bool:
        """The idle deadline came due: time out, or move it after the last chunk."""
        if self.done:
            return True
        due = self.last + self.idle_s
        if now >= due - _SLACK_S:
            self.end(ReadTimeout(_IDLE_TIMEOUT))
            return True
        self.when = due
        return False


async def push_body(
    resp: aiohttp.ClientResponse,
    on_chunk: Callable[[bytes], bool],
    *,
    idle_s: float,
    drain_s: float,
    pull: Callable[[], AsyncIterator[bytes]],
) -> None:
    """Give every chunk of ``resp``'s body to ``on_chunk`` as it arrives; return at its end.

    ``on_chunk`` returning True means the answer is complete: the rest of the body is
    read (not delivered) for at most ``drain_s``. An exception from ``on_chunk`` is raised
    here; so are the body's errors, as ReadTimeout (no data for ``idle_s``) or
    StreamInterrupted. ``pull`` reads the body the usual way where it cannot be pushed.
    """
    content = resp.content
    if type(content) is not StreamReader:
        await feed_chunks(pull(), on_chunk, drain_s)
        return
    exc = content.exception()
    if exc is not None:
        raise map_body_error(exc) from None
    buffered = content.read_nowait(-1)  # what came with the headers
    if buffered and on_chunk(buffered):
        if not content.is_eof():
            await feed_chunks(pull(), on_chunk, drain_s, draining=True)
        return
    if content.is_eof():
        return
    conn = resp.connection
    if conn is not None and conn.protocol is not None:
        # From here on the idle timeout is ours (one watchdog entry, not a timer per read).
        conn.protocol.read_timeout = None
    loop = asyncio.get_running_loop()
    push = _Push(loop, on_chunk, idle_s)
    key = id(content)
    _TARGETS[key] = push
    content.__class__ = _PushReader
    dog = watch(push, loop)
    try:
        await push.fut
        if push.finished and not content.is_eof() and content.exception() is None:
            # The end of the body did not come with the end marker: wait a little for
            # it so the connection is reused; whatever happens to it must not cost the
            # answer now.
            push.fut = loop.create_future()
            with contextlib.suppress(TimeoutError, RequestError), within(drain_s):
                await push.fut
    finally:
        push.done = True
        dog.discard(push)
        content.__class__ = StreamReader
        del _TARGETS[key]
