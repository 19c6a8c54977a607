"""Open-loop arrivals: the seeded schedule's gaps against their distribution (KS), ramps,
the pacer on virtual time, and the gaps a real batch achieved on the wire."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from itertools import islice

import pytest

from llmbatch import Client
from llmbatch.engine.arrivals import ArrivalPacer, ArrivalProfile, arrival_offsets
from llmbatch.mockserver import MockConfig, start_mock_server
from llmbatch.records import Outcome

from . import virtualtime


def ks_statistic(samples: list[float], cdf: Callable[[float], float]) -> float:
    """Kolmogorov-Smirnov D: the largest gap between the empirical and the given CDF."""
    xs = sorted(samples)
    n = len(xs)
    return max(max((i + 1) / n - cdf(x), cdf(x) - i / n) for i, x in enumerate(xs))


def ks_critical(n: int, alpha: float = 0.01) -> float:
    """The one-sample KS critical value (asymptotic): c(alpha) / sqrt(n)."""
    c = math.sqrt(-0.5 * math.log(alpha / 2))
    return c / math.sqrt(n)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def exp_cdf(rate: float) -> Callable[[float], float]:
    return lambda x: 1 - math.exp(-rate * x) if x > 0 else 0.0


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_poisson_gaps_are_exponential_at_the_rate(seed: int) -> None:
    rate = 40.0
    times = list(islice(arrival_offsets(ArrivalProfile(rate_rps=rate, seed=seed)), 2001))
    g = gaps(times)
    assert times[0] == 0.0
    assert ks_statistic(g, exp_cdf(rate)) < ks_critical(len(g))
    # The wrong rate is rejected: the test has power.
    assert ks_statistic(g, exp_cdf(rate * 1.3)) > ks_critical(len(g))
    assert sum(g) / len(g) == pytest.approx(1 / rate, rel=0.1)


def test_burstiness_gives_gamma_gaps_with_the_same_mean() -> None:
    rate, b = 20.0, 2.0  # shape 2: CDF 1 - e^(-x/θ)(1 + x/θ), θ = 1 / (rate * b)
    theta = 1 / (rate * b)
    g = gaps(list(islice(arrival_offsets(ArrivalProfile(rate_rps=rate, burstiness=b)), 2001)))

    def gamma2(x: float) -> float:
        return 1 - math.exp(-x / theta) * (1 + x / theta)

    assert ks_statistic(g, gamma2) < ks_critical(len(g))
    assert ks_statistic(g, exp_cdf(rate)) > ks_critical(len(g))  # not Poisson any more
    assert sum(g) / len(g) == pytest.approx(1 / rate, rel=0.1)
    bursty = gaps(
        list(islice(arrival_offsets(ArrivalProfile(rate_rps=rate, burstiness=0.25)), 2001))
    )

    def cv(xs: list[float]) -> float:
        mean = sum(xs) / len(xs)
        return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) / mean

    assert cv(bursty) > 1.5 > cv(g)  # CV = 1/sqrt(b): 2 for b=0.25, 0.71 for b=2


def test_constant_and_ramps() -> None:
    times = list(islice(arrival_offsets(ArrivalProfile(rate_rps=4, kind="constant")), 5))
    assert times == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    lin = ArrivalProfile(rate_rps=10, ramp="linear", ramp_up_s=2, ramp_from_rps=2)
    assert [lin.rate_at(t) for t in (0, 1, 2, 5)] == pytest.approx([2, 6, 10, 10])
    exp = ArrivalProfile(rate_rps=16, ramp="exponential", ramp_up_s=4, ramp_from_rps=1)
    assert [exp.rate_at(t) for t in (0, 1, 2, 4)] == pytest.approx([1, 2, 4, 16])
    ramped = list(islice(arrival_offsets(dataclass_replace(lin, kind="constant")), 40))
    assert gaps(ramped)[0] == pytest.approx(0.5) and gaps(ramped)[-1] == pytest.approx(0.1)


def dataclass_replace(p: ArrivalProfile, **kw: object) -> ArrivalProfile:
    import dataclasses

    return dataclasses.replace(p, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw",
    [{"rate_rps": 0}, {"rate_rps": 1, "burstiness": 0}, {"rate_rps": 1, "ramp": "cubic"}],
)
def test_bad_profiles_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ArrivalProfile(**kw)  # type: ignore[arg-type]


class VirtualClock:
    """A clock that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.now += s


