"""Deadlines without a timer each: one watchdog per event loop.

``asyncio.timeout()`` builds a Timeout object and arms a TimerHandle per block: about
10 µs of CPU on this machine (uvloop), paid twice per request (the response headers, the
whole attempt), where a 64-token answer costs ~700 µs in all. The watchdog keeps every
pending deadline of a loop in one set and one timer, armed for the earliest of them;
when it fires, what is due expires and the timer is armed for the next. Entering and
leaving a block is a set add and a discard, so a deadline that is never reached (nearly
all of them) costs no timer at all. Deadlines are exact (the timer fires at the
earliest one), not polled.

Two kinds of entries: ``within(delay_s)``, a drop-in for ``asyncio.timeout`` (expiry
cancels the task; the block raises TimeoutError), and ``Watch``, whose ``when`` may
move later by itself (an idle timeout: last activity + limit), re-checked lazily when
it comes due instead of re-armed on every activity.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

__all__ = ["Deadline", "Watch", "watch", "within"]

# A timer this close to an entry's deadline counts as at it (uvloop's clock has 1 ms steps).
_SLACK_S = 1e-3


class Watch(Protocol):
    """An entry of the watchdog: due at ``when`` (loop time)."""

    when: float

    def fire(self, now: float) -> bool:
        """``when`` has come: expire (True, the entry is dropped) or move ``when`` later
        (False, checked again then)."""


class _Watchdog:
    """The pending entries of one loop and the one timer for the earliest."""

    __slots__ = ("loop", "entries", "timer", "wake_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.entries: set[Watch] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.wake_at = math.inf

    def add(self, entry: Watch) -> None:
        self.entries.add(entry)
        if entry.when < self.wake_at:
            self._arm(entry.when)

    def discard(self, entry: Watch) -> None:
        entries = self.entries
        entries.discard(entry)
        if not entries:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.wake_at = math.inf
            _DOGS.pop(self.loop, None)  # nothing pending: hold no reference to the loop

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.wake_at = when
        self.timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.wake_at = math.inf
        now = self.loop.time()
        due_by = now + _SLACK_S
        earliest = math.inf
        for entry in list(self.entries):
            if entry.when <= due_by and entry.fire(now):
                self.entries.discard(entry)
            elif entry.when < earliest:
                earliest = entry.when
        if earliest < math.inf:
            self._arm(max(earliest, now + _SLACK_S))
        elif not self.entries:
            _DOGS.pop(self.loop, None)


_DOGS: dict[asyncio.AbstractEventLoop, _Watchdog] = {}


def watch(entry: Watch, loop: asyncio.AbstractEventLoop) -> _Watchdog:
    """Add ``entry`` to ``loop``'s watchdog; returns it (``discard(entry)`` when done)."""
    dog = _DOGS.get(loop)
    if dog is None:
        dog = _DOGS[loop] = _Watchdog(loop)
    dog.add(entry)
    return dog


class Deadline:
    """``with within(delay_s):`` like ``async with asyncio.timeout(delay_s):`` — the
    task is cancelled when the time is up, and the block raises TimeoutError."""

    __slots__ = ("when", "delay_s", "expired", "_task", "_cancelling", "_dog")

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.when = math.inf
        self.expired = False

    def fire(self, now: float) -> bool:
        self.expired = True
        self._task.cancel()
        return True

    def __enter__(self) -> Deadline:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("within() must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self.when = loop.time() + self.delay_s
        self._dog = watch(self, loop)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        self._dog.discard(self)
        # As asyncio.timeout: only a cancellation that this deadline caused (and nothing
        # else asked for since) becomes TimeoutError.
        if (
            self.expired
            and self._task.uncancel() <= self._cancelling
            and exc_type is not None
            and issubclass(exc_type, asyncio.CancelledError)
        ):
            raise TimeoutError from (exc if isinstance(exc, BaseException) else None)


def within(delay_s: float) -> Deadline:
    """A deadline ``delay_s`` from entering the block (see Deadline)."""
    return Deadline(delay_s)
