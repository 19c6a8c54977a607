"""The cluster rate budget without Ray: N LeasedPacers sharing one LeaseGovernor.

On virtual time (tests/virtualtime.py): the pacers, the governor and the mock read one
loop clock that only moves when every task waits, so the sends keep the budget exactly,
whatever the machine's load."""

from __future__ import annotations

import asyncio

import pytest

from llmbatch.pacing import RateGovernor
from llmbatch.ray.lease import LeasedPacer, LeaseGovernor, SyncReply, SyncRequest

from .virtualtime import loop_time


class Link:
    """An in-process transport that behaves like a remote call: it yields, counts calls."""

    def __init__(self, gov: LeaseGovernor, fail_first: int = 0) -> None:
        self.gov = gov
        self.calls = 0
        self.fail_first = fail_first
        self.synced_at: list[float] = []  # the loop's time of each call the governor took

    async def __call__(self, req: SyncRequest) -> SyncReply:
        self.calls += 1
        await asyncio.sleep(0.001)
        if self.calls <= self.fail_first:
            raise ConnectionError("governor unreachable")
        self.synced_at.append(loop_time())
        return self.gov.sync(req)


pytestmark = pytest.mark.virtualtime


async def pace(pacer: LeasedPacer) -> float:
    """The engine's pacing loop (sleep the reservation, then until no pause is left)."""
    wait_s = pacer.reserve(20, 10)
    while wait_s > 0:
        await asyncio.sleep(wait_s)
        wait_s = pacer.paused_for_s()
    return loop_time()


def assert_conforms(sends: list[float], rate_per_s: float, burst: float) -> None:
    """Token-bucket conformance: any k consecutive sends span >= (k - 1 - burst) / rate.

    The one more than the burst: the first sends also wait for the governor's answer (a
    call: a few ms), later ones for their grant alone, so a window that starts at a late
    first send may hold one send more than the bucket does."""
    sends = sorted(sends)
    for i in range(len(sends)):
        for j in range(i + 1, len(sends)):
            allowed = burst + rate_per_s * (sends[j] - sends[i]) + 1.0
            assert j - i + 1 <= allowed, (i, j, sends[j] - sends[i])


def _governor(rpm: float | None = 600, window_s: float = 6.0) -> LeaseGovernor:
    # 600 per 6 s = 100 requests/s with a burst of 10, as the engine shapes a scaled limit.
    return LeaseGovernor(
        RateGovernor(
            rpm=rpm, input_tpm=None, output_tpm=None, window_s=window_s, burst_s=window_s / 60
        )
    )


async def test_three_workers_together_keep_one_limit() -> None:
    gov = _governor()
    link = Link(gov)
    pacers = [LeasedPacer(link, worker=f"w{i}") for i in range(3)]
    start = loop_time()
    sends = await asyncio.gather(*(pace(pacers[i % 3]) for i in range(150)))
    for p in pacers:
        await p.aclose()
    assert_conforms(list(sends), rate_per_s=100, burst=10)
    assert max(sends) - start >= (150 - 10) / 100  # never faster than one process
    assert gov.granted == 150 and sorted(gov.workers.values()) == [50, 50, 50]
    assert link.calls < 150  # tickets waiting together go in one call


async def test_unlimited_makes_no_call_per_request() -> None:
    gov = _governor(rpm=None)
    link = Link(gov)
    pacer = LeasedPacer(link, worker="w0", limited=False)
    sends = await asyncio.gather(*(pace(pacer) for _ in range(200)))
    assert len(sends) == 200 and gov.granted == 0
    assert link.calls <= 1
    await pacer.aclose()


async def test_a_limit_one_worker_reads_in_headers_binds_all() -> None:
    gov = _governor(rpm=None)
    link = Link(gov)
    a = LeasedPacer(link, worker="a", limited=False)
    b = LeasedPacer(link, worker="b", limited=False)
    a.observe_headers(
        {
            "X-RateLimit-Limit-Requests": "600",
            "X-RateLimit-Remaining-Requests": "5",
            "content-type": "text/event-stream",
        },
        age_s=0.01,
    )
    await a.sync_now()
    assert gov.snapshot()["limits"]["server:requests"]["limit"] == 600
    await b.sync_now()
    assert b.snapshot()["limited"]
    sends = await asyncio.gather(*(pace(b) for _ in range(40)))
    # 5 left when reported: b's 40 requests cannot all go at once (how the rest are
    # released is the governor's reading of the header family, tested in its own tests).
    assert max(sends) - min(sends) >= 0.1
    assert gov.granted == 40
    await a.aclose()
    await b.aclose()


