"""Gates at the start of work: the admission ramp (slow start), and the checks that the job
itself is wrong (systematic failures), so a broken job stops the run instead of failing every
prompt.

- ``FailureGate`` decides on final outcomes: until something succeeds, failures are held
  back, and three identical ones with nothing streaming anywhere stop the run.
- ``EarlyFailureCheck`` decides sooner, on the first failing attempts. A request's final
  failure can be many minutes away (6 attempts, each up to its timeouts, with backoff
  between), so a server that accepts and never answers would hold a run for minutes with
  nothing recorded. Until anything has answered, if the first ``threshold`` failing
  attempts all fail with the same error class, and that class says the target cannot work
  (no connection, no answer in time), the run stops, resumable. Load signals (429, 5xx,
  overloaded) never count: a busy server is not a wrong job, and the retry policy is made
  for them. Request-fatal errors (400, 404, ...) are final on their first attempt;
  FailureGate covers them.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections import deque
from collections.abc import Callable

from llmbatch.config.model import ProviderConfig
from llmbatch.errors import ConnectError, DeadlineExceeded, ReadTimeout, RequestError
from llmbatch.pacing.concurrency import wait_in_line
from llmbatch.records import Outcome

__all__ = [
    "FIRST_ATTEMPTS_THRESHOLD",
    "SYSTEMATIC_FAILURE_THRESHOLD",
    "EarlyFailureCheck",
    "FailureGate",
    "Ramp",
    "failure_hint",
]

# Identical failures with no success yet that mean the whole job is wrong (an unknown
# model, an unreachable base URL, a malformed default parameter).
SYSTEMATIC_FAILURE_THRESHOLD = 3


class Ramp:
    """Slow start for admission, until the server's answers say how fast to go.

    The first request goes alone. While answers come without rate-limit information,
    each one lets two more requests start, so admission doubles per round trip (like
    TCP's slow start) instead of sending the whole concurrency at a limit nobody knows
    yet. The ramp opens for good on the first answer that carries rate-limit
    information or is a 429 (from then on the rate pacer knows), or once it allows
    ``full()`` requests (the concurrency). A failed attempt counts as an answer, so a
    failing first request never holds the others back.
    """

    __slots__ = ("_full", "_allowed", "_started", "_open", "_waiters")

    def __init__(self, full: Callable[[], int]) -> None:
        self._full = full  # the concurrency limit now
        self._allowed = 1
        self._started = 0
        self._open = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def is_open(self) -> bool:
        """True once admission no longer ramps."""
        return self._open

    async def wait_turn(self) -> None:
        """Return when this request may start (at once when the ramp is open)."""
        if self._open:
            return
        if not self._waiters and self._started < self._allowed:
            self._started += 1
            return
        await wait_in_line(self._waiters, pass_on=self._pass_on)

    def _pass_on(self) -> None:
        """A turn that came just before its waiter was cancelled goes to the next one."""
        self._started -= 1
        self._wake()

    def answered(self, *, informed: bool) -> None:
        """An attempt got its answer (or failed); ``informed``: it told the pacer a rate."""
        if self._open:
            return
        if informed:
            self.open()
            return
        self._allowed += 2
        if self._allowed >= self._full():
            self.open()
        else:
            self._wake()

    def open(self) -> None:
        """Stop ramping: every waiter goes (idempotent)."""
        self._open = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    def _wake(self) -> None:
        while self._waiters and self._started < self._allowed:
            fut = self._waiters.popleft()
            if fut.done():
                continue
            self._started += 1
            fut.set_result(None)


class FailureGate:
    """Holds failed outcomes back until something succeeds.

    If the first ``threshold`` outcomes all fail the same way (error code and status)
    while no content streams anywhere, the job itself is wrong: the run stops and writes
    no records for them, so fixing the cause and re-running does all the work. The
    message names the usual causes of the failure for ``target`` (see ``failure_hint``).
    """

    def __init__(
        self, threshold: int = SYSTEMATIC_FAILURE_THRESHOLD, target: ProviderConfig | None = None
    ) -> None:
        self.threshold = threshold
        self.target = target
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
            why = f"every request fails the same way: {outcome.error_message}"
            return [], why + failure_hint(outcome.status_code, self.target)
        return self.release(), None

    def release(self) -> list[Outcome]:
        """Stop holding; the outcomes held so far (to commit unless the run aborted)."""
        self._holding = False
        held, self._held = self._held, []
        return held


def failure_hint(status: int | None, target: ProviderConfig | None) -> str:
    """The usual causes of ``status`` failing every request to ``target``, as a sentence
    to append to the abort message ("" when there is nothing useful to say)."""
    if status not in (404, 405) or target is None or target.embedded_mock:
        return ""
    base = target.base_url.rstrip("/")
    path = urllib.parse.urlsplit(base).path
    if not path:
        # vLLM, llama.cpp, Ollama, LM Studio, OpenAI itself: the API lives under /v1.
        return (
            f". The base URL {base} has no path: OpenAI-compatible servers usually serve "
            f"under /v1 (--base-url {base}/v1)"
        )
    if status == 405:
        return f". Check the base URL ({base}): the server does not take POST there"
    model = f"the model {target.model!r}" if target.model else "the model"
    return (
        f". A 404 for every request usually means a wrong base URL ({base}: is the API "
        f"path right?), or {model} is not one the server serves (GET {base}/models lists them)"
    )


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
