"""llmbatch.pacing: token buckets, configured caps, 429 pauses, AIMD, the limiter.

Deterministic fake clocks, no real sleeps. Header interpretation: test_pacing_headers.py.
"""

from __future__ import annotations

import asyncio

import pytest

from llmbatch.pacing import (
    TOKENS_PER_MESSAGE,
    AdaptiveConcurrency,
    ConcurrencyLimiter,
    Pacer,
    RateGovernor,
    TokenBucket,
    estimate_input_tokens,
)

# Nothing here waits on the wall clock; a hang means a limiter bug, so fail fast.
pytestmark = pytest.mark.timeout(5)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


WALL_NOW = 1_721_239_740.0  # 2024-07-17T18:09:00Z


def make_governor(
    clock: FakeClock,
    *,
    rpm: float | None = None,
    input_tpm: float | None = None,
    output_tpm: float | None = None,
    total_tpm: float | None = None,
) -> RateGovernor:
    return RateGovernor(
        rpm=rpm,
        input_tpm=input_tpm,
        output_tpm=output_tpm,
        total_tpm=total_tpm,
        clock=clock,
        wall_clock=lambda: WALL_NOW,
    )


# --------------------------------------------------------------------------- TokenBucket


def test_bucket_starts_full_and_is_free_within_balance(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=5, capacity=10, clock=clock)
    assert bucket.available == 10
    assert bucket.reserve(4) == 0.0
    assert bucket.reserve(6) == 0.0
    assert bucket.available == 0.0


def test_bucket_debt_wait_math(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=5, capacity=10, clock=clock)
    assert bucket.reserve(10) == 0.0
    # Each later caller queues behind the debt: waits spread at exactly the refill rate.
    assert bucket.reserve(5) == pytest.approx(1.0)
    assert bucket.reserve(5) == pytest.approx(2.0)


def test_bucket_debt_is_repaid_over_time(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=5, capacity=10, clock=clock)
    bucket.reserve(20)  # 10 in debt
    clock.advance(1.0)
    assert bucket.available == pytest.approx(-5)
    assert bucket.reserve(1) == pytest.approx(1.2)
    clock.advance(1.2)
    assert bucket.available == pytest.approx(0)
    assert bucket.reserve(0) == 0.0


def test_bucket_larger_than_capacity_waits_proportionately(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=100, capacity=100, clock=clock)
    assert bucket.reserve(400) == pytest.approx(3.0)


def test_bucket_refill_is_capped_at_capacity(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=5, capacity=10, clock=clock)
    bucket.reserve(10)
    clock.advance(100)
    assert bucket.available == 10


def test_bucket_refund_and_charge(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=1, capacity=10, clock=clock)
    bucket.reserve(8)
    bucket.refund(5)
    assert bucket.available == 7
    bucket.refund(100)  # capped
    assert bucket.available == 10
    bucket.charge(14)
    assert bucket.available == -4
    assert bucket.reserve(1) == pytest.approx(5.0)


def test_bucket_set_available_only_lowers(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=1, capacity=10, clock=clock)
    bucket.reserve(5)
    bucket.set_available(8)
    assert bucket.available == 5
    bucket.set_available(2)
    assert bucket.available == 2
    bucket.set_available(-3)
    assert bucket.reserve(0) == pytest.approx(3)


def test_bucket_clock_going_backwards_mints_nothing(clock: FakeClock) -> None:
    bucket = TokenBucket(rate_per_s=1, capacity=10, clock=clock)
    bucket.reserve(10)
    clock.advance(-5)
    assert bucket.available == 0
    clock.advance(1)
    assert bucket.available == 1


@pytest.mark.parametrize(("rate", "capacity"), [(0, 1), (-1, 1), (float("inf"), 1), (1, -1)])
def test_bucket_rejects_bad_parameters(rate: float, capacity: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, capacity)


def test_bucket_rejects_negative_amounts(clock: FakeClock) -> None:
    bucket = TokenBucket(1, 1, clock)
    for method in (bucket.reserve, bucket.refund, bucket.charge):
        with pytest.raises(ValueError):
            method(-1)


# --------------------------------------------------------------------------- RateGovernor


def test_governor_is_a_pacer(clock: FakeClock) -> None:
    assert isinstance(make_governor(clock), Pacer)


