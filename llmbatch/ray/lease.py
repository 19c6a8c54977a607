"""One rate budget for many processes: a lease governor and the pacer each worker uses.

A cluster run has many clients (Ray actors) but one provider limit. The budget lives in
one place, a :class:`LeaseGovernor` (in Ray: one actor), which holds the same
:class:`~llmbatch.governor.RateGovernor` a single process uses. Each worker's client
gets a :class:`LeasedPacer` instead of its own governor. The pacer has the governor's
interface (``reserve``, ``paused_for_s``, ``settle``, ``on_rate_limited``,
``observe_headers``), so the engine does not know it is shared; behind it:

- ``reserve`` of a request takes a *ticket* and returns a short poll; a background
  task sends every ticket waiting then, in one call, to the lease governor, which
  reserves budget for each exactly as one process would and answers with the time to
  wait for each. The engine's pacing loop (``sleep(reserve())``, then
  ``sleep(paused_for_s())`` until it is 0) then waits out that ticket's own time:
  the ticket is found again through a context variable, since each request paces
  inside its own task. So the N workers together send no faster than one governor
  allows, whatever N is.
- Waits are relative; the worker counts them from when the answer *arrived*, so clock
  offsets between machines and the call's own latency only ever make a worker later.
- Usage corrections (``settle``), 429 pauses and the latest rate-limit headers travel
  to the governor with the next call (at least every ``sync_interval_s``); a pause or a
  limit one worker learns reaches every other within one interval.
- While the governor has no limit at all (none configured, none reported by headers),
  it says so, and ``reserve`` answers 0 locally: no call per request.
- ``--concurrency auto`` is decided for the cluster too: the lease governor may hold a
  :class:`ClusterConcurrency`, one AIMD controller fed by every worker's signals (TTFT
  of each success, 429s, transient errors), which a worker's :class:`LeasedConcurrency`
  (the engine's controller) reports with each call; the reply carries that worker's
  share of the cluster's limit. The workers together stay near what one process's
  controller would settle at, not at workers x a per-worker limit.

- ``--max-cost`` is one budget for the cluster too: a :class:`ClusterBudget` (in the
  same actor) holds the one :class:`~llmbatch.pricing.CostBudget`, and each worker's
  :class:`LeasedBudget` (the engine's budget) asks it to admit each request's worst case
  and tells it what the request cost. A request that does not fit waits while any
  worker has requests in flight; admission stops for good when nothing is in flight
  anywhere and it still does not fit, exactly as in one process.

``LeaseGovernor`` is plain Python (no Ray), so both halves are tested in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmbatch.clock import now
from llmbatch.pacing import AdaptiveConcurrency, RateGovernor
from llmbatch.pricing.budget import GRANTED, WAIT, CostBudget

__all__ = [
    "ClusterBudget",
    "ClusterConcurrency",
    "ConcurrencyReport",
    "LeaseGovernor",
    "LeasedBudget",
    "LeasedConcurrency",
    "LeasedPacer",
    "SyncReply",
    "SyncRequest",
]

POLL_S = 0.005  # how often a request re-checks a ticket whose answer has not come yet


@dataclass(frozen=True, slots=True)
class ConcurrencyReport:
    """A worker's ``--concurrency auto`` signals since its last call."""

    ttfts_s: tuple[float, ...] = ()  # one per success
    rate_limited: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """What one worker sends the governor in one call."""

    worker: str
    reservations: tuple[tuple[int, int], ...] = ()  # (est_in, est_out) per ticket
    settlements: tuple[tuple[int, int, int | None, int | None], ...] = ()
    rate_limited: tuple[float | None, ...] = ()  # one pause (Retry-After) per 429
    headers: dict[str, str] | None = None  # the latest rate-limit headers seen
    headers_age_s: float | None = None  # since the request that got them was sent
    headers_received_ago_s: float = 0.0  # since they arrived at the worker
    concurrency: ConcurrencyReport | None = None  # with --concurrency auto


