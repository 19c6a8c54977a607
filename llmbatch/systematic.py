"""Is the job itself wrong? Decided from the first failing attempts, before any answer.

A request's final failure can be many minutes away (6 attempts, each up to its
timeouts, with backoff between), so waiting for final failures lets a server that
accepts and never answers hold a run for many minutes while nothing is recorded. The
first attempts tell sooner: until anything has answered, if the first
``threshold`` failing attempts all fail with the same error class, and that class says
the target cannot work (no connection, no answer in time), the run stops, resumable.

Load signals (429, 5xx, overloaded) never count: a busy server is not a wrong job,
and the retry policy is made for them. Request-fatal errors (400, 404, ...) are final
on their first attempt; the dispatcher's own check on final failures covers them.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import ConnectError, DeadlineExceeded, ReadTimeout, RequestError

__all__ = ["EarlyFailureCheck", "FIRST_ATTEMPTS_THRESHOLD"]

FIRST_ATTEMPTS_THRESHOLD = 3
# Failing like this before anything answered means the base URL cannot serve the job.
_TARGET_UNUSABLE = (ConnectError, ReadTimeout, DeadlineExceeded)


class EarlyFailureCheck:
    """Watches failing attempts until something answers; says when to stop the run."""

    def __init__(
        self, answered: Callable[[], bool], *, threshold: int = FIRST_ATTEMPTS_THRESHOLD
    ) -> None:
        self._answered = answered  # True once any request streamed content or succeeded
        self._threshold = threshold
        self._codes: list[str] = []
        self._settled = False  # decided: the job works, or its failures differ

    def on_failed_attempt(self, exc: RequestError) -> str | None:
        """Record one failing attempt; the reason to stop the run, or None."""
        if self._settled:
            return None
        if self._answered() or not isinstance(exc, _TARGET_UNUSABLE):
            self._settled = True
            return None
        self._codes.append(exc.code)
        if len(set(self._codes)) > 1:
            self._settled = True
            return None
        if len(self._codes) < self._threshold:
            return None
        self._settled = True
        return (
            f"the first {len(self._codes)} attempts all failed the same way and nothing has "
            f"answered: {exc}"
        )
