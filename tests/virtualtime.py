"""Virtual time for in-process tests: an event loop whose clock jumps to its next timer.

llmbatch reads every timing from the running loop's clock (llmbatch/clock.py), and so does
the mock (llmbatch/mockserver/clock.py). On this loop, time moves only when every task waits
on a timer: a test's TTFTs, pacing and timeouts come out exact whatever the machine's load,
and a run of minutes takes the CPU it needs. Real sockets on 127.0.0.1 work unchanged: the
client and the mock share the loop, and a write to a loopback socket is readable at once, so
"nothing ready" means "everyone waits on a timer".

Work sent to threads (the run directory's fsyncs) is awaited for real, without moving the
clock: it takes no virtual time, and no timer fires early while it runs.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["TIMER_SLACK_S", "VirtualClockLoop", "loop_time", "new_loop", "run"]

T = TypeVar("T")

# How far from its limit a timeout may fire on virtual time: llmbatch's watchdog counts a
# timer within 1 ms of a deadline as at it (llmbatch/http/watchdog.py); the libraries'
# own timers fire exactly.
TIMER_SLACK_S = 1e-3


def loop_time() -> float:
    """The running loop's clock (virtual on a VirtualClockLoop): what llmbatch times with."""
    return asyncio.get_running_loop().time()


class _JumpingSelector(selectors.DefaultSelector):
    """A selector that never waits on a timer: with nothing ready, the clock jumps instead."""

    loop: VirtualClockLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        if self.loop.threads_busy:
            return super().select(timeout)  # the thread's wake-up ends the wait
        events = super().select(0)
        if events or timeout is None or timeout <= 0:
            return events
        self.loop.now_s += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: ``time()`` moves only when every task waits on a timer."""

    def __init__(self, start_s: float = 0.0) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.now_s = start_s
        self.threads_busy = 0

    def time(self) -> float:
        return self.now_s

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.threads_busy += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _: asyncio.Future[Any]) -> None:
        self.threads_busy -= 1


def new_loop() -> VirtualClockLoop:
    """A fresh virtual-time loop; its clock starts at the real monotonic time, so values
    taken before the loop started compare sensibly."""
    return VirtualClockLoop(time.monotonic())


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to the end on a fresh virtual-time loop (a sync test's way in; an async
    test marked ``virtualtime`` runs on one with its fixtures, see tests/conftest.py)."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)
