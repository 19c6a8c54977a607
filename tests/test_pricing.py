"""Prices and usage: every usage shape, our arithmetic against genai-prices' own, the
[prices] table, no network, and the budget's admission rule."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmbatch.config.load import load_config
from llmbatch.config.model import ModelPrices
from llmbatch.errors import ConfigError
from llmbatch.metrics import format_usd
from llmbatch.pricing import CostBudget, PriceBook, TokenUsage, cost_of, usage_from_body
from llmbatch.pricing.budget import GRANTED, NEVER, WAIT
from llmbatch.pricing.bundled import lookup
from llmbatch.pricing.rates import rates_from_config, worst_case_usd

ROOT = Path(__file__).resolve().parents[1]
# Third-party data beside the repository (never committed): /work/shared/... from a
# checkout at /work/main or a worktree below /work.
RECORDINGS = next(
    (
        p / "shared" / "replay-recordings"
        for p in ROOT.parents
        if (p / "shared" / "replay-recordings").is_dir()
    ),
    ROOT.parent / "shared" / "replay-recordings",
)


# -- usage shapes --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (  # OpenAI chat: cached and reasoning inside the totals
            {
                "usage": {
                    "prompt_tokens": 100,
                    "completion_tokens": 50,
                    "total_tokens": 150,
                    "prompt_tokens_details": {"cached_tokens": 64},
                    "completion_tokens_details": {"reasoning_tokens": 20},
                }
            },
            TokenUsage(input=100, output=50, cached_input=64, reasoning=20),
        ),
        (  # xAI: reasoning beside the completion (total = prompt + completion + reasoning)
            {
                "usage": {
                    "prompt_tokens": 307,
                    "completion_tokens": 26,
                    "total_tokens": 560,
                    "prompt_tokens_details": {"cached_tokens": 306},
                    "completion_tokens_details": {"reasoning_tokens": 227},
                }
            },
            TokenUsage(input=307, output=253, cached_input=306, reasoning=227),
        ),
        (  # DeepSeek's own cache field
            {
                "usage": {
                    "prompt_tokens": 339,
                    "completion_tokens": 83,
                    "prompt_cache_hit_tokens": 320,
                }
            },
            TokenUsage(input=339, output=83, cached_input=320),
        ),
        (  # Anthropic: input_tokens leaves the cache out
            {
                "type": "message",
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 200,
                    "cache_read_input_tokens": 1000,
                    "output_tokens": 30,
                },
            },
            TokenUsage(input=1210, output=30, cached_input=1000, cache_write=200),
        ),
        (  # OpenAI Responses
            {
                "object": "response",
                "usage": {
                    "input_tokens": 6047,
                    "input_tokens_details": {"cached_tokens": 2944},
                    "output_tokens": 1623,
                    "output_tokens_details": {"reasoning_tokens": 1408},
                },
            },
            TokenUsage(input=6047, output=1623, cached_input=2944, reasoning=1408),
        ),
        (  # Gemini: thoughts beside the candidates, tool-use prompt is input
            {
                "usageMetadata": {
                    "promptTokenCount": 17,
                    "candidatesTokenCount": 241,
                    "toolUsePromptTokenCount": 102,
                    "thoughtsTokenCount": 412,
                    "totalTokenCount": 772,
                }
            },
            TokenUsage(input=119, output=653, reasoning=412),
        ),
        ({"choices": []}, None),
        (None, None),
    ],
)
def test_usage_shapes(body: Any, expected: TokenUsage | None) -> None:
    assert usage_from_body(body) == expected


def _recorded_usages() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, kind, the last usage object) of every recorded stream that reports one."""
    if not (RECORDINGS / "manifest.json").is_file():
        pytest.skip(f"replay recordings absent ({RECORDINGS})")
    out = []
    for entry in json.loads((RECORDINGS / "manifest.json").read_text()):
        path = next(RECORDINGS.glob(entry["name"] + ".*"), None)
        if path is None:
            continue
        usage: dict[str, Any] | None = None
        for raw in path.read_text(errors="replace").splitlines():
            line = raw.strip()
            if line.startswith("data:"):
                line = line[5:].strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            for holder in (obj, obj.get("message"), obj.get("response")):
                if isinstance(holder, dict):
                    for key in ("usage", "usageMetadata"):
                        if isinstance(holder.get(key), dict):
                            usage = {**(usage or {}), **holder[key]}
        if usage:
            out.append((entry["name"], entry["kind"], usage))
    return out


