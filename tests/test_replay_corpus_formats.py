"""The Responses API and Gemini recordings (test_replay_corpus.py has OpenAI chat and
Anthropic). Real recorded provider streams through llmbatch, checked against the official SDKs.

Every recording of ``../shared/replay-recordings/`` (tests/replay.py) is served by a
ReplayServer, one write per SSE event and cut at random offsets, to a batch in-process
(``llmbatch.Client.batch`` writing a run directory, as ``llmbatch run`` does) with every
client adapter. Each record's ``response.body`` in results.jsonl must be what the
provider's official SDK assembles from the same bytes (tests/sdk_oracle.py, which also
says what is normalised and why; tests/oracle_formats.py for the Responses API, whose
``input`` lines go to /v1/responses under the OpenAI profile, and for Gemini, whose SDK
has no accumulator: there the raw events are the oracle); where the SDK raises the
provider's error from inside the stream, the record must be that error, with the HTTP
status it came with.

One batch per (kind, client, mode) serves every recording of that kind, and each SDK
object is computed once, so the whole corpus stays a few seconds. Skipped, with the
reason ``replay recordings absent``, when the folder is not there.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest

import llmbatch

from .conftest import ADAPTERS, read_results
from .oracle_formats import FORMAT_ORACLES, gemini_differences
from .replay import MODES, RECORDINGS_ABSENT, Recording, ReplayServer, recordings, replay_prompt
from .sdk_oracle import ORACLES, SDKError, differences

# The built-in profile that speaks each recorded wire format, and the path its base URL
# has on the replay server (which answers any path).
PROFILES = {"responses": "openai", "gemini": "gemini"}  # chat and Anthropic: test_replay_corpus.py
# The input line's key per kind: an ``input`` line goes to /v1/responses under the
# OpenAI profile; the others are prompts (the gemini profile converts them to contents).
PROMPT_KEYS = {"responses": "input"}
ALL_ORACLES = {**ORACLES, **FORMAT_ORACLES}
CORPUS: dict[str, list[Recording]] = {}
for _kind in PROFILES:
    _recs = recordings(_kind)
    if _recs is not None:
        CORPUS[_kind] = _recs

pytestmark = pytest.mark.skipif(not CORPUS, reason=RECORDINGS_ABSENT)


CASES = [
    pytest.param(
        kind,
        rec.name,
        id=rec.name,
    )
    for kind, recs in CORPUS.items()
    for rec in recs
]

_oracle_cache: dict[str, dict[str, dict[str, Any] | SDKError]] = {}
_run_cache: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}


def sdk_objects(kind: str) -> dict[str, dict[str, Any] | SDKError]:
    """What the SDK assembles from each recording of ``kind`` (computed once)."""
    if kind not in _oracle_cache:
        _oracle_cache[kind] = asyncio.run(_sdk_objects(CORPUS[kind], ALL_ORACLES[kind]))
    return _oracle_cache[kind]


async def _sdk_objects(corpus: list[Recording], oracle: Any) -> dict[str, Any]:
    async with ReplayServer(corpus) as server:
        return {rec.name: await oracle(server.origin, rec.name) for rec in corpus}


def llmbatch_records(kind: str, client: str, mode: str) -> dict[str, dict[str, Any]]:
    """The result records of one batch over every recording of ``kind`` (run once)."""
    key = (kind, client, mode)
    if key not in _run_cache:
        with tempfile.TemporaryDirectory() as tmp:
            _run_cache[key] = asyncio.run(
                _run_batch(CORPUS[kind], kind, client, mode, Path(tmp) / "run")
            )
    return _run_cache[key]


async def _run_batch(
    corpus: list[Recording], kind: str, client: str, mode: str, out: Path
) -> dict[str, dict[str, Any]]:
    key = PROMPT_KEYS.get(kind, "prompt")
    prompts = [{"id": rec.name, key: replay_prompt(rec.name)} for rec in corpus]
    async with ReplayServer(corpus, mode, seed=22) as server:
        async with llmbatch.Client(
            PROFILES[kind],
            base_url=f"{server.origin}/v1",
            model="replay",
            api_key="replay",
            client=client,
            concurrency=8,
            retry={"max_attempts": 1},
        ) as llm:
            await llm.batch(prompts, out).wait()
    return {rec["custom_id"]: rec for rec in read_results(out)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("client", ADAPTERS)
@pytest.mark.parametrize(("kind", "name"), CASES)
def test_recording_assembles_as_the_sdk_does(kind: str, name: str, client: str, mode: str) -> None:
    expected = sdk_objects(kind)[name]
    record = llmbatch_records(kind, client, mode)[name]
    if isinstance(expected, SDKError):
        # The provider's error from inside a 200 stream: a failed record with its message.
        assert record["error"] is not None, record["response"]
        assert expected.message in record["error"]["message"]
        assert [a["status"] for a in record["llmbatch"]["attempts"]] == [200]
        return
    assert record["error"] is None, record["error"]
    compare = gemini_differences if kind == "gemini" else differences
    assert compare(record["response"]["body"], expected) == []