def test_governor_unlimited_never_waits(clock: FakeClock) -> None:
    gov = make_governor(clock)
    assert all(gov.reserve(10_000, 10_000) == 0.0 for _ in range(1000))
    assert gov.snapshot()["limits"] == {}


def test_governor_rpm_only_bounded_burst_then_paced(clock: FakeClock) -> None:
    gov = make_governor(clock, rpm=600)  # 10/s, burst of 1 s = 10 requests
    waits = [gov.reserve(1_000_000, 1_000_000) for _ in range(13)]
    assert waits[:10] == [0.0] * 10
    assert waits[10:] == pytest.approx([0.1, 0.2, 0.3])
    snap = gov.snapshot()["limits"]["requests"]
    assert snap["rate_per_s"] == pytest.approx(10)
    assert snap["capacity"] == pytest.approx(10)
    assert snap["source"] == "config"


def test_governor_window_scaling(clock: FakeClock) -> None:
    # rpm=600 with window_s=1 means 600 per second; burst_s >= window_s caps at the limit.
    gov = RateGovernor(rpm=600, input_tpm=None, output_tpm=None, window_s=1, clock=clock)
    waits = [gov.reserve(0, 0) for _ in range(601)]
    assert waits[:600] == [0.0] * 600
    assert waits[600] == pytest.approx(1 / 600)


def test_governor_burst_s_sets_capacity(clock: FakeClock) -> None:
    gov = RateGovernor(rpm=600, input_tpm=None, output_tpm=None, burst_s=5, clock=clock)
    assert gov.snapshot()["limits"]["requests"]["capacity"] == pytest.approx(50)


def test_governor_tpm_and_settle_corrections(clock: FakeClock) -> None:
    gov = make_governor(clock, input_tpm=6000, output_tpm=3000)  # 100/s in, 50/s out
    assert gov.reserve(100, 50) == 0.0
    assert gov.reserve(50, 0) == pytest.approx(0.5)  # input is now 50 in debt
    # First request really used 40 in / 50 out: 60 input tokens come back.
    gov.settle(100, 50, 40, 50)
    assert gov.snapshot()["limits"]["input_tokens"]["available"] == pytest.approx(10)
    # Output under-estimated by 100: charged, so the next request waits for it.
    gov.settle(0, 0, None, 100)
    assert gov.snapshot()["limits"]["input_tokens"]["available"] == pytest.approx(10)
    assert gov.reserve(0, 0) == pytest.approx(2.0)


def test_governor_settle_unknown_usage_keeps_estimate(clock: FakeClock) -> None:
    gov = make_governor(clock, input_tpm=6000)
    gov.reserve(100, 0)
    gov.settle(100, 0, None, None)
    assert gov.snapshot()["limits"]["input_tokens"]["available"] == pytest.approx(0)


def test_governor_total_tpm_charges_both_directions(clock: FakeClock) -> None:
    gov = make_governor(clock, total_tpm=6000)  # 100/s combined
    assert gov.reserve(60, 40) == 0.0
    assert gov.reserve(30, 20) == pytest.approx(0.5)
    gov.settle(30, 20, 10, 10)  # 30 back
    assert gov.snapshot()["limits"]["tokens"]["available"] == pytest.approx(-20)


def test_governor_wait_is_the_max_over_buckets(clock: FakeClock) -> None:
    gov = make_governor(clock, rpm=600, input_tpm=6000)  # 10 req/s, 100 in/s
    assert gov.reserve(400, 0) == pytest.approx(3.0)
    assert gov.reserve(0, 0) == pytest.approx(3.0)  # input debt dominates the request bucket


def test_governor_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        RateGovernor(rpm=0, input_tpm=None, output_tpm=None)
    with pytest.raises(ValueError):
        RateGovernor(rpm=None, input_tpm=None, output_tpm=None, window_s=0)
    with pytest.raises(ValueError):
        make_governor(FakeClock()).reserve(-1, 0)


# --------------------------------------------------------------------------- 429 pauses


def test_on_rate_limited_pauses_all_reservations(clock: FakeClock) -> None:
    gov = make_governor(clock, rpm=600)
    gov.on_rate_limited(5.0)
    assert gov.paused_for_s() == pytest.approx(5.0)
    waits = [gov.reserve(0, 0) for _ in range(3)]
    # After the pause, queued requests leave at the bucket's rate, not all at once.
    assert waits == pytest.approx([5.1, 5.2, 5.3])
    clock.advance(6)
    assert gov.paused_for_s() == 0.0


