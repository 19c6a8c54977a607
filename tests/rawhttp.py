"""A scripted raw-socket HTTP/1.1 server for wire edge-case tests.

It parses each request just enough to find its end (Content-Length or chunked body)
and answers it with the exact bytes a test scripts: split into writes at chosen points,
held until the client gives up, closed or reset. Nothing here imports llmbatch: the
server is the independent party a client is checked against.

Sending helpers build the bytes real servers produce (chunked framing with any hex case,
extensions and trailers; OpenAI-style SSE events); the server counts connections and
requests and stamps each request's arrival time, so tests assert what happened on the
wire instead of how long they waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import orjson

__all__ = [
    "Action",
    "Answer",
    "Close",
    "Drip",
    "Hold",
    "RawServer",
    "Reset",
    "Seen",
    "Send",
    "chunk",
    "chunked",
    "gzip_stream",
    "openai_events",
    "response_head",
]


# -- what the server does for one request ----------------------------------------------


@dataclass(frozen=True)
class Send:
    """Write ``data``. ``split``: None (one write), an int n (writes of n bytes each) or
    offsets to cut at. Between writes the server yields to the event loop twice, so a
    client on the same loop reads each piece on its own (no sleeping involved)."""

    data: bytes
    split: int | Sequence[int] | None = None


@dataclass(frozen=True)
class Drip:
    """Write ``data`` every ``interval_s`` until the client closes the connection (a
    server that trickles keep-alive bytes forever: the client's deadline must end it)."""

    data: bytes
    interval_s: float


@dataclass(frozen=True)
class Hold:
    """Send nothing more until the client closes the connection (it timed out)."""


@dataclass(frozen=True)
class Close:
    """Close the connection after what was written; no more requests on it. Over TLS a
    close_notify alert goes first, unless ``close_notify=False`` (the socket is just
    closed, as many servers do: an "incomplete close", RFC 9112 9.8)."""

    close_notify: bool = True


@dataclass(frozen=True)
class Reset:
    """Abort the connection with a TCP RST."""


Action = Send | Drip | Hold | Close | Reset


@dataclass
class Seen:
    """One request as the server received it."""

    n: int  # 0-based over the whole server
    conn: int  # 0-based connection number
    on_conn: int  # 0-based request number on its connection
    at: float  # the loop's time() when the request was complete (virtual on virtual time)
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        """The request body parsed as JSON."""
        return orjson.loads(self.body)


Answer = Callable[[Seen], Sequence[Action]]


@dataclass
class RawServer:
    """An asyncio TCP server on 127.0.0.1 (ephemeral port) answering from a script.

    ``answer(seen)`` gives the actions for each request; ``scripts`` is a shortcut: the
    n-th request gets ``scripts[n]`` (the last one repeats).
    """

    answer: Answer
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    closed_by_client: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _changed: asyncio.Condition | None = None
    _tls: bool = False

    @classmethod
    def scripted(cls, *scripts: Sequence[Action]) -> RawServer:
        """A server giving the n-th request ``scripts[n]`` (the last repeats)."""

        def answer(seen: Seen) -> Sequence[Action]:
            return scripts[min(seen.n, len(scripts) - 1)]

        return cls(answer)

    async def start(self, tls: ssl.SSLContext | None = None) -> RawServer:
        """Listen on an ephemeral port; over TLS with the server context ``tls``."""
        self._changed = asyncio.Condition()
        self._tls = tls is not None
        self._server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0, ssl=tls)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL of an OpenAI-compatible API on this server."""
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}/v1"

    async def wait_for(self, predicate: Callable[[RawServer], bool]) -> None:
        """Wait until ``predicate(self)`` holds (checked whenever the server's state changes)."""
        assert self._changed is not None
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    @property
    def open_connections(self) -> int:
        """Connections whose handler has not finished."""
        return len(self._tasks)

    async def close(self) -> None:
        """Stop listening and drop every connection (their handlers end by themselves)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        if self._server is not None:
            await self._server.wait_closed()

    # -- internals ----------------------------------------------------------------------
    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        conn = self.connections
        self.connections += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._notify()
            on_conn = 0
            while True:
                seen = await _read_request(reader, n=len(self.requests), conn=conn, on_conn=on_conn)
                if seen is None:
                    self.closed_by_client += 1
                    return
                self.requests.append(seen)
                await self._notify()
                on_conn += 1
                if not await self._perform(self.answer(seen), reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_client += 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                await self._notify()

    async def _perform(
        self, actions: Sequence[Action], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Run one answer; False when the connection is finished."""
        for action in actions:
            if isinstance(action, Send):
                for piece in _pieces(action.data, action.split):
                    writer.write(piece)
                    await writer.drain()
                    if action.split is not None:
                        await asyncio.sleep(0)
                        await asyncio.sleep(0)
            elif isinstance(action, Drip):
                with contextlib.suppress(ConnectionError):
                    while not writer.is_closing() and not reader.at_eof():
                        writer.write(action.data)
                        await writer.drain()
                        await asyncio.sleep(action.interval_s)  # the server's pace
                        # Notice the client's close (what it sends is not read otherwise).
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0):
                                await reader.read(65536)
                self.closed_by_client += 1
                return False
            elif isinstance(action, Hold):
                while await reader.read(65536):
                    pass  # anything the client sends now is not a request we answer
                self.closed_by_client += 1
                return False
            elif isinstance(action, Close):
                if not action.close_notify:
                    await writer.drain()
                    writer.transport.abort()  # the socket closed under TLS: a FIN only
                return False
            elif isinstance(action, Reset):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return False
        return True