@dataclass(frozen=True, slots=True)
class SyncReply:
    """The governor's answer: a wait per reservation, the pause, whether limits exist,
    and (with --concurrency auto) this worker's share of the cluster's limit."""

    waits_s: tuple[float, ...]
    paused_for_s: float
    limited: bool
    concurrency_share: int | None = None


class ClusterConcurrency:
    """``--concurrency auto`` for a cluster: one AIMD controller, its limit split
    evenly over the workers still running (each gets at least one slot)."""

    def __init__(self, workers: list[str], *, initial: int, cap: int) -> None:
        self._workers = list(workers)
        floor = max(1, len(self._workers))
        self.aimd = AdaptiveConcurrency(
            initial=max(initial, floor), floor=floor, cap=max(cap, floor)
        )

    @property
    def limit(self) -> int:
        """The cluster's limit now."""
        return self.aimd.limit

    def report(self, rep: ConcurrencyReport) -> None:
        """Feed one worker's signals to the controller."""
        aimd = self.aimd
        for _ in range(rep.rate_limited):
            aimd.on_rate_limited()
        for _ in range(rep.errors):
            aimd.on_error()
        for ttft_s in rep.ttfts_s:
            aimd.on_success(ttft_s)

    def share(self, worker: str) -> int:
        """``worker``'s part of the limit (the first ones get the remainder)."""
        if worker not in self._workers:
            self._workers.append(worker)
        base, extra = divmod(self.aimd.limit, len(self._workers))
        return max(1, base + (1 if self._workers.index(worker) < extra else 0))

    def forget(self, worker: str) -> None:
        """``worker`` is gone: the others share the limit."""
        if worker in self._workers:
            self._workers.remove(worker)

    def snapshot(self) -> dict[str, Any]:
        """The limit and each worker's share, for summary.json."""
        return {"limit": self.limit, "shares": {w: self.share(w) for w in self._workers}}


class ClusterBudget:
    """``--max-cost`` for a cluster: one CostBudget, and what each worker holds in it
    (so a lost worker's reservations are counted as spent, never silently freed)."""

    def __init__(self, max_usd: float, *, spent_usd: float = 0.0) -> None:
        self.budget = CostBudget(max_usd, spent_usd=spent_usd)
        self._held: dict[str, list[float]] = {}

    def admit(self, worker: str, worst_usd: float) -> str:
        """GRANTED, WAIT (some worker has requests in flight) or NEVER."""
        verdict = self.budget.try_reserve(worst_usd)
        if verdict == GRANTED:
            self._held.setdefault(worker, []).append(worst_usd)
        return verdict

    def settle(self, worker: str, worst_usd: float, actual_usd: float) -> None:
        """A request of ``worker`` admitted with ``worst_usd`` cost ``actual_usd``."""
        held = self._held.get(worker)
        if held and worst_usd in held:
            held.remove(worst_usd)
            self.budget.settle(worst_usd, actual_usd)

    def forget(self, worker: str) -> None:
        """``worker`` is gone: what it held may have been spent, so it counts as spent."""
        for worst in self._held.pop(worker, []):
            self.budget.settle(worst, worst)

    def snapshot(self) -> dict[str, Any]:
        """The budget's state, for summary.json."""
        b = self.budget
        return {
            "max_usd": b.max_usd,
            "spent_usd": round(b.spent_usd, 8),
            "reserved_usd": round(b.reserved_usd, 8),
            "in_flight": b.in_flight,
        }