def test_usage_of_every_recorded_stream_adds_up() -> None:
    """Real answers from many providers: the parts stay inside the totals, and where the
    provider states a total, input + output is exactly it."""
    checked = 0
    for name, kind, usage in _recorded_usages():
        if kind == "anthropic":
            body: dict[str, Any] = {"type": "message", "usage": usage}
        elif kind == "responses":
            body = {"object": "response", "usage": usage}
        elif kind == "gemini":
            body = {"usageMetadata": usage}
        else:
            body = {"usage": usage}
        u = usage_from_body(body)
        assert u is not None, name
        assert 0 <= u.cached_input + u.cache_write <= u.input, name
        assert 0 <= u.reasoning <= u.output, name
        total = usage.get("total_tokens", usage.get("totalTokenCount"))
        if isinstance(total, int) and "candidatesTokensDetails" not in usage:
            assert u.input + u.output == total, (name, usage, u)
        checked += 1
    assert checked >= 40


# -- arithmetic: ours against genai-prices' own (Decimal) calc_price ----------------------
@pytest.mark.parametrize(
    ("provider", "model", "usage"),
    [
        ("openai", "gpt-4o-mini", TokenUsage(input=1234, output=567, cached_input=1024)),
        ("openai", "o3", TokenUsage(input=5000, output=9000, reasoning=8000)),
        (
            "anthropic",
            "claude-3-5-haiku-latest",
            TokenUsage(input=5210, output=300, cached_input=4000, cache_write=1000),
        ),
        ("anthropic", "claude-sonnet-4-5", TokenUsage(input=250_000, output=1000)),  # a tier
        ("groq", "llama-3.1-8b-instant", TokenUsage(input=77, output=88)),
    ],
)
def test_cost_matches_genai_prices(provider: str, model: str, usage: TokenUsage) -> None:
    from genai_prices import Usage, calc_price

    rates = lookup(model, provider_id=provider, api_url=None)
    assert rates is not None and rates.source.startswith("genai-prices ")
    ours = cost_of(usage, rates)
    theirs = calc_price(
        Usage(
            input_tokens=usage.input,
            cache_read_tokens=usage.cached_input,
            cache_write_tokens=usage.cache_write,
            output_tokens=usage.output,
        ),
        model,
        provider_id=provider,
    )
    assert ours.usd == pytest.approx(float(theirs.total_price), rel=1e-12)
    assert ours.usd == pytest.approx(
        ours.input_usd
        + ours.cached_input_usd
        + ours.cache_write_usd
        + ours.output_usd
        + ours.reasoning_usd
    )


def test_worst_case_bounds_every_split() -> None:
    rates = rates_from_config("m", ModelPrices(input=1, output=4, cache_write=1.25, reasoning=8))
    worst = worst_case_usd(1000, 500, rates)
    assert worst == pytest.approx((1000 * 1.25 + 500 * 8) / 1e6)
    for u in (
        TokenUsage(1000, 500),
        TokenUsage(1000, 500, cache_write=1000, reasoning=500),
        TokenUsage(1000, 500, cached_input=900, reasoning=1),
    ):
        assert cost_of(u, rates).usd <= worst


def test_format_usd() -> None:
    assert [format_usd(v) for v in (None, 0, 0.004262, 1.6903, 12345.678)] == [
        "-",
        "$0",
        "$0.004262",
        "$1.69",
        "$12,345.68",
    ]


