"""Client-side pacing: rate limits (configured and reported by the server) and concurrency.

- ``bucket``: :class:`TokenBucket`, the hard cap for a configured limit.
- ``headers``: rate-limit headers per provider family, read into reports.
- ``learned``: :class:`LearnedLimit`, a limit the server reported (spend what remains,
  whole again by reset; expires when nothing confirms it).
- ``governor``: :class:`RateGovernor`, every gate together; :func:`governor_for` builds
  it from a run's config. ``protocol``: :class:`Pacer`, the interface it fulfils, and
  :class:`ConcurrencyControl`, the adaptive controller's; :class:`PollWait`, a wait
  that is a look-again (a cluster's grant on its way), not budget.
- ``concurrency``: :class:`AdaptiveConcurrency` (AIMD) and :class:`ConcurrencyLimiter`.
- ``estimate``: :func:`estimate_input_tokens`, a tokenizer-free prompt size, and
  :class:`OutputEstimate`, output tokens to reserve, learned from the answers so far.
- ``signals``: which controller a failed attempt teaches (one owner per signal).
"""

from __future__ import annotations

from llmbatch.pacing.bucket import TokenBucket
from llmbatch.pacing.concurrency import AdaptiveConcurrency, ConcurrencyLimiter
from llmbatch.pacing.estimate import (
    CHARS_PER_TOKEN,
    DEFAULT_OUTPUT_ESTIMATE,
    TOKENS_PER_MESSAGE,
    OutputEstimate,
    estimate_input_tokens,
)
from llmbatch.pacing.factory import governor_for
from llmbatch.pacing.governor import RateGovernor
from llmbatch.pacing.headers import FAMILIES, family_for, parse_duration_s, parse_reset_s
from llmbatch.pacing.protocol import ConcurrencyControl, Pacer, PollWait

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_OUTPUT_ESTIMATE",
    "FAMILIES",
    "TOKENS_PER_MESSAGE",
    "AdaptiveConcurrency",
    "ConcurrencyControl",
    "ConcurrencyLimiter",
    "OutputEstimate",
    "Pacer",
    "PollWait",
    "RateGovernor",
    "TokenBucket",
    "estimate_input_tokens",
    "family_for",
    "governor_for",
    "parse_duration_s",
    "parse_reset_s",
]