class LeasedBudget:
    """A worker's view of the cluster's budget, with the engine's budget interface.

    ``admit_call(worst_usd)`` asks the ClusterBudget (in Ray: ``actor.budget_admit.
    remote(name, worst)``) and returns its verdict; ``settle_call(worst, actual)`` tells
    it what a request cost (fire and forget; Ray keeps one caller's calls in order). A
    request told to WAIT asks again after its worker's next settlement, or after
    ``poll_s`` (another worker's may have made room).
    """

    def __init__(
        self,
        max_usd: float,
        admit_call: Callable[[float], Awaitable[str]],
        settle_call: Callable[[float, float], None],
        *,
        poll_s: float = 0.1,
    ) -> None:
        self._max_usd = max_usd
        self._admit = admit_call
        self._settle = settle_call
        self._poll_s = poll_s
        self._changed = asyncio.Event()

    @property
    def max_usd(self) -> float:
        """The cluster's budget."""
        return self._max_usd

    async def admit(self, worst_usd: float) -> bool:
        """Reserve ``worst_usd`` in the cluster's budget, waiting while it may fit later."""
        while True:
            verdict = await self._admit(worst_usd)
            if verdict != WAIT:
                return verdict == GRANTED
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._poll_s)

    def settle(self, worst_usd: float, actual_usd: float) -> None:
        """Tell the cluster's budget what a request cost."""
        self._settle(worst_usd, actual_usd)
        self._changed.set()

    def add_spent(self, usd: float) -> None:
        """Prior spending is counted by the driver, which seeds the cluster's budget."""


class LeaseGovernor:
    """The cluster's one rate governor: grants budget to workers' tickets in order.

    ``sync`` is the whole interface (one call per worker batch); in a Ray run this
    object is the state of one actor, whose calls run one at a time.
    """

    def __init__(
        self, governor: RateGovernor, *, concurrency: ClusterConcurrency | None = None
    ) -> None:
        self._gov = governor
        self.concurrency = concurrency
        self.granted = 0
        self.workers: dict[str, int] = {}  # grants per worker, for the summary

    def sync(self, req: SyncRequest) -> SyncReply:
        """Apply what ``req`` reports, then reserve its tickets (news first: it is fresher)."""
        gov = self._gov
        for est_in, est_out, act_in, act_out in req.settlements:
            gov.settle(est_in, est_out, act_in, act_out)
        if req.headers:
            gov.observe_headers(
                req.headers,
                age_s=req.headers_age_s,
                received_ago_s=req.headers_received_ago_s,
            )
        for pause_s in req.rate_limited:
            gov.on_rate_limited(pause_s)
        waits = tuple(gov.reserve(est_in, est_out) for est_in, est_out in req.reservations)
        if waits:
            self.granted += len(waits)
            self.workers[req.worker] = self.workers.get(req.worker, 0) + len(waits)
        limited = bool(gov.snapshot()["limits"])
        share = None
        if self.concurrency is not None:
            if req.concurrency is not None:
                self.concurrency.report(req.concurrency)
            share = self.concurrency.share(req.worker)
        return SyncReply(
            waits_s=waits,
            paused_for_s=gov.paused_for_s(),
            limited=limited,
            concurrency_share=share,
        )

    def forget(self, worker: str) -> None:
        """``worker`` is gone (its share goes to the others)."""
        if self.concurrency is not None:
            self.concurrency.forget(worker)

    def snapshot(self) -> dict[str, Any]:
        """The governor's limits and balances, plus grants in all and per worker."""
        snap = self._gov.snapshot()
        snap["granted"] = self.granted
        snap["granted_per_worker"] = dict(self.workers)
        if self.concurrency is not None:
            snap["concurrency"] = self.concurrency.snapshot()
        return snap


class LeasedConcurrency:
    """A worker's ``--concurrency auto`` controller: its limit is its share of the
    cluster's, and its signals go to the cluster's controller with the next call."""

    def __init__(self, initial: int) -> None:
        self._limit = max(1, initial)
        self._ttfts_s: list[float] = []
        self._rate_limited = 0
        self._errors = 0

    @property
    def limit(self) -> int:
        """This worker's share now."""
        return self._limit

    def on_success(self, ttft_s: float) -> None:
        """Report a success (its TTFT) to the cluster's controller."""
        self._ttfts_s.append(ttft_s)

    def on_rate_limited(self) -> None:
        """Report a 429."""
        self._rate_limited += 1

    def on_error(self) -> None:
        """Report a transient error."""
        self._errors += 1

    def take_report(self) -> ConcurrencyReport:
        """The signals since the last call (then forgotten here)."""
        rep = ConcurrencyReport(tuple(self._ttfts_s), self._rate_limited, self._errors)
        self._ttfts_s = []
        self._rate_limited = self._errors = 0
        return rep

    def put_back(self, rep: ConcurrencyReport) -> None:
        """A call failed: its report goes with the next one."""
        self._ttfts_s[:0] = rep.ttfts_s
        self._rate_limited += rep.rate_limited
        self._errors += rep.errors

    def set_share(self, share: int) -> None:
        """The governor's answer: this worker's share of the cluster's limit."""
        self._limit = max(1, share)