def test_on_rate_limited_without_buckets_and_default_backoff(clock: FakeClock) -> None:
    gov = make_governor(clock)
    gov.on_rate_limited(None)
    assert gov.reserve(0, 0) == pytest.approx(1.0)
    clock.advance(0.4)
    assert gov.reserve(0, 0) == pytest.approx(0.6)
    clock.advance(0.6)
    assert gov.reserve(0, 0) == 0.0
    gov.on_rate_limited(float("nan"))  # unusable Retry-After: default backoff
    assert gov.snapshot()["paused_for_s"] == pytest.approx(1.0)


def test_shorter_retry_after_does_not_shorten_a_pause(clock: FakeClock) -> None:
    gov = make_governor(clock)
    gov.on_rate_limited(10)
    gov.on_rate_limited(2)
    assert gov.reserve(0, 0) == pytest.approx(10)


def test_estimate_input_tokens() -> None:
    assert estimate_input_tokens(0) == TOKENS_PER_MESSAGE
    assert estimate_input_tokens(1) == 1 + TOKENS_PER_MESSAGE
    assert estimate_input_tokens(8) == 2 + TOKENS_PER_MESSAGE
    assert estimate_input_tokens(9) == 3 + TOKENS_PER_MESSAGE
    assert estimate_input_tokens(400, messages=3) == 100 + 3 * TOKENS_PER_MESSAGE
    assert estimate_input_tokens(-5) == TOKENS_PER_MESSAGE


# --------------------------------------------------------------------------- AIMD


def test_aimd_grows_about_one_per_round_trip_up_to_cap(clock: FakeClock) -> None:
    ac = AdaptiveConcurrency(initial=2, floor=1, cap=5, clock=clock, slow_start=False)
    for _ in range(2):
        ac.on_success(0.1)
    assert ac.limit == 3
    for _ in range(2):
        ac.on_success(0.1)
    assert ac.limit == 3  # needs 3 successes at limit 3
    ac.on_success(0.1)
    assert ac.limit == 4
    for _ in range(100):
        ac.on_success(0.1)
    assert ac.limit == 5


def test_aimd_burst_of_429s_in_one_window_is_one_decrease(clock: FakeClock) -> None:
    ac = AdaptiveConcurrency(initial=100, floor=1, cap=200, clock=clock)
    for _ in range(10):
        ac.on_rate_limited()
        clock.advance(0.05)
    assert ac.limit == 70
    clock.advance(1.0)  # cooldown (1 s minimum) is over
    ac.on_rate_limited()
    assert ac.limit == 49


def test_aimd_cooldown_follows_smoothed_latency(clock: FakeClock) -> None:
    ac = AdaptiveConcurrency(initial=100, floor=1, cap=200, clock=clock)
    ac.on_success(3.0)
    ac.on_rate_limited()
    assert ac.limit == 70
    clock.advance(2.0)
    ac.on_rate_limited()
    assert ac.limit == 70  # still within a 3 s window
    clock.advance(1.5)
    ac.on_rate_limited()
    assert ac.limit == 49


def test_aimd_strongest_signal_in_a_window_wins(clock: FakeClock) -> None:
    ac = AdaptiveConcurrency(initial=100, floor=1, cap=200, clock=clock)
    ac.on_error()
    assert ac.limit == 90
    ac.on_error()
    assert ac.limit == 90
    ac.on_rate_limited()
    assert ac.limit == 70  # 100 x 0.7, not 90 x 0.7


def test_aimd_floor_and_cap_respected(clock: FakeClock) -> None:
    ac = AdaptiveConcurrency(initial=1000, floor=3, cap=16, clock=clock)
    assert ac.limit == 16
    for _ in range(50):
        ac.on_rate_limited()
        ac.on_error()
        clock.advance(1.1)
    assert ac.limit == 3
    assert AdaptiveConcurrency(initial=0, floor=2, cap=4).limit == 2


def test_aimd_small_limits_still_decrease_by_one(clock: FakeClock) -> None:
    ac = AdaptiveConcurrency(initial=3, floor=1, cap=16, clock=clock)
    ac.on_error()  # 3 x 0.9 = 2.7 -> 2
    assert ac.limit == 2
    clock.advance(1.1)
    ac.on_error()
    assert ac.limit == 1


