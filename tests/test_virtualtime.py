"""The test loop: tests marked ``virtualtime`` run on tests/virtualtime.py's loop, with
their async fixtures (tests/conftest.py's pytest_asyncio_loop_factories hook)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from .virtualtime import VirtualClockLoop, loop_time


@pytest.fixture
async def fixture_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    yield asyncio.get_running_loop()


@pytest.mark.virtualtime
async def test_a_marked_test_and_its_fixtures_run_on_virtual_time(
    fixture_loop: asyncio.AbstractEventLoop,
) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualClockLoop) and fixture_loop is loop
    t0, wall0 = loop_time(), time.monotonic()
    await asyncio.sleep(3600)
    assert loop_time() - t0 == pytest.approx(3600) and time.monotonic() - wall0 < 60


@pytest.mark.virtualtime
async def test_thread_pool_work_takes_no_virtual_time_and_fires_no_timer_early() -> None:
    t0 = loop_time()
    timer = asyncio.ensure_future(asyncio.sleep(0.01))
    await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.05)
    assert loop_time() == t0 and not timer.done()
    await timer
    assert loop_time() - t0 == pytest.approx(0.01)


async def test_an_unmarked_test_runs_on_asyncio_own_loop() -> None:
    assert not isinstance(asyncio.get_running_loop(), VirtualClockLoop)


@pytest.mark.virtualtime
@pytest.mark.subprocess
async def test_a_subprocess_test_keeps_the_real_clock() -> None:
    assert not isinstance(asyncio.get_running_loop(), VirtualClockLoop)