@dataclass(slots=True)
class _Ticket:
    est_in: int
    est_out: int
    at_s: float | None = None  # monotonic time from which the request may go


@dataclass
class _Outbox:
    tickets: list[_Ticket] = field(default_factory=list)
    settlements: list[tuple[int, int, int | None, int | None]] = field(default_factory=list)
    rate_limited: list[float | None] = field(default_factory=list)
    headers: Any = None
    headers_age_s: float | None = None
    headers_seen_s: float = 0.0  # monotonic time they were observed


Transport = Callable[[SyncRequest], Awaitable[SyncReply]]

_current_ticket: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar(
    "llmbatch_lease_ticket", default=None
)


class LeasedPacer:
    """A worker's view of the cluster budget, with the rate governor's interface.

    ``transport`` carries one :class:`SyncRequest` to the :class:`LeaseGovernor` and
    returns its reply (in Ray: ``actor.sync.remote(req)``). ``limited`` says whether
    limits are configured (then the first request already waits for a grant); without
    any, the pacer learns of limits that headers report within ``sync_interval_s``.
    Call from one event loop; ``aclose`` stops the background task.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        worker: str,
        limited: bool = True,
        sync_interval_s: float = 0.25,
        clock: Callable[[], float] = now,
        concurrency: LeasedConcurrency | None = None,
    ) -> None:
        self._transport = transport
        self._concurrency = concurrency
        self._worker = worker
        self._limited = limited
        self._interval_s = sync_interval_s
        self._clock = clock
        self._out = _Outbox()
        self._paused_until_s = -math.inf
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.syncs = 0
        self.sync_errors = 0

    # -- the governor interface ------------------------------------------------------
    def reserve(self, est_input_tokens: int, est_output_tokens: int) -> float:
        """Take a ticket for one request; the wait is learned from ``paused_for_s``."""
        self._ensure_task()
        if not self._limited:
            _current_ticket.set(None)
            return self.paused_for_s()
        ticket = _Ticket(est_input_tokens, est_output_tokens)
        _current_ticket.set(ticket)
        self._out.tickets.append(ticket)
        self._poke()
        return POLL_S

    def paused_for_s(self) -> float:
        """Seconds this request still waits: its ticket's grant, and any cluster pause."""
        now = self._clock()
        wait_s = max(0.0, self._paused_until_s - now)
        ticket = _current_ticket.get()
        if ticket is None:
            return wait_s
        if ticket.at_s is None:
            return max(wait_s, POLL_S)
        ticket_wait_s = ticket.at_s - now
        if ticket_wait_s <= 0:
            _current_ticket.set(None)  # used up: later checks see only pauses
            return wait_s
        return max(wait_s, ticket_wait_s)

    def settle(
        self,
        est_input: int,
        est_output: int,
        actual_input: int | None,
        actual_output: int | None,
    ) -> None:
        """Send a usage correction to the governor with the next call."""
        if not self._limited:
            return  # no limit counts tokens; a limit learned later starts from its headers
        if actual_input is None and actual_output is None:
            return
        self._out.settlements.append((est_input, est_output, actual_input, actual_output))

    def on_rate_limited(self, retry_after_s: float | None, *, age_s: float | None = None) -> None:
        """A 429 here: pause this worker now, and every worker once the governor knows."""
        if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s > 0:
            self._paused_until_s = max(self._paused_until_s, self._clock() + retry_after_s)
        self._out.rate_limited.append(retry_after_s)
        self._poke()

    def observe_headers(
        self, headers: Mapping[str, str], *, age_s: float | None = None, refused: bool = False
    ) -> bool:
        """Keep the latest response headers; their rate-limit part goes with the next call
        (``age_s``: since the request was sent; the time they wait here is added).

        True when they hold a rate-limit header (the governor reads them by its family).
        """
        out = self._out
        out.headers = headers
        out.headers_age_s = age_s
        out.headers_seen_s = self._clock()
        return any("ratelimit" in str(k).lower() for k in headers)

    def snapshot(self) -> dict[str, Any]:
        """This worker's side: whether limits apply, tickets waiting, the pause."""
        return {
            "limited": self._limited,
            "tickets_waiting": len(self._out.tickets),
            "paused_for_s": max(0.0, self._paused_until_s - self._clock()),
            "syncs": self.syncs,
        }

    # -- the background calls ------------------------------------------------------------
    def _ensure_task(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._sync_loop())

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _sync_loop(self) -> None:
        assert self._wake is not None
        wake = self._wake
        backoff_s = 0.05
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._interval_s)
            wake.clear()
            try:
                await self._sync_once()
                backoff_s = 0.05
            except asyncio.CancelledError:
                raise
            except Exception:
                # The governor is unreachable for now: tickets keep waiting (never send
                # unpaced), and the call is tried again.
                self.sync_errors += 1
                await asyncio.sleep(backoff_s)
                backoff_s = min(1.0, backoff_s * 2)
                wake.set()

    async def _sync_once(self) -> None:
        out, self._out = self._out, _Outbox()
        conc = self._concurrency
        report = conc.take_report() if conc is not None else None
        req = SyncRequest(
            worker=self._worker,
            reservations=tuple((t.est_in, t.est_out) for t in out.tickets),
            settlements=tuple(out.settlements),
            rate_limited=tuple(out.rate_limited),
            headers=_rate_headers(out.headers),
            headers_age_s=(
                None
                if out.headers_age_s is None
                else out.headers_age_s + (self._clock() - out.headers_seen_s)
            ),
            headers_received_ago_s=(
                0.0 if out.headers is None else self._clock() - out.headers_seen_s
            ),
            concurrency=report,
        )
        try:
            reply = await self._transport(req)
        except BaseException:
            if conc is not None and report is not None:
                conc.put_back(report)
            # Put everything back, before anything queued since, for the next try.
            self._out.tickets[:0] = out.tickets
            self._out.settlements[:0] = out.settlements
            self._out.rate_limited[:0] = out.rate_limited
            if self._out.headers is None:
                self._out.headers = out.headers
                self._out.headers_age_s = out.headers_age_s
                self._out.headers_seen_s = out.headers_seen_s
            raise
        arrived_s = self._clock()
        self.syncs += 1
        for ticket, wait_s in zip(out.tickets, reply.waits_s, strict=True):
            ticket.at_s = arrived_s + wait_s
        if reply.paused_for_s > 0:
            self._paused_until_s = max(self._paused_until_s, arrived_s + reply.paused_for_s)
        self._limited = reply.limited
        if conc is not None and reply.concurrency_share is not None:
            conc.set_share(reply.concurrency_share)

    async def sync_now(self) -> None:
        """One call to the governor now (at start, and in tests); raises if it fails."""
        await self._sync_once()

    async def aclose(self) -> None:
        """Stop the background task (reports not yet sent are dropped)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _rate_headers(headers: Any) -> dict[str, str] | None:
    """Only the rate-limit headers, as a plain dict that pickles."""
    if not headers:
        return None
    found = {
        str(k).lower(): str(v)
        for k, v in headers.items()
        if "ratelimit" in str(k).lower() or str(k).lower() == "retry-after"
    }
    return found or None
