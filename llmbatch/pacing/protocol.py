"""The interface the engine paces through, so a cluster-wide governor can stand in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["ConcurrencyControl", "Pacer", "PollWait"]


class PollWait(float):
    """A wait a pacer returns while it does not know the request's wait yet (its grant is
    on the way from a cluster's governor): look again after it. Not a wait for budget, so
    a request that only waited so was not held back by the rate (``--concurrency auto``
    may grow on its success)."""

    __slots__ = ()


@runtime_checkable
class Pacer(Protocol):
    """What the engine needs from a rate governor (:class:`RateGovernor` is one).

    Per request: ``wait = reserve(est_in, est_out)``; sleep ``wait``, then sleep
    ``paused_for_s()`` until it is 0 (a 429 may have come meanwhile; a :class:`PollWait`
    is a look-again, not budget); send; feed
    ``observe_headers`` with the response's headers (on any status) and
    ``on_rate_limited`` on a 429; ``settle`` once usage is known.
    """

    def reserve(self, est_input_tokens: int, est_output_tokens: int) -> float:
        """Charge one request's estimated budget; seconds to wait before sending it."""
        ...

    def paused_for_s(self) -> float:
        """Seconds left of a pause set by a 429 (0.0 if none)."""
        ...

    def settle(
        self,
        est_input: int,
        est_output: int,
        actual_input: int | None,
        actual_output: int | None,
    ) -> None:
        """Correct a reservation by the usage the server reported (None = unknown)."""
        ...

    def on_rate_limited(self, retry_after_s: float | None, *, age_s: float | None = None) -> None:
        """A 429 arrived: pause sending for ``retry_after_s`` (None = a default backoff);
        ``age_s``: since the refused request was sent."""
        ...

    def observe_headers(
        self, headers: Mapping[str, str], *, age_s: float | None = None, refused: bool = False
    ) -> bool:
        """Learn from a response's rate-limit headers (``age_s``: since its request was
        sent; ``refused``: it was a 429).

        True when they carried rate-limit information (then a 429 is the pacer's alone).
        """
        ...

    def snapshot(self) -> dict[str, Any]:
        """Limits, rates and balances now, for display."""
        ...


class ConcurrencyControl(Protocol):
    """What the engine needs from ``--concurrency auto``'s controller
    (:class:`~llmbatch.pacing.AdaptiveConcurrency` is one; a cluster's share is another)."""

    @property
    def limit(self) -> int:
        """How many requests may be in flight now."""
        ...

    def on_success(self, ttft_s: float) -> None:
        """A request succeeded with this time to first token."""
        ...

    def on_rate_limited(self) -> None:
        """The server refused for load: a 429 without rate information, 503, 529."""
        ...

    def on_error(self) -> None:
        """The server failed or took too long: another 5xx, a timeout."""
        ...