def test_aimd_backs_off_when_latency_rises(clock: FakeClock) -> None:
    ac = AdaptiveConcurrency(initial=20, floor=1, cap=100, clock=clock)
    for _ in range(5):
        ac.on_success(0.1)
        clock.advance(0.01)
    start = ac.limit
    # EWMA 0.1 -> 0.18 (1.8x: hold) -> 0.244 (2.4x: decrease) -> 0.295 (within cooldown).
    for _ in range(3):
        ac.on_success(0.5)
        clock.advance(0.01)
    assert ac.limit == start * 7 // 10
    # Still slow: no growth, and further decreases only once per cooldown window.
    for _ in range(20):
        ac.on_success(0.5)
    assert ac.limit == start * 7 // 10
    clock.advance(1.5)
    ac.on_success(0.5)
    assert ac.limit == start * 7 // 10 * 7 // 10


def test_aimd_holds_without_growing_in_the_tolerance_band(clock: FakeClock) -> None:
    ac = AdaptiveConcurrency(
        initial=2, floor=1, cap=100, clock=clock, ewma_alpha=1.0, slow_start=False
    )
    ac.on_success(0.1)
    for _ in range(50):
        ac.on_success(0.17)  # 1.7x baseline: between hold (1.5x) and tolerance (2x)
    assert ac.limit == 2
    ac.on_success(0.1)
    ac.on_success(0.1)
    assert ac.limit == 3


def test_aimd_baseline_forgets_old_samples(clock: FakeClock) -> None:
    ac = AdaptiveConcurrency(
        initial=10,
        floor=1,
        cap=100,
        clock=clock,
        ewma_alpha=1.0,
        baseline_window_s=10,
        slow_start=False,
    )
    ac.on_success(0.1)
    clock.advance(11)
    ac.on_success(1.0)  # baseline 0.1 expired: the new workload sets a new baseline
    assert ac.limit == 10  # 10x the old baseline would have been a decrease
    for _ in range(10):
        ac.on_success(1.0)
    assert ac.limit == 11  # at the new baseline: additive growth


def test_aimd_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        AdaptiveConcurrency(initial=1, floor=0, cap=4)
    with pytest.raises(ValueError):
        AdaptiveConcurrency(initial=1, floor=5, cap=4)
    with pytest.raises(ValueError):
        AdaptiveConcurrency(initial=1, floor=1, cap=4, decrease_factor=1.0)
    with pytest.raises(ValueError):
        AdaptiveConcurrency(initial=1, floor=1, cap=4, latency_hold=3, latency_tolerance=2)


# --------------------------------------------------------------------------- limiter


async def run_pending() -> None:
    """Let every ready task run (zero-length sleeps only; no wall-clock waiting)."""
    for _ in range(10):
        await asyncio.sleep(0)


class Holders:
    """Tasks that each take a slot and hold it until released by the test."""

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self.limiter = limiter
        self.entered: list[int] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.max_in_use = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def _hold(self, n: int) -> None:
        async with self.limiter.slot():
            self.entered.append(n)
            self.max_in_use = max(self.max_in_use, self.limiter.in_use)
            await self.gates[n].wait()

    def start(self, count: int) -> None:
        for _ in range(count):
            n = len(self.gates)
            self.gates[n] = asyncio.Event()
            self.tasks.append(asyncio.create_task(self._hold(n)))

    def finish(self, n: int) -> None:
        self.gates[n].set()

    async def finish_all(self) -> None:
        for gate in self.gates.values():
            gate.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_limiter_respects_limit_in_fifo_order() -> None:
    limiter = ConcurrencyLimiter(lambda: 2)
    holders = Holders(limiter)
    holders.start(5)
    await run_pending()
    assert holders.entered == [0, 1]
    assert (limiter.in_use, limiter.waiting) == (2, 3)
    holders.finish(0)
    await run_pending()
    assert holders.entered == [0, 1, 2]
    await holders.finish_all()
    assert holders.entered == [0, 1, 2, 3, 4]
    assert holders.max_in_use == 2
    assert limiter.in_use == 0


async def test_limiter_raising_limit_wakes_waiters() -> None:
    limit = [1]
    limiter = ConcurrencyLimiter(lambda: limit[0])
    holders = Holders(limiter)
    holders.start(4)
    await run_pending()
    assert holders.entered == [0]
    limit[0] = 3
    limiter.notify()
    await run_pending()
    assert holders.entered == [0, 1, 2]
    assert limiter.in_use == 3
    await holders.finish_all()


