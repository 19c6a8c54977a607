"""A run's prices by model: ``[prices]`` from the config first, then the bundled data.

One PriceBook per Client. A model is looked up once (the answer, price or none, is
kept), so pricing a record costs a dict lookup and a few multiplications.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Mapping
from typing import Any

from llmbatch.config.model import ModelPrices, ProviderConfig, RunConfig
from llmbatch.pricing.rates import Rates, rates_from_config, toml_key

__all__ = ["SELF_HOSTED", "PriceBook", "request_model"]

# Built-in profiles of servers people run themselves: no bundled price applies.
SELF_HOSTED = frozenset({"mock", "vllm", "llamacpp", "ollama"})


def request_model(body: Mapping[str, Any], profile: ProviderConfig) -> str:
    """The model a request asks for: its own ``model``, else the profile's."""
    model = body.get("model")
    return model if isinstance(model, str) and model else profile.model


class PriceBook:
    """Prices for the models of one provider profile (``rates(model)``)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.profile = cfg.provider
        self._overrides: Mapping[str, ModelPrices] = cfg.prices
        self._lower = {k.lower(): k for k in cfg.prices}
        self._cache: dict[str, Rates | None] = {}
        self.unpriced: list[str] = []  # models looked up without a price, in order

    def rates(self, model: str) -> Rates | None:
        """``model``'s prices, or None when neither the config nor the data has any."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = self._find(model)
        self._cache[model] = found
        if found is None:
            self.unpriced.append(model)
        return found

    def _find(self, model: str) -> Rates | None:
        key = model if model in self._overrides else self._lower.get(model.lower())
        if key is not None:
            return rates_from_config(key, self._overrides[key])
        where = bundled_provider(self.profile)
        if where is None:
            return None
        from llmbatch.pricing.bundled import lookup

        return lookup(model, provider_id=where[0], api_url=where[1])

    def why_unpriced(self, model: str) -> str:
        """One sentence: why ``model`` has no price, and how to give it one."""
        p = self.profile
        how = (
            f"add [prices.{toml_key(model)}] with input and output in USD per million "
            "tokens to config.toml"
        )
        if bundled_provider(p) is None:
            return f"no price for model {model!r}: provider {p.name!r} is self-hosted; {how}"
        return f"no price for model {model!r} at provider {p.name!r} in genai-prices; {how}"


def bundled_provider(p: ProviderConfig) -> tuple[str | None, str | None] | None:
    """(genai-prices provider id, API URL) to look a profile's models up by, or None
    for a server of one's own (the mock, vllm, llama.cpp, ollama, a private address)."""
    if p.embedded_mock or p.name in SELF_HOSTED or _private_host(p.base_url):
        return None
    from llmbatch.pricing.bundled import provider_known

    if provider_known(p.name):
        return (p.name, None)
    return (None, p.base_url)


def _private_host(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in ("localhost", "") or host.endswith((".local", ".internal", ".lan")):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return addr.is_private or addr.is_loopback or addr.is_link_local