# -- the [prices] table, and where prices come from ----------------------------------------
def test_prices_table_overrides_and_adds(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(
        '[prices."gpt-4o-mini"]\ninput = 0.1\noutput = 0.2\n'
        "[prices.my-model]\ninput = 1\noutput = 2\ncached_input = 0.5\n"
    )
    cfg = load_config(cfg_file, flags={"provider": "openai"}, environ={})
    book = PriceBook(cfg)
    r = book.rates("gpt-4o-mini")
    assert r is not None and r.source == "config [prices.gpt-4o-mini]"
    assert r.per_million() == {
        "input": 0.1,
        "cached_input": 0.1,
        "cache_write": 0.1,
        "output": 0.2,
        "reasoning": 0.2,
    }
    mine = book.rates("my-model")
    assert mine is not None and mine.cached_input.per_million == 0.5
    assert book.rates("no-such-model-anywhere") is None
    assert book.unpriced == ["no-such-model-anywhere"]


def test_self_hosted_is_never_priced_from_the_data() -> None:
    # The same model name a cloud serves: a local server is not charged its price.
    cfg = load_config(
        None,
        flags={"provider": "vllm", "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo"},
        environ={},
    )
    book = PriceBook(cfg)
    assert book.rates(cfg.provider.model) is None
    assert "self-hosted" in book.why_unpriced(cfg.provider.model)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[prices.m]\ninput = 1\n", "prices.m.output is required"),
        ("[prices.m]\ninput = 1\noutput = -2\n", "prices.m.output must be >= 0"),
        ("[prices.m]\ninput = 1\noutput = 2\ncache = 3\n", "unknown key(s) cache"),
        ("[prices.m]\ninput = 'cheap'\noutput = 2\n", "prices.m.input must be a number"),
        ("[prices]\nm = 3\n", "prices.m must be a table"),
        ("[run]\nmax_cost = 0\n", "run.max_cost must be greater than 0"),
    ],
)
def test_prices_config_errors(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "c.toml").write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.toml", environ={})
    assert message in str(info.value)


@pytest.mark.subprocess
def test_pricing_sends_nothing_over_the_network() -> None:
    """The bundled data only: an audit hook sees no socket opened, no name resolved,
    and genai-prices' background updater thread never starts."""
    code = """
import sys, threading
events = []
sys.addaudithook(lambda e, a: events.append(e) if e.startswith("socket.") else None)
from llmbatch.config.load import load_config
from llmbatch.pricing import PriceBook, TokenUsage, cost_of
for provider, model in [("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku-latest"),
                        ("groq", "llama-3.1-8b-instant"), ("openrouter", "openai/gpt-4o")]:
    book = PriceBook(load_config(None, flags={"provider": provider}, environ={}))
    rates = book.rates(model)
    assert rates is not None, model
    cost_of(TokenUsage(100, 100), rates)
import genai_prices.update_prices as up
print(events, up._shared_updater.thread, [t.name for t in threading.enumerate()])
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] None ['MainThread']"


# -- the budget ----------------------------------------------------------------------------
def test_budget_admission_rule() -> None:
    b = CostBudget(1.0)
    assert b.try_reserve(0.6) == GRANTED
    assert b.try_reserve(0.5) == WAIT  # 0.6 in flight may cost less
    b.settle(0.6, 0.1)
    assert b.try_reserve(0.5) == GRANTED  # spent 0.1 + 0.5 reserved
    assert b.try_reserve(0.41) == WAIT
    b.settle(0.5, 0.5)
    assert b.spent_usd == pytest.approx(0.6) and b.in_flight == 0
    assert b.try_reserve(0.41) == NEVER  # nothing in flight and it does not fit
    assert b.try_reserve(0.4) == GRANTED  # exactly what is left fits


async def test_budget_waits_for_room_then_admits() -> None:
    b = CostBudget(1.0)
    assert await b.admit(0.9)
    waiting = asyncio.ensure_future(b.admit(0.5))
    await asyncio.sleep(0)
    assert not waiting.done()
    b.settle(0.9, 0.2)  # the first one cost far less than its worst case
    assert await waiting
    assert not await CostBudget(0.01).admit(0.02)  # smaller than one request: never