def _pieces(data: bytes, split: int | Sequence[int] | None) -> Iterable[bytes]:
    if split is None:
        yield data
    elif isinstance(split, int):
        for i in range(0, len(data), split):
            yield data[i : i + split]
    else:
        cuts = [0, *sorted(split), len(data)]
        for a, b in zip(cuts, cuts[1:], strict=False):
            if b > a:
                yield data[a:b]


async def _read_request(
    reader: asyncio.StreamReader, *, n: int, conn: int, on_conn: int
) -> Seen | None:
    """Read one request (head and body); None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # requests carry no trailers here
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    at = asyncio.get_running_loop().time()
    return Seen(n, conn, on_conn, at, method, target, headers, body)


# -- bytes real servers send ---------------------------------------------------------------


def response_head(
    status: str = "200 OK",
    headers: Iterable[tuple[str, str]] = (("Content-Type", "text/event-stream"),),
    *,
    version: str = "HTTP/1.1",
    chunked: bool = False,
    content_length: int | None = None,
) -> bytes:
    """A status line and header block, ending with the blank line."""
    lines = [f"{version} {status}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes, *, upper: bool = False, ext: str = "", zeros: int = 0) -> bytes:
    """One chunk of chunked transfer coding (RFC 9112 section 7.1)."""
    size = f"{len(data):X}" if upper else f"{len(data):x}"
    return f"{'0' * zeros}{size}{ext}\r\n".encode() + data + b"\r\n"


def chunked(
    parts: Iterable[bytes],
    *,
    upper: bool = False,
    ext: str = "",
    trailers: Sequence[tuple[str, str]] = (),
    last_ext: str = "",
) -> bytes:
    """A whole chunked body: one chunk per part, the last chunk, trailers, CRLF."""
    out = [chunk(p, upper=upper, ext=ext) for p in parts if p]
    out.append(f"0{last_ext}\r\n".encode())
    out += [f"{k}: {v}\r\n".encode("latin-1") for k, v in trailers]
    out.append(b"\r\n")
    return b"".join(out)


def openai_events(
    tokens: Sequence[str],
    *,
    sep: bytes = b"\n",
    space: bool = True,
    usage: bool = True,
    done: bool = True,
) -> list[bytes]:
    """An OpenAI chat-completion stream, one SSE event per element: the role chunk, one
    chunk per token, the finish chunk, the usage chunk and ``[DONE]``. ``sep`` is the line
    ending (LF, CRLF or CR); ``space=False`` writes ``data:{...}`` as some servers do."""
    prefix = b"data: " if space else b"data:"
    base = {"id": "chatcmpl-wire", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def event(obj: object) -> bytes:
        data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
        return prefix + data + sep + sep

    out = [event({**base, "choices": [_choice({"role": "assistant", "content": ""})]})]
    out += [event({**base, "choices": [_choice({"content": t})]}) for t in tokens]
    out.append(event({**base, "choices": [_choice({}, "stop")]}))
    if usage:
        n = len(tokens)
        counts = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        out.append(event({**base, "choices": [], "usage": counts}))
    if done:
        out.append(event(b"[DONE]"))
    return out


def _choice(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
    return {"index": 0, "delta": delta, "finish_reason": finish}


def gzip_stream(parts: Iterable[bytes], *, wbits: int = 31) -> list[bytes]:
    """``parts`` compressed as one stream, flushed after each part (Z_SYNC_FLUSH), as a
    compressing proxy does for SSE: each element decompresses to whole events.
    ``wbits``: 31 gzip, 15 zlib (HTTP's ``deflate``), -15 raw deflate (what some servers
    send as ``deflate``)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, wbits)
    out = [comp.compress(p) + comp.flush(zlib.Z_SYNC_FLUSH) for p in parts]
    out[-1] += comp.flush(zlib.Z_FINISH)
    return out
