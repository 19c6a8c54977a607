"""The Ray driver's prompts on their way to the workers (plain Python, no Ray).

A :class:`Feed` hands out chunks of prompts, in input order, to whichever worker asks,
and remembers what each worker holds: the prompts sent to it that have no record yet.
When a worker dies, what it held goes back to the front of the feed (``lost``) and the
surviving workers take it, so one run finishes the job. A prompt is forgotten only once
the driver has folded its record (``recorded``), so nothing sent to a dead worker can
be lost, and since a dead worker writes nothing more, nothing is recorded twice.

The workers' feeds close (``close``) only when the input is used up and nothing is
held anywhere (or the workers are idle: see ``ray_engine``): until then a surviving
worker can still be given a dead one's prompts. Memory stays O(concurrency): a worker
holds at most its queue and its requests in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Iterator

from llmbatch.errors import InputError
from llmbatch.records import PromptRecord
from llmbatch.rundir.shard import item_id

__all__ = ["Feed", "Item"]

Item = PromptRecord | InputError


class Feed:
    """Chunks of prompts for ``workers``; what each holds; what a lost one held."""

    def __init__(self, items: Iterable[Item], *, chunk_size: int, workers: Iterable[str]) -> None:
        self._source: Iterator[Item] = iter(items)
        self._chunk_size = max(1, chunk_size)
        self._again: deque[Item] = deque()  # a lost worker's prompts, sent first
        self._exhausted = False
        self.held: dict[str, dict[str, Item]] = {w: {} for w in workers}
        self.lost_workers: dict[str, int] = {}  # worker -> prompts it held when lost
        self.closed = False
        self.pushing = 0  # chunks taken whose push has not returned yet
        self._waiters: list[asyncio.Future[None]] = []

    # -- handing out -------------------------------------------------------------------
    def take(self, worker: str) -> list[Item]:
        """The next chunk for ``worker`` (empty when there is none now); it holds it."""
        if self.closed or worker not in self.held:
            return []
        chunk: list[Item] = []
        while self._again and len(chunk) < self._chunk_size:
            chunk.append(self._again.popleft())
        while not self._exhausted and len(chunk) < self._chunk_size:
            item = next(self._source, None)
            if item is None:
                self._exhausted = True
            else:
                chunk.append(item)
        held = self.held[worker]
        for item in chunk:
            held[item_id(item)] = item
        return chunk

    @property
    def drained(self) -> bool:
        """True when every prompt has been handed out (and none waits to be re-sent)."""
        return self._exhausted and not self._again

    @property
    def alive(self) -> list[str]:
        """The workers not lost."""
        return list(self.held)

    def held_count(self) -> int:
        """Prompts sent to live workers that have no record yet."""
        return sum(len(h) for h in self.held.values())

    # -- learning --------------------------------------------------------------------------
    def recorded(self, worker: str, record_id: str) -> None:
        """``worker``'s record for ``record_id`` is folded: it holds it no more."""
        held = self.held.get(worker)
        if held is not None and held.pop(record_id, None) is not None and not held:
            self.wake()  # maybe the moment to close

    def lost(self, worker: str) -> int:
        """``worker`` is gone: what it held goes back, first in line; how many prompts."""
        held = self.held.pop(worker, None)
        if held is None:
            return 0
        self._again.extendleft(reversed(list(held.values())))
        self.lost_workers[worker] = len(held)
        self.wake()
        return len(held)

    def close(self) -> None:
        """No more chunks for anyone: the workers' feeds close."""
        self.closed = True
        self.wake()

    # -- waiting -----------------------------------------------------------------------------
    async def wait(self) -> None:
        """Until something changed (prompts to re-send, a close, a ``wake``)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut

    def wake(self) -> None:
        """Wake every ``wait`` (a stop, or anything else its waiters should look at)."""
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