async def _items(n: int, clock: VirtualClock, work_s: float = 0.0) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def test_pacer_releases_on_schedule_in_virtual_time() -> None:
    clock = VirtualClock()
    profile = ArrivalProfile(rate_rps=50, seed=3)
    pacer = ArrivalPacer(arrival_offsets(profile), clock=clock.time, sleep=clock.sleep)
    released = []
    async for _ in pacer.pace(_items(500, clock)):
        released.append(clock.now)
    expected = list(islice(arrival_offsets(profile), 500))
    assert [t - 100.0 for t in released] == pytest.approx(expected)
    assert max(pacer.lateness_s) == 0.0
    g = gaps(released)
    assert ks_statistic(g, exp_cdf(50)) < ks_critical(len(g))


async def test_pacer_counts_lateness_when_the_consumer_falls_behind() -> None:
    clock = VirtualClock()
    pacer = ArrivalPacer(
        arrival_offsets(ArrivalProfile(rate_rps=10, kind="constant")),
        clock=clock.time,
        sleep=clock.sleep,
    )
    async for _ in pacer.pace(_items(5, clock)):
        clock.now += 0.15  # each item takes 150 ms to hand on: 50 ms later every time
    assert pacer.lateness_s == pytest.approx([0, 0.05, 0.1, 0.15, 0.2])


def test_a_poisson_batch_sends_poisson_arrivals_on_the_wire() -> None:
    """The send times a real batch achieved (outcomes' sent_at) are a Poisson process.

    Given their count, Poisson arrivals are uniform over the span (KS against the uniform
    CDF), their gaps' coefficient of variation is 1 (a constant rate's is 0), and the
    achieved rate is the schedule's. The gaps' exponential shape is checked on the seeded
    schedule above. On virtual time (tests/virtualtime.py) a loaded machine's timer jitter
    cannot move the sends; the requests still cross real sockets to the mock.
    """
    rate, n = 50.0, 150
    sent: list[float] = []

    def on_outcome(o: Outcome) -> None:
        assert o.ok and o.metrics.sent_at is not None
        sent.append(o.metrics.sent_at)

    async def main() -> tuple[int, list[float]]:
        server = await start_mock_server(MockConfig(tokens=16, ttft_s=0.0, itl_s=0.0))
        try:
            async with Client("vllm", base_url=server.url, model="m", concurrency=64) as llm:
                batch = llm.batch(
                    [f"p{i}" for i in range(n)],
                    arrivals=ArrivalProfile(rate_rps=rate, seed=11),
                    on_outcome=on_outcome,
                )
                await batch.wait()
            assert batch.pacer is not None
            return server.stats.completed, list(batch.pacer.due)
        finally:
            await server.close()

    completed, due = virtualtime.run(main())
    assert len(sent) == n and completed == n and len(due) == n
    sent.sort()
    t0, t1 = sent[0], sent[-1]
    inner = sent[1:-1]
    assert ks_statistic(inner, lambda x: (x - t0) / (t1 - t0)) < ks_critical(len(inner))
    g = gaps(sent)
    mean = sum(g) / len(g)
    cv = math.sqrt(sum((x - mean) ** 2 for x in g) / len(g)) / mean
    assert 0.75 < cv < 1.3
    scheduled = (n - 1) / (due[-1] - due[0])
    assert (n - 1) / (t1 - t0) == pytest.approx(scheduled, rel=0.05)
