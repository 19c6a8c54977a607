"""Prices of one model, and what a request costs at them.

A :class:`Rate` is USD per million tokens, optionally with tiers: above a number of
input tokens in the request, another price applies to *all* of that kind of token (the
"cliff" model Anthropic, Google and OpenAI use for long prompts, as genai-prices
represents it). Money is summed in floats: a record's cost is exact to ~1e-15 relative,
far below a cent over any run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmbatch.config.model import ModelPrices
from llmbatch.pricing.usage import TokenUsage
from llmbatch.records import Cost

__all__ = [
    "Rate",
    "Rates",
    "cost_of",
    "rates_from_config",
    "toml_key",
    "worst_case_usd",
]

_PER = 1_000_000.0


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per million tokens; ``tiers``: (above this many input tokens, price), ascending."""

    per_million: float
    tiers: tuple[tuple[int, float], ...] = ()

    def at(self, input_tokens: int) -> float:
        """USD per million tokens for a request with ``input_tokens`` in all."""
        price = self.per_million
        for start, tier_price in self.tiers:
            if input_tokens > start:
                price = tier_price
        return price

    @property
    def highest(self) -> float:
        """The most this rate can charge per million tokens (any tier)."""
        return max((self.per_million, *(p for _, p in self.tiers)))


@dataclass(frozen=True, slots=True)
class Rates:
    """What one model costs, per kind of token, and where the figures come from."""

    input: Rate
    output: Rate
    cached_input: Rate
    cache_write: Rate
    reasoning: Rate
    source: str
    # The most tokens a request can have in all (input + output), when known: the
    # budget's worst case for a request that sets no max_tokens.
    context_window: int | None = None

    def per_million(self) -> dict[str, float]:
        """The base prices (USD per million tokens) by kind, for display."""
        return {
            "input": self.input.per_million,
            "cached_input": self.cached_input.per_million,
            "cache_write": self.cache_write.per_million,
            "output": self.output.per_million,
            "reasoning": self.reasoning.per_million,
        }

    # Derived once (a record is priced with them): whether any kind has tiers, and the
    # base prices (input, cached input, cache write, output, reasoning).
    tiered: bool = field(init=False)
    flat: tuple[float, float, float, float, float] = field(init=False)
    # The dearest input and output prices (any kind, any tier): the budget's worst case.
    dearest_input: float = field(init=False)
    dearest_output: float = field(init=False)

    def __post_init__(self) -> None:
        kinds = (self.input, self.cached_input, self.cache_write, self.output, self.reasoning)
        object.__setattr__(self, "tiered", any(r.tiers for r in kinds))
        flat = tuple(r.per_million for r in kinds)
        object.__setattr__(self, "flat", flat)
        ins = (self.input, self.cached_input, self.cache_write)
        object.__setattr__(self, "dearest_input", max(r.highest for r in ins))
        outs = (self.output, self.reasoning)
        object.__setattr__(self, "dearest_output", max(r.highest for r in outs))


def rates_from_config(model: str, p: ModelPrices) -> Rates:
    """Rates from a ``[prices."MODEL"]`` table (missing kinds default as documented)."""
    inp, out = Rate(p.input), Rate(p.output)
    return Rates(
        input=inp,
        output=out,
        cached_input=Rate(p.cached_input) if p.cached_input is not None else inp,
        cache_write=Rate(p.cache_write) if p.cache_write is not None else inp,
        reasoning=Rate(p.reasoning) if p.reasoning is not None else out,
        source=f"config [prices.{toml_key(model)}]",
    )


def toml_key(model: str) -> str:
    """``model`` as a key of a TOML table name: bare when TOML allows, else quoted."""
    if model and all(c.isascii() and (c.isalnum() or c in "-_") for c in model):
        return model
    return '"' + model.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cost_of(usage: TokenUsage, rates: Rates, *, estimated: bool = False) -> Cost:
    """What ``usage`` costs at ``rates`` (each kind of token at its own price)."""
    n_in, out, cached, written, reasoning = usage
    if rates.tiered:
        p_in, p_cached = rates.input.at(n_in), rates.cached_input.at(n_in)
        p_write, p_out = rates.cache_write.at(n_in), rates.output.at(n_in)
        p_reason = rates.reasoning.at(n_in)
    else:  # the usual case: one price per kind (one record each, so kept short)
        p_in, p_cached, p_write, p_out, p_reason = rates.flat
    input_usd = max(0, n_in - cached - written) * p_in / _PER
    cached_usd = cached * p_cached / _PER
    write_usd = written * p_write / _PER
    output_usd = max(0, out - reasoning) * p_out / _PER
    reasoning_usd = reasoning * p_reason / _PER
    return Cost(
        input_usd + cached_usd + write_usd + output_usd + reasoning_usd,
        input_usd,
        cached_usd,
        write_usd,
        output_usd,
        reasoning_usd,
        rates.source,
        estimated,
    )


def worst_case_usd(input_tokens: int, output_tokens: int, rates: Rates) -> float:
    """The most a request of at most these token counts can cost: every input token at
    the dearest input kind and tier, every output token at the dearest output kind."""
    return (input_tokens * rates.dearest_input + output_tokens * rates.dearest_output) / _PER
