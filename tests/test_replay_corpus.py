"""Real recorded provider streams through llmbatch, checked against the official SDKs.

Every recording of ``../shared/replay-recordings/`` (tests/replay.py) is served by a
ReplayServer, one write per SSE event and cut at random offsets, to a batch in-process
with every client adapter (tests/replay_checks.py). Each record's ``response.body`` in
results.jsonl must be what the provider's official SDK assembles from the same bytes
(tests/sdk_oracle.py, which also says what is normalised and why); where the SDK raises
the provider's error from inside the stream, the record must be that error, with the
HTTP status it came with. The text files must hold the answer's text alone and the
reasoning beside it (the "events" runs write the files layout, the "random" runs the
log layout).

One batch per (kind, client, mode) serves every recording of that kind, and each SDK
object is computed once, so the whole corpus stays a few seconds. Skipped, with the
reason ``replay recordings absent``, when the folder is not there.
"""

from __future__ import annotations

import pytest

from .conftest import ADAPTERS
from .replay import MODES, RECORDINGS_ABSENT, recordings
from .replay_checks import ReplayRuns
from .sdk_oracle import ORACLES

# The built-in profile that speaks each recorded wire format.
PROFILES = {"openai": "openai", "anthropic": "anthropic"}
RUNS: dict[str, ReplayRuns] = {}
for _kind, _profile in PROFILES.items():
    _recs = recordings(_kind)
    if _recs is not None:
        RUNS[_kind] = ReplayRuns(_recs, _profile, ORACLES[_kind], _kind)

pytestmark = pytest.mark.skipif(not RUNS, reason=RECORDINGS_ABSENT)

CASES = [
    pytest.param(kind, rec.name, id=rec.name) for kind, runs in RUNS.items() for rec in runs.corpus
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("client", ADAPTERS)
@pytest.mark.parametrize(("kind", "name"), CASES)
def test_recording_assembles_as_the_sdk_does(kind: str, name: str, client: str, mode: str) -> None:
    RUNS[kind].check(name, client, mode)