async def test_a_429_on_one_worker_pauses_the_others() -> None:
    gov = _governor()
    link = Link(gov)
    a, b = LeasedPacer(link, worker="a"), LeasedPacer(link, worker="b")
    a.on_rate_limited(0.5)
    assert a.paused_for_s() > 0.4
    await a.sync_now()
    await b.sync_now()
    assert b.paused_for_s() > 0.3
    t0, paused_s = loop_time(), b.paused_for_s()
    await pace(b)
    # Not before a's pause ends; then its ticket's call and polls (a few ms, 10 measured).
    assert paused_s <= loop_time() - t0 <= paused_s + 0.02
    await a.aclose()
    await b.aclose()


async def test_an_unreachable_governor_holds_requests_back_until_it_answers() -> None:
    gov = _governor()
    link = Link(gov, fail_first=2)
    pacer = LeasedPacer(link, worker="w0")
    sends = await asyncio.gather(*(pace(pacer) for _ in range(5)))
    assert len(sends) == 5 and pacer.sync_errors == 2 and gov.granted == 5
    await pacer.aclose()


async def test_settlements_reach_the_governor() -> None:
    gov = LeaseGovernor(
        RateGovernor(rpm=None, input_tpm=None, output_tpm=None, total_tpm=6000, window_s=6.0)
    )
    link = Link(gov)
    pacer = LeasedPacer(link, worker="w0")
    before = gov.snapshot()["limits"]["tokens"]["available"]
    await pace(pacer)  # reserves 30 tokens
    pacer.settle(20, 10, 20, 200)  # the answer was longer: 190 more
    await pacer.sync_now()
    after = gov.snapshot()["limits"]["tokens"]["available"]
    # Refilled between the reserving call and the settling one at 1,000 tokens a second.
    refill = 6000 / 6.0 * (link.synced_at[-1] - link.synced_at[0])
    assert after == pytest.approx(before - 30 - 190 + refill)
    await pacer.aclose()


async def test_concurrency_auto_is_decided_for_all_workers_together() -> None:
    """Two clients (two workers) with --concurrency auto behind one lease governor,
    against a server that serves 12 requests at once and answers 429 beyond: the
    server counts the two together settling near 12, not each at its own limit."""
    import llmbatch
    from llmbatch.config.load import load_config
    from llmbatch.mockserver import MockConfig, start_mock_server
    from llmbatch.pacing import governor_for
    from llmbatch.ray.lease import ClusterConcurrency, LeasedConcurrency

    limit = 12
    server = await start_mock_server(
        MockConfig(tokens=8, ttft_s=0.03, itl_s=0.005, max_in_flight=limit, retry_after_s=0.05)
    )
    try:
        cfg = load_config(
            None,
            flags={
                "provider": "vllm",
                "base_url": server.url,
                "model": "mock-model",
                "concurrency": "auto",
                "max_concurrency": 64,
            },
            environ={},
        )
        cluster = ClusterConcurrency(["w0", "w1"], initial=8, cap=64)
        gov = LeaseGovernor(governor_for(cfg), concurrency=cluster)
        seen: list[int] = []  # the server's requests in flight, sampled

        async def worker(name: str, n: int) -> int:
            conc = LeasedConcurrency(4)
            pacer = LeasedPacer(
                Link(gov), worker=name, limited=False, sync_interval_s=0.05, concurrency=conc
            )
            client = llmbatch.Client._for_run(cfg, api_key="k", pacer=pacer, concurrency=conc)
            ok = 0
            async with client:
                async for r in client.batch([f"{name} {i}" for i in range(n)]):
                    ok += r.ok
            await pacer.aclose()
            return ok

        async def sample() -> None:
            while True:
                await asyncio.sleep(0.02)
                seen.append(server.stats.in_flight)

        sampler = asyncio.create_task(sample())
        done = await asyncio.gather(worker("w0", 700), worker("w1", 700))
        sampler.cancel()
    finally:
        await server.close()
    assert done == [700, 700]
    settled = sorted(seen[len(seen) // 2 :])  # the second half of the run
    median = settled[len(settled) // 2]
    # Near the server's 12, not above (10 with the seeded jitter; 9 to 11 unseeded).
    assert limit * 0.6 <= median <= limit, (median, settled[:: max(1, len(settled) // 20)])
    stats = server.stats
    print(
        f"auto: median {median} in flight, {stats.rate_limited}/{stats.requests} 429s, "
        f"cluster limit {cluster.limit}"
    )
    assert stats.rate_limited < 0.05 * stats.requests, (stats.rate_limited, stats.requests)
    assert cluster.limit <= 2 * limit  # the cluster's one limit, not 2 x 64