async def test_limiter_lowering_limit_interrupts_no_holder() -> None:
    limit = [3]
    limiter = ConcurrencyLimiter(lambda: limit[0])
    holders = Holders(limiter)
    holders.start(4)
    await run_pending()
    assert holders.entered == [0, 1, 2]
    limit[0] = 1
    holders.finish(0)
    await run_pending()
    assert limiter.in_use == 2  # nobody admitted while in_use >= limit
    holders.finish(1)
    await run_pending()
    assert holders.entered == [0, 1, 2]
    holders.finish(2)
    await run_pending()
    assert holders.entered == [0, 1, 2, 3]
    assert limiter.in_use == 1
    await holders.finish_all()
    assert limiter.in_use == 0


async def test_limiter_cancelled_waiter_does_not_leak() -> None:
    limiter = ConcurrencyLimiter(lambda: 1)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire())
    await run_pending()
    assert limiter.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (limiter.in_use, limiter.waiting) == (1, 0)
    limiter.release()
    assert limiter.in_use == 0
    await limiter.acquire()  # the slot is really free
    limiter.release()


async def test_limiter_cancel_after_handoff_passes_the_slot_on() -> None:
    limiter = ConcurrencyLimiter(lambda: 1)
    await limiter.acquire()
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await run_pending()
    limiter.release()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # the slot went on to the next waiter
    assert (limiter.in_use, limiter.waiting) == (1, 0)
    limiter.release()
    assert limiter.in_use == 0


async def test_limiter_cancelled_head_waiter_unblocks_others_after_limit_rise() -> None:
    limit = [1]
    limiter = ConcurrencyLimiter(lambda: limit[0])
    await limiter.acquire()
    head = asyncio.create_task(limiter.acquire())
    tail = asyncio.create_task(limiter.acquire())
    await run_pending()
    limit[0] = 2  # raised without notify(); the cancellation re-checks the limit
    head.cancel()
    await run_pending()
    assert tail.done()
    assert limiter.in_use == 2
    limiter.release()
    limiter.release()


async def test_limiter_waiter_cancelled_then_skipped_by_release() -> None:
    limiter = ConcurrencyLimiter(lambda: 1)
    await limiter.acquire()
    head = asyncio.create_task(limiter.acquire())
    tail = asyncio.create_task(limiter.acquire())
    await run_pending()
    head.cancel()  # its future is cancelled now, but its task has not unwound yet
    limiter.release()  # must skip the cancelled head and hand the slot to tail
    with pytest.raises(asyncio.CancelledError):
        await head
    await tail
    assert (limiter.in_use, limiter.waiting) == (1, 0)
    limiter.release()
    assert limiter.in_use == 0


async def test_limiter_slot_released_on_exception() -> None:
    limiter = ConcurrencyLimiter(lambda: 1)
    with pytest.raises(RuntimeError, match="boom"):
        async with limiter.slot():
            assert limiter.in_use == 1
            raise RuntimeError("boom")
    assert limiter.in_use == 0


async def test_limiter_release_without_acquire_raises() -> None:
    limiter = ConcurrencyLimiter(lambda: 1)
    with pytest.raises(RuntimeError):
        limiter.release()


def test_aimd_slow_start_doubles_per_round_trip_until_congestion(clock: FakeClock) -> None:
    ac = AdaptiveConcurrency(initial=8, floor=1, cap=256, clock=clock)
    for expected in (16, 32, 64, 128, 256):
        for _ in range(ac.limit):  # one round trip: as many successes as in flight
            ac.on_success(0.1)
        assert ac.limit == expected
    ac.on_rate_limited()
    assert ac.limit == 179  # 256 * 0.7
    clock.advance(2.0)
    for _ in range(179):
        ac.on_success(0.1)
    assert ac.limit == 180  # additive from now on


def test_aimd_slow_start_ends_when_latency_rises(clock: FakeClock) -> None:
    ac = AdaptiveConcurrency(initial=4, floor=1, cap=256, clock=clock, ewma_alpha=1.0)
    ac.on_success(0.1)
    assert ac.limit == 5
    ac.on_success(0.17)  # in the hold band (1.5x-2x baseline): the server queues
    assert ac.limit == 5
    for _ in range(4):
        ac.on_success(0.1)
    assert ac.limit == 5  # slow start is over: +1 only after as many successes as the limit
    ac.on_success(0.1)
    assert ac.limit == 6
