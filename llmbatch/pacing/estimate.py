"""A tokenizer-free estimate of a prompt's size, to reserve rate-limit budget before sending."""

from __future__ import annotations

__all__ = ["CHARS_PER_TOKEN", "TOKENS_PER_MESSAGE", "estimate_input_tokens"]

CHARS_PER_TOKEN = 4
"""Average characters per token for English text with BPE tokenizers (OpenAI's rule of thumb).

Code and non-Latin scripts run denser (CJK is closer to 1 char per token), so the estimate
can be low; ``RateGovernor.settle`` corrects the buckets once the server reports usage.
"""

TOKENS_PER_MESSAGE = 4
"""Per-message framing overhead (role markers, separators); OpenAI documents 3-4 tokens."""


def estimate_input_tokens(text_chars: int, messages: int = 1) -> int:
    """Estimate prompt tokens without a tokenizer.

    ``ceil(text_chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * messages``. Only used to
    reserve rate-limit budget before sending; the server's usage figures settle the
    difference afterwards, so a rough estimate is enough and no tokenizer is downloaded.
    """
    chars = max(0, text_chars)
    return -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * max(0, messages)
