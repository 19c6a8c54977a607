"""Recorded provider streams, served byte for byte from a loopback server.

The recordings are third-party data kept outside the repository, in
``../shared/replay-recordings/`` next to the repository's root (``manifest.json`` says
what each holds and where it came from); ``recordings()`` returns None when the folder
is absent, and the tests that need it skip with ``RECORDINGS_ABSENT``.

``ReplayServer`` is a ``RawServer`` (tests/rawhttp.py, which imports nothing of
llmbatch) answering every POST with one recording: the one whose name follows
``replay:`` anywhere in the request body (put ``"replay:<name>"`` in the prompt), so one
server and one client pool serve a whole corpus. The body goes out with chunked framing,
split into writes either one per SSE event (``"events"``) or at random offsets from a
seed (``"random"``); between writes the server yields to the loop, so an in-process
client reads each piece on its own.
"""

from __future__ import annotations

import os
import random
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from .rawhttp import Action, RawServer, Seen, Send, chunk, response_head

__all__ = [
    "MODES",
    "RECORDINGS_ABSENT",
    "RECORDINGS_DIR",
    "Recording",
    "ReplayServer",
    "event_cuts",
    "random_cuts",
    "recordings",
    "replay_prompt",
]

_ROOT = Path(__file__).resolve().parents[1]


def _recordings_dir() -> Path:
    """``shared/replay-recordings`` next to the repository's root; in a git worktree,
    next to the main checkout's root when not next to the worktree's own
    (``LLMBATCH_REPLAY_RECORDINGS`` names another folder)."""
    given = os.environ.get("LLMBATCH_REPLAY_RECORDINGS")
    if given:
        return Path(given)
    roots = [_ROOT]
    dotgit = _ROOT / ".git"
    if dotgit.is_file():  # a worktree: "gitdir: <main>/.git/worktrees/<name>"
        gitdir = dotgit.read_text().partition("gitdir:")[2].strip()
        if gitdir:
            roots.append(Path(gitdir).resolve().parents[2])
    candidates = [root.parent / "shared" / "replay-recordings" for root in roots]
    return next((c for c in candidates if c.is_dir()), candidates[0])


RECORDINGS_DIR = _recordings_dir()
RECORDINGS_ABSENT = "replay recordings absent"
MODES = ("events", "random")
_NAME = re.compile(rb"replay:([A-Za-z0-9_.-]+)")
_EOL = re.compile(rb"\r\n|\r|\n")  # the line endings of SSE


@dataclass(frozen=True)
class Recording:
    """One recorded response body and what the manifest says of it."""

    name: str
    kind: str  # openai | anthropic | responses | gemini
    features: str
    content_type: str
    data: bytes


def recordings(kind: str | None = None, folder: Path = RECORDINGS_DIR) -> list[Recording] | None:
    """The manifest's recordings (of ``kind`` when given), in manifest order; None when
    the folder is absent."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    out = []
    for entry in orjson.loads(manifest.read_bytes()):
        if kind is not None and entry["kind"] != kind:
            continue
        out.append(
            Recording(
                name=entry["name"],
                kind=entry["kind"],
                features=entry.get("features", ""),
                content_type=entry.get("content_type") or "text/event-stream",
                data=(folder / f"{entry['name']}.sse").read_bytes(),
            )
        )
    return out


def replay_prompt(name: str) -> str:
    """The prompt text that makes a ReplayServer answer with recording ``name``."""
    return f"replay:{name}"


def event_cuts(data: bytes) -> list[int]:
    """Offsets just after each blank line that ends an SSE event (LF, CRLF or CR)."""
    cuts, line_start = [], 0
    for m in _EOL.finditer(data):
        if m.start() == line_start and line_start > 0:  # an empty line: the event ends
            cuts.append(m.end())
        line_start = m.end()
    return cuts


def random_cuts(data: bytes, seed: int, mean_piece: int = 40) -> list[int]:
    """Random offsets (reproducible from ``seed``), about one per ``mean_piece`` bytes."""
    rng = random.Random(seed)
    n = max(1, len(data) // mean_piece)
    return sorted(rng.sample(range(1, len(data)), min(n, len(data) - 1))) if len(data) > 1 else []


def _pieces(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]


class ReplayServer:
    """A loopback server that answers each POST with the recording its body names.

    ``mode`` is ``"events"`` (one write per SSE event) or ``"random"`` (writes cut at
    random offsets, from ``seed`` and the recording's name). ``served`` counts the
    requests answered per recording.
    """

    def __init__(self, corpus: Sequence[Recording], mode: str = "events", seed: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.by_name = {r.name: r for r in corpus}
        self.mode = mode
        self.seed = seed
        self.served: dict[str, int] = {}
        self.raw = RawServer(self._answer)

    async def start(self) -> ReplayServer:
        """Listen on 127.0.0.1 (ephemeral port)."""
        await self.raw.start()
        return self

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        await self.raw.close()

    async def __aenter__(self) -> ReplayServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>`` (append the API's own path prefix)."""
        return f"http://127.0.0.1:{self.raw.port}"

    def cuts(self, rec: Recording) -> list[int]:
        """Where the body of ``rec`` is cut into writes in this server's mode."""
        if self.mode == "events":
            return event_cuts(rec.data)
        return random_cuts(rec.data, seed=zlib.crc32(rec.name.encode()) ^ self.seed)

    def _answer(self, seen: Seen) -> list[Action]:
        m = _NAME.search(seen.body)
        rec = self.by_name.get(m.group(1).decode()) if m else None
        if rec is None:
            body = b'{"error":{"message":"no recording named in the request","type":"test"}}'
            head = response_head(
                "404 Not Found", [("Content-Type", "application/json")], content_length=len(body)
            )
            return [Send(head + body)]
        self.served[rec.name] = self.served.get(rec.name, 0) + 1
        framed = [chunk(p) for p in _pieces(rec.data, self.cuts(rec))] + [b"0\r\n\r\n"]
        offsets, at = [], 0
        for piece in framed[:-1]:
            at += len(piece)
            offsets.append(at)
        head = response_head("200 OK", [("Content-Type", rec.content_type)], chunked=True)
        return [Send(head), Send(b"".join(framed), split=offsets)]
