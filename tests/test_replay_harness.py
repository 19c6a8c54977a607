"""The replay harness itself (tests/replay.py): cut points, and bytes served intact."""

from __future__ import annotations

import aiohttp
import pytest

from .replay import MODES, Recording, ReplayServer, event_cuts, random_cuts, replay_prompt

STREAM = (
    b'data: {"a":1}\n\nevent: b\r\ndata: {"b":2}\r\n\r\n'
    b"event: x\rdata: y\r\r: ping\n\ndata: [DONE]\n\n"
)


def test_event_cuts_fall_after_each_blank_line() -> None:
    cuts = event_cuts(STREAM)
    pieces = [STREAM[a:b] for a, b in zip([0, *cuts], cuts, strict=False)]
    assert pieces == [
        b'data: {"a":1}\n\n',
        b'event: b\r\ndata: {"b":2}\r\n\r\n',
        b"event: x\rdata: y\r\r",
        b": ping\n\n",
        b"data: [DONE]\n\n",
    ]


def test_random_cuts_are_reproducible() -> None:
    assert random_cuts(STREAM, seed=1) == random_cuts(STREAM, seed=1)
    assert random_cuts(STREAM, seed=1) != random_cuts(STREAM, seed=2)
    assert all(0 < c < len(STREAM) for c in random_cuts(STREAM, seed=3, mean_piece=3))


@pytest.mark.parametrize("mode", MODES)
async def test_the_recording_named_in_the_body_is_served_intact(mode: str) -> None:
    recs = [Recording("one", "openai", "", "text/event-stream", STREAM)]
    async with ReplayServer(recs, mode) as server, aiohttp.ClientSession() as session:
        body = {"messages": [{"role": "user", "content": replay_prompt("one")}]}
        async with session.post(f"{server.origin}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["content-type"] == "text/event-stream"
            assert await resp.read() == STREAM
        async with session.post(f"{server.origin}/v1/x", json={"prompt": "other"}) as resp:
            assert resp.status == 404
    assert server.served == {"one": 1}
