"""Two gates at the start of work: the probe request, and the systematic-failure check."""

from __future__ import annotations

import asyncio

from ..records import Outcome

__all__ = ["SYSTEMATIC_FAILURE_THRESHOLD", "FailureGate", "Probe"]

# Identical failures with no success yet that mean the whole job is wrong (an unknown
# model, an unreachable base URL, a malformed default parameter).
SYSTEMATIC_FAILURE_THRESHOLD = 3


class Probe:
    """The first request of an engine goes alone; the others wait for its response
    headers, which may carry the provider's rate limits, so an initial burst never runs
    into a limit nobody knew. Released as soon as headers arrive, or on any failure."""

    __slots__ = ("_sent", "_done")

    def __init__(self) -> None:
        self._sent = False
        self._done = asyncio.Event()

    async def wait_turn(self) -> None:
        """Return at once for the probe itself and after the probe for everyone else."""
        if self._done.is_set():
            return
        if self._sent:
            await self._done.wait()
        else:
            self._sent = True

    def release(self) -> None:
        """Let everyone go (idempotent)."""
        self._done.set()


class FailureGate:
    """Holds failed outcomes back until something succeeds.

    If the first ``threshold`` outcomes all fail the same way (error code and status)
    while no content streams anywhere, the job itself is wrong: the run stops and writes
    no records for them, so fixing the cause and re-running does all the work.
    """

    def __init__(self, threshold: int = SYSTEMATIC_FAILURE_THRESHOLD) -> None:
        self.threshold = threshold
        self._held: list[Outcome] = []
        self._holding = True

    def admit(self, outcome: Outcome, *, content_seen: bool) -> tuple[list[Outcome], str | None]:
        """(outcomes to commit now, abort message or None) for one finished request."""
        if not self._holding:
            return [outcome], None
        if outcome.ok:
            self._holding = False
            held, self._held = self._held, []
            return [*held, outcome], None
        self._held.append(outcome)
        if len(self._held) < self.threshold:
            return [], None
        codes = {(o.error_code, o.status_code) for o in self._held}
        if len(codes) == 1 and not content_seen:
            return [], f"every request fails the same way: {outcome.error_message}"
        return self.release(), None

    def release(self) -> list[Outcome]:
        """Stop holding; the outcomes held so far (to commit unless the run aborted)."""
        self._holding = False
        held, self._held = self._held, []
        return held
