"""What requests cost: token usage from answers, prices, the budget, offline token counts.

- ``usage``: :class:`TokenUsage` read from an answer body of any provider shape.
- ``rates``: :class:`Rates` (USD per token, by kind of token) and :func:`cost_of`.
- ``bundled``: prices from the ``genai-prices`` package's bundled data (never fetched).
- ``book``: :class:`PriceBook`, a run's prices by model (``[prices]`` first, then the data).
- ``budget``: :class:`CostBudget`, ``--max-cost``: admission against spent + worst case.
- ``tokens``: exact offline token counts for OpenAI's encodings (``estimate``).
"""

from __future__ import annotations

from llmbatch.pricing.book import PriceBook, request_model
from llmbatch.pricing.budget import CostBudget, Spend
from llmbatch.pricing.rates import Rates, cost_of, worst_case_usd
from llmbatch.pricing.usage import TokenUsage, usage_from_body

__all__ = [
    "CostBudget",
    "PriceBook",
    "Rates",
    "Spend",
    "TokenUsage",
    "cost_of",
    "request_model",
    "usage_from_body",
    "worst_case_usd",
]
