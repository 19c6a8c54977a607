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
timer per response that re-arms itself lazily from the time of the last chunk.

Only a plain ``StreamReader`` is switched; anything else is read the usual way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp.streams import StreamReader

from ..errors import ReadTimeout, RequestError, StreamInterrupted

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
    """The state of one pushed body: the callback, the future, the idle timer."""

    __slots__ = (
        "on_chunk",
        "fut",
        "loop",
        "last",
        "idle_s",
        "drain_s",
        "done",
        "finished",
        "timer",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_chunk: Callable[[bytes], bool],
        idle_s: float,
        drain_s: float,
    ) -> None:
        self.on_chunk = on_chunk
        self.fut: asyncio.Future[None] = loop.create_future()
        self.loop = loop
        self.last = loop.time()
        self.idle_s = idle_s
        self.drain_s = drain_s
        self.done = False  # nothing more is delivered (the answer is complete, or failed)
        self.finished = False  # the callback said the answer is complete
        self.timer = loop.call_at(self.last + idle_s, self._check_idle)

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
            # The answer is complete: wait a little for the end of the body so the
            # connection is reused; whatever happens to it now must not cost the answer.
            self.done = self.finished = True
            self.timer.cancel()
            self.timer = self.loop.call_later(self.drain_s, self.end, None)

    def end(self, exc: BaseException | None) -> None:
        self.done = True
        self.timer.cancel()
        fut = self.fut
        if fut.done():
            return
        if exc is None or self.finished:  # after the answer, errors do not matter
            fut.set_result(None)
        else:
            fut.set_exception(map_body_error(exc))

    def _check_idle(self) -> None:
        if self.done:
            return
        due = self.last + self.idle_s
        if self.loop.time() >= due - _SLACK_S:
            self.end(ReadTimeout(_IDLE_TIMEOUT))
        else:
            self.timer = self.loop.call_at(due, self._check_idle)


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
        await _pull_body(pull(), on_chunk, drain_s)
        return
    exc = content.exception()
    if exc is not None:
        raise map_body_error(exc) from None
    buffered = content.read_nowait(-1)  # what came with the headers
    if buffered and on_chunk(buffered):
        if content.is_eof():
            return
        await _pull_body(pull(), lambda _: False, drain_s, draining=True)
        return
    if content.is_eof():
        return
    conn = resp.connection
    if conn is not None and conn.protocol is not None:
        # From here on the idle timeout is ours (one lazy timer, not one per read).
        conn.protocol.read_timeout = None
    push = _Push(asyncio.get_running_loop(), on_chunk, idle_s, drain_s)
    key = id(content)
    _TARGETS[key] = push
    content.__class__ = _PushReader
    try:
        await push.fut
    finally:
        push.done = True
        push.timer.cancel()
        content.__class__ = StreamReader
        del _TARGETS[key]


async def _pull_body(
    chunks: AsyncIterator[bytes],
    on_chunk: Callable[[bytes], bool],
    drain_s: float,
    *,
    draining: bool = False,
) -> None:
    """The same contract over an async iterator of chunks (errors already mapped)."""
    if not draining:
        async for chunk in chunks:
            if on_chunk(chunk):
                draining = True
                break
    if draining:
        try:
            async with asyncio.timeout(drain_s):
                async for _ in chunks:
                    pass
        except (TimeoutError, RequestError):
            pass
