"""Running recordings through llmbatch and checking each record against the SDK.

Shared by the corpus test (tests/test_replay_corpus.py, the real recordings) and the
fixture tests (tests/test_answers.py, the hand-written streams): ``ReplayRuns`` runs one
in-process batch per (client, write mode) over a set of recordings of one wire format
(``llmbatch.Client.batch`` writing a run directory, as ``llmbatch run`` does) and
computes each SDK object once; ``check_record`` says whether a record is whole.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import llmbatch
from llmbatch.rundir.textlog import read_span

from .conftest import read_results
from .replay import Recording, ReplayServer, replay_prompt
from .sdk_oracle import SDKError, answer_and_reasoning, differences

__all__ = ["LAYOUTS", "ReplayRuns", "check_record"]

# Both text layouts, each with one of the write modes (no run twice).
LAYOUTS = {"events": "files", "random": "log"}
Oracle = Callable[[str, str], Awaitable[dict[str, Any] | SDKError]]


class ReplayRuns:
    """Batches over ``corpus`` with the built-in ``profile`` (base URL ``<server>/v1``),
    and the SDK objects of ``oracle``; each computed once, on first use."""

    def __init__(
        self, corpus: Sequence[Recording], profile: str, oracle: Oracle, kind: str
    ) -> None:
        self.corpus = list(corpus)
        self.profile = profile
        self.oracle = oracle
        self.kind = kind
        self._sdk: dict[str, dict[str, Any] | SDKError] | None = None
        self._runs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def sdk_object(self, name: str) -> dict[str, Any] | SDKError:
        """What the SDK assembles from recording ``name``."""
        if self._sdk is None:
            self._sdk = asyncio.run(self._sdk_objects())
        return self._sdk[name]

    async def _sdk_objects(self) -> dict[str, dict[str, Any] | SDKError]:
        async with ReplayServer(self.corpus) as server:
            return {rec.name: await self.oracle(server.origin, rec.name) for rec in self.corpus}

    def record(self, name: str, client: str, mode: str) -> dict[str, Any]:
        """The result record of ``name`` from the batch of (``client``, ``mode``), with
        ``texts``: (answer, reasoning) as the run directory holds them."""
        key = (client, mode)
        if key not in self._runs:
            with tempfile.TemporaryDirectory() as tmp:
                self._runs[key] = asyncio.run(self._run(client, mode, Path(tmp) / "run"))
        return self._runs[key][name]

    async def _run(self, client: str, mode: str, out: Path) -> dict[str, dict[str, Any]]:
        prompts = [{"id": rec.name, "prompt": replay_prompt(rec.name)} for rec in self.corpus]
        async with ReplayServer(self.corpus, mode, seed=22) as server:
            async with llmbatch.Client(
                self.profile,
                base_url=f"{server.origin}/v1",
                model="replay",
                api_key="replay",
                client=client,
                concurrency=8,
                retry={"max_attempts": 1},
            ) as llm:
                await llm.batch(prompts, out, text_layout=LAYOUTS[mode]).wait()
        records = {rec["custom_id"]: rec for rec in read_results(out)}
        for rec in records.values():
            rec["texts"] = _texts_on_disk(out, rec["llmbatch"])
        return records

    def check(self, name: str, client: str, mode: str) -> None:
        """Assert that ``name`` came out whole with ``client`` in ``mode``."""
        check_record(self.kind, self.record(name, client, mode), self.sdk_object(name))


def check_record(kind: str, record: dict[str, Any], expected: dict[str, Any] | SDKError) -> None:
    """A record is whole when its body is the SDK's object (sdk_oracle.differences) and
    its text files hold the answer alone and the reasoning beside it; where the SDK
    raised the provider's error from inside the stream, when it is that error, recorded
    with the HTTP status it came with."""
    if isinstance(expected, SDKError):
        assert record["error"] is not None, record["response"]
        assert expected.message in record["error"]["message"]
        assert [a["status"] for a in record["llmbatch"]["attempts"]] == [200]
        assert record["response"]["status_code"] == 200
        return
    assert record["error"] is None, record["error"]
    assert differences(record["response"]["body"], expected) == []
    assert record["texts"] == answer_and_reasoning(kind, expected)


def _texts_on_disk(out: Path, lb: dict[str, Any]) -> tuple[str | None, str | None]:
    """(answer, reasoning) as the run directory holds them for one record."""
    texts: list[str | None] = []
    for part in ("text", "reasoning"):
        rel = lb.get(f"{part}_file")
        if rel is None:
            texts.append(None)
        elif f"{part}_offset" in lb:  # the log layout: a span of a shared file
            data = read_span(out / rel, lb[f"{part}_offset"], lb[f"{part}_bytes"])
            texts.append(data.decode())
        else:
            texts.append((out / rel).read_text())
    return texts[0], texts[1]
