"""Prices from the ``genai-prices`` package (Pydantic's price data for many providers).

Only the data bundled in the installed package is read: its ``UpdatePrices`` (which
downloads newer data from GitHub) is never started, so pricing sends nothing over the
network (tests/test_pricing.py checks with an audit hook on sockets). The package is
imported on the first lookup (~0.3 s of CPU), never for self-hosted servers or the mock.

A profile maps to a genai-prices provider by its name when that is one of theirs
(``openai``, ``anthropic``, ``groq``, ...), else by its base URL (their API patterns).
A model is never matched by its name alone: a self-hosted server on a LAN address
serving ``meta-llama/...`` is not charged at some cloud's price.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from llmbatch.pricing.rates import Rate, Rates

__all__ = ["data_version", "lookup"]

# genai-prices price keys for the kinds of token llmbatch prices (USD per million).
_KEYS = {
    "input": "input_mtok",
    "output": "output_mtok",
    "cached_input": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
    "reasoning": "output_reasoning_mtok",
}


@functools.cache
def data_version() -> str:
    """The installed genai-prices version (its data is as of that release)."""
    from importlib.metadata import version

    return version("genai-prices")


def lookup(model: str, *, provider_id: str | None, api_url: str | None) -> Rates | None:
    """The bundled prices of ``model`` at ``provider_id`` (or the provider whose API
    pattern matches ``api_url``); None when unknown."""
    if not model or (provider_id is None and api_url is None):
        return None
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    try:
        provider, info = snapshot.find_provider_model(model, None, provider_id, api_url)
    except LookupError:
        return None
    prices = info.get_prices(datetime.now(UTC))
    rate = {kind: _rate(getattr(prices, key, None)) for kind, key in _KEYS.items()}
    inp, out = rate["input"], rate["output"]
    if inp is None or out is None:
        return None  # priced per request, per second, per image...: not tokens
    return Rates(
        input=inp,
        output=out,
        cached_input=rate["cached_input"] or inp,
        cache_write=rate["cache_write"] or inp,
        reasoning=rate["reasoning"] or out,
        source=f"genai-prices {data_version()}: {provider.id}/{info.id}",
        context_window=info.context_window,
    )


def provider_known(provider_id: str) -> bool:
    """True when genai-prices has a provider of that id (or alias)."""
    from genai_prices import data_snapshot

    try:
        data_snapshot.get_snapshot().find_provider(None, provider_id, None)
    except LookupError:
        return False
    return True


def _rate(value: Any) -> Rate | None:
    """A genai-prices price (a Decimal, or TieredPrices) as a Rate."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return Rate(float(value))
    base, tiers = getattr(value, "base", None), getattr(value, "tiers", None)
    if isinstance(base, Decimal) and isinstance(tiers, list):
        return Rate(float(base), tuple((int(t.start), float(t.price)) for t in tiers))
    return None
